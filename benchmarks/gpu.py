"""The prepared GPU check: everything prunekit still has to measure on a GPU, in one command that fits
in a lent machine's 15 minutes (about 8 minutes of it), each part in its own process with its own
time limit, so that a part that fails or hangs is written down and the others still run.

    python benchmarks/gpu.py OUT_DIR                  # on the device machine: PYTHONPATH=src python3 benchmarks/gpu.py $OUT
    python benchmarks/gpu.py OUT_DIR --dry-run        # the same script on the CPU at toy sizes (the test suite runs it)

Parts (results in ``OUT_DIR/gpu.md`` and ``OUT_DIR/gpu.json``; device, date, torch version, command):

1. ``stacked``: one model at a time (plain, ``torch.compile``) vs N stacked, ResNet-20 N in {1, 16, 32},
   VGG-16 N in {1, 4, 8}: model-img/s and ratios (targets: >= 12x for ResNet-20, >= 4x for VGG-16).
2. ``scoring``: every method's scoring time on ResNet-20 and VGG-19-BN, against one training epoch.
3. ``sweep``: 18 ResNet-20 runs (6 methods x 3 sparsities) stacked for 2 epochs on CIFAR-10-jpg:
   wall-clock, and the one-at-a-time wall-clock projected from part 1's throughput.
4. ``probe``: a stacked member and the same model trained alone for 50 steps (same init, mask,
   batches): the largest difference of their losses (bf16/fp32 tolerance).
5. ``profile``: a ``torch.profiler`` summary of one stacked ResNet-20 step (kernels per step, time
   outside convolutions), for the next step of the stacked engine.

CIFAR-10-jpg is read from ``.data/cifar10-jpg.tar.gz`` (copied from the shared datasets folder and
named in the device tool's ``carry``); parts that need it say so when it is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PARTS = {"stacked": 150, "scoring": 100, "sweep": 170, "probe": 45, "profile": 40}  # seconds each
CIFAR = ROOT / ".data" / "cifar10-jpg.tar.gz"


# -- the parts (each runs in a child process: `gpu.py --part NAME OUT_DIR`) ------------------------
def part_stacked(dry: bool, device: Any) -> dict[str, Any]:
    sys.path.insert(0, str(HERE))
    import stacked as sb

    plan = {"resnet20": [1, 2]} if dry else {"resnet20": [1, 16, 32], "vgg16_bn": [1, 4, 8]}
    batch, steps, warmup = (4, 1, 1) if dry else (128, 30, 8)
    rows = []
    for name, sizes in plan.items():
        base = sb.bench_single(name, device, batch, steps, warmup, None)
        rows.append({"model": name, "variant": "one at a time", "model_img_s": base, "ratio": 1.0})
        rows.append(_compiled(sb, name, device, batch, steps, warmup, base, dry))
        for n in sizes:
            for path in ("fused", "vmap"):
                label = f"stacked ({path}), N = {n}"
                try:
                    v = sb.bench_stacked(name, n, device, batch, steps, warmup, path)
                    rows.append({"model": name, "variant": label, "n": n, "model_img_s": v, "ratio": v / base})
                except Exception as exc:
                    rows.append({"model": name, "variant": label, "n": n, "error": f"{type(exc).__name__}: {exc}"[:300]})
    return {"batch": batch, "steps": steps, "rows": rows}


def _compiled(sb: Any, name: str, device: Any, batch: int, steps: int, warmup: int, base: float, dry: bool) -> dict[str, Any]:
    """One model under ``torch.compile`` (skipped in the dry run: compiling takes minutes on a CPU)."""
    row: dict[str, Any] = {"model": name, "variant": "one at a time, torch.compile"}
    if dry:
        return {**row, "error": "skipped in the dry run"}
    try:
        v = sb.bench_single(name, device, batch, steps, warmup, "default")
        return {**row, "model_img_s": v, "ratio": v / base}
    except Exception as exc:
        return {**row, "error": f"{type(exc).__name__}: {exc}"[:300]}


def _dataset(dry: bool) -> tuple[Any, str, str | None]:
    """(dataset, name, data_dir): CIFAR-10-jpg on the device, a tiny IDX set in the dry run."""
    from prunekit import data

    if dry:
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import write_tiny_mnist

        root = write_tiny_mnist(Path(tempfile.mkdtemp()) / "mnist", n_train=120, n_test=40)
        return data.load_dataset("mnist", root), "mnist", str(root)
    if not CIFAR.is_file():
        raise FileNotFoundError(f"{CIFAR} is missing: copy the CIFAR-10-jpg tarball there and name .data in carry")
    return data.load_dataset("cifar10-jpg", CIFAR), "cifar10-jpg", str(CIFAR)


def part_scoring(dry: bool, device: Any) -> dict[str, Any]:
    import torch

    import prunekit
    from prunekit import data, models, training

    ds, _, _ = _dataset(dry)
    rows = []
    for name in ("resnet20",) if dry else ("resnet20", "vgg19_bn"):
        cfg = training.TrainConfig(epochs=1, batch_size=8 if dry else 128, lr=0.01, schedule="constant")
        res = training.fit(models.create(name, ds.num_classes, ds.input_shape, seed=0), ds, cfg, device=device, progress=False)
        epoch_s = res.history[-1]["epoch_seconds"]
        model = models.create(name, ds.num_classes, ds.input_shape, seed=0).to(device)
        batches = data.scoring_batches(ds.train, batch_size=8 if dry else 128, mean=ds.info.mean, std=ds.info.std, device=device, seed=0)
        for method in prunekit.list_methods():
            opts: dict[str, Any] = {}
            if dry and method in ("iter_snip", "force", "synflow"):
                opts["num_steps"] = 2
            if dry and method in ("grasp", "grasp_abs"):
                opts["samples_per_class"] = 1
            if dry and method == "prospr":
                opts["inner_steps"] = 1
            if method == "autosparse":
                opts["gradient_batches"] = 2 if dry else None
            try:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                prunekit.prune(model, method, 0.98, data=batches, seed=0, **opts)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t = time.perf_counter() - start
                rows.append({"model": name, "method": method, "seconds": t, "epochs": t / epoch_s})
            except Exception as exc:
                rows.append({"model": name, "method": method, "error": f"{type(exc).__name__}: {exc}"[:300]})
        rows.append({"model": name, "method": "(one training epoch)", "seconds": epoch_s, "epochs": 1.0,
                     "images_per_second": res.history[-1]["images_per_second"]})
    return {"rows": rows}


def part_sweep(dry: bool, device: Any) -> dict[str, Any]:
    from prunekit.experiments import run_sweep, sweep_from_mapping

    _, name, data_dir = _dataset(dry)
    methods = ["random", "snip", "grasp", "synflow", "force", "prospr"]
    spec = sweep_from_mapping({
        "models": ["resnet20"], "dataset": name, "data_dir": data_dir, "methods": methods[:2] if dry else methods,
        "sparsities": [0.9, 0.98] if dry else [0.9, 0.95, 0.98], "seeds": [0], "recipe": "openlth-cifar", "epochs": 1 if dry else 2,
        "dense": False, "train": {"batch_size": 8, "val_size": 20.0} if dry else {},
        "options": {},
    })
    out = Path(tempfile.mkdtemp(prefix="gpu-sweep-"))
    start = time.perf_counter()
    summary = run_sweep(spec, out, device=device, progress=False, log=False)
    wall = time.perf_counter() - start
    rows = [{"status": o.status, "final_acc": o.record and o.record.final_acc, "method": o.record and o.record.method,
             "sparsity": o.record and o.record.sparsity, "stacked": o.record and o.record.extra.get("stacked"),
             "train_seconds": o.record and o.record.train_seconds, "error": ((o.record and o.record.error) or "")[:300]}
            for o in summary.outcomes]
    return {"runs": len(rows), "wall_seconds": wall, "rows": rows, "epochs": spec.epochs}


def part_probe(dry: bool, device: Any) -> dict[str, Any]:
    import copy

    import torch
    import torch.nn.functional as F

    import prunekit
    from prunekit import models
    from prunekit.stacked import StackedModel

    torch.manual_seed(0)
    n, batch, steps = (2, 4, 3) if dry else (4, 128, 50)
    members = [models.create("resnet20", 10, (3, 32, 32), seed=s).to(device) for s in range(n)]
    alone = copy.deepcopy(members[1])
    masks = [prunekit.prune(m, "random", 0.9, seed=s) for s, m in enumerate(members)]
    for m, mk in zip(members, masks):
        mk.apply(m)
        mk.remove(m)
    masks[1].apply(alone)
    masks[1].remove(alone)
    stacked = StackedModel(members).to(device)
    opt_s = torch.optim.SGD(stacked.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    opt_a = torch.optim.SGD(alone.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    enforce_a = masks[1].bind(alone)
    pairs = [(stacked.stacked_parameter(k), torch.stack([m[k] for m in masks]).to(device=device, dtype=torch.float32)) for k in masks[0]]
    amp = device.type == "cuda"
    g = torch.Generator(device="cpu").manual_seed(1)
    diffs, losses = [], []
    for _ in range(steps):
        x = torch.randn(n, batch, 3, 32, 32, generator=g).to(device)
        y = torch.randint(0, 10, (n, batch), generator=g).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            ls = F.cross_entropy(stacked(x).flatten(0, 1), y.reshape(-1), reduction="none").view(n, -1).mean(1)
            la = F.cross_entropy(alone(x[1]), y[1])
        opt_s.zero_grad(set_to_none=True)
        ls.sum().backward()
        opt_s.step()
        with torch.no_grad():
            torch._foreach_mul_([p for p, _ in pairs], [m for _, m in pairs])
        opt_a.zero_grad(set_to_none=True)
        la.backward()
        opt_a.step()
        enforce_a()
        diffs.append(abs(float(ls[1]) - float(la)))
        losses.append((float(ls[1]), float(la)))
    return {"steps": steps, "max_loss_difference": max(diffs), "final_losses": losses[-1], "tolerance": 0.05 if amp else 1e-4,
            "ok": max(diffs) < (0.05 if amp else 1e-4)}


def part_profile(dry: bool, device: Any) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    from prunekit import models
    from prunekit.stacked import StackedModel

    n, batch = (2, 4) if dry else (16, 128)
    stacked = StackedModel([models.create("resnet20", 10, (3, 32, 32), seed=s).to(device) for s in range(n)]).to(device)
    opt = torch.optim.SGD(stacked.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(n, batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (n, batch), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = F.cross_entropy(stacked(x).flatten(0, 1), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    events = prof.key_averages()
    table = events.table(sort_by="cuda_time_total" if device.type == "cuda" else "cpu_time_total", row_limit=15)
    calls = sum(e.count for e in events if e.key.startswith("aten::"))
    conv = sum(e.count for e in events if "conv" in e.key)
    return {"n": n, "aten_calls": calls, "conv_calls": conv, "table": table}


PART_FUNCS = {"stacked": part_stacked, "scoring": part_scoring, "sweep": part_sweep, "probe": part_probe, "profile": part_profile}


# -- the driver -------------------------------------------------------------------------------------
def markdown(results: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [f"### GPU check: {meta['device']}, torch {meta['torch']}, {meta['date']}", "",
             f"`{meta['command']}`{' (dry run on the CPU, toy sizes)' if meta['dry_run'] else ''}", ""]
    for name, res in results.items():
        head = f"**{name}** ({res.get('seconds', 0):.0f} s)"
        if res.get("status") != "ok":
            lines += [f"{head}: {res.get('status')}: {res.get('error', '')[:500]}", ""]
            continue
        out = res["result"]
        lines.append(head)
        lines.append("")
        if name == "stacked":
            lines += ["| model | variant | model-img/s | vs one at a time |", "|---|---|---:|---:|"]
            for r in out["rows"]:
                value = f"{r['model_img_s']:,.0f} | {r['ratio']:.2f}x" if "error" not in r else f"{r['error']} |"
                lines.append(f"| {r['model']} | {r['variant']} | {value} |")
        elif name == "scoring":
            lines += ["| model | method | seconds | in training epochs |", "|---|---|---:|---:|"]
            for r in out["rows"]:
                value = f"{r['seconds']:.3f} | {r['epochs']:.3f}" if "error" not in r else f"{r['error']} |"
                lines.append(f"| {r['model']} | {r['method']} | {value} |")
        elif name == "sweep":
            done = sum(r["status"] == "done" for r in out["rows"])
            lines.append(f"{out['runs']} runs ({done} done) of {out['epochs']} epoch(s) in {out['wall_seconds']:.0f} s wall-clock; "
                         f"stacked group sizes: {sorted({r['stacked'] for r in out['rows'] if r['stacked']})}")
            for r in out["rows"]:
                if r["status"] != "done":
                    lines.append(f"- {r['method']} @ {r['sparsity']}: {r['status']} {r['error']}")
        elif name == "probe":
            lines.append(f"{out['steps']} steps: largest |loss(stacked member) - loss(alone)| = {out['max_loss_difference']:.2e} "
                         f"(tolerance {out['tolerance']}): {'equal' if out['ok'] else 'DIFFERENT'}")
        elif name == "profile":
            lines += [f"N = {out['n']}: {out['aten_calls']} aten calls, {out['conv_calls']} convolution calls per step", "", "```",
                      out["table"], "```"]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="folder for gpu.md and gpu.json")
    ap.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU (well under a minute)")
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--part", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    if args.part:  # a child: one part, its result as JSON
        if args.dry_run:
            torch.set_num_threads(min(2, torch.get_num_threads()))
        result = PART_FUNCS[args.part](args.dry_run, device)
        (out / f"part_{args.part}.json").write_text(json.dumps(result, default=str))
        return
    meta = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU ({platform.machine()})",
        "torch": torch.__version__, "date": str(date.today()), "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/gpu.py", *sys.argv[1:]]), "dry_run": args.dry_run,
    }
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    results: dict[str, Any] = {}
    for name in args.parts.split(","):
        limit = PARTS[name] * (3 if args.dry_run else 1)
        start = time.perf_counter()
        cmd = [sys.executable, __file__, str(out), "--part", name] + (["--dry-run"] if args.dry_run else [])
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=limit)
            if proc.returncode == 0:
                results[name] = {"status": "ok", "result": json.loads((out / f"part_{name}.json").read_text())}
            else:
                results[name] = {"status": "failed", "error": proc.stderr[-2000:]}
        except subprocess.TimeoutExpired:
            results[name] = {"status": f"timed out after {limit} s", "error": ""}
        results[name]["seconds"] = time.perf_counter() - start
        print(f"{name}: {results[name]['status']} ({results[name]['seconds']:.0f} s)", flush=True)
        (out / "gpu.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))
        (out / "gpu.md").write_text(markdown(results, meta) + "\n")
    print((out / "gpu.md").read_text())


if __name__ == "__main__":
    main()

"""Iterative scoring time before/after a change, next to the method's own forward/backward arithmetic.

    python benchmarks/ranking.py --ref cbd1cc8~1            # the ranking step before vs the working tree
    python benchmarks/ranking.py --ref HEAD --models lenet5 --threads 2

For SynFlow (100 steps), Iter-SNIP and FORCE (60 steps) on LeNet-5 and ResNet-20, one process per
(code version, round), the versions alternating so that both see the same machine load:

* ``prune``: the wall-clock of ``prunekit.prune`` (scoring, ranking, masks, every step);
* ``arithmetic``: the same number of the method's bare forward/backward passes (SynFlow: a float64
  copy on an all-ones input; FORCE / Iter-SNIP: one training batch, train mode), with no ranking:
  what scoring must cost at least. The goal is ``prune / arithmetic <= 2``.

``--ref`` names a git revision; it is checked out in a temporary worktree and imported from there,
so the two versions run the same script on the same inputs (random inputs of the dataset's shape,
seed 0: the cost of ranking does not depend on what the images show). Medians over ``--rounds``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = {
    "lenet5": ((1, 28, 28), 128),
    "resnet20": ((3, 32, 32), 128),
}
METHODS = {"synflow": 100, "iter_snip": 60, "force": 60}


def worker(models: list[str], methods: list[str], threads: int) -> dict:
    import torch
    import torch.nn.functional as F

    import prunekit
    from prunekit import models as zoo

    torch.set_num_threads(threads)
    out: dict = {}
    for arch in models:
        shape, batch = CASES[arch]
        g = torch.Generator().manual_seed(0)
        data = [(torch.randn(batch, *shape, generator=g), torch.randint(0, 10, (batch,), generator=g)) for _ in range(4)]
        model = zoo.create(arch, 10, shape, seed=0)
        for method in methods:
            steps = METHODS[method]
            prunekit.prune(model, method, 0.99, data=data, num_steps=2)  # warm-up
            start = time.perf_counter()
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                prunekit.prune(model, method, 0.99, data=data, num_steps=steps)
            t_prune = time.perf_counter() - start
            # the bare arithmetic: `steps` forward/backward passes of what the method differentiates
            import copy

            net = copy.deepcopy(model)
            if method == "synflow":
                net = net.double().eval()
                with torch.no_grad():
                    for t in net.state_dict(keep_vars=True).values():
                        if t.is_floating_point():
                            t.data.abs_()
                x = torch.ones(1, *shape, dtype=torch.float64)
                start = time.perf_counter()
                for _ in range(steps):
                    net.zero_grad(set_to_none=True)
                    net(x).sum().backward()
            else:
                net.train()
                start = time.perf_counter()
                for i in range(steps):
                    x, y = data[i % len(data)]
                    net.zero_grad(set_to_none=True)
                    F.cross_entropy(net(x), y).backward()
            t_arith = time.perf_counter() - start
            out[f"{arch}/{method}"] = {"prune": t_prune, "arithmetic": t_arith, "steps": steps}
    out["torch"] = torch.__version__
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", required=False, help="git revision to compare with (the 'before')")
    ap.add_argument("--models", default="lenet5,resnet20")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    models, methods = args.models.split(","), args.methods.split(",")
    if args.worker:
        print(json.dumps(worker(models, methods, args.threads)))
        return

    trees = {"after": ROOT / "src"}
    tmp = None
    if args.ref:
        tmp = tempfile.mkdtemp(prefix="prunekit-ref-")
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", tmp, args.ref], check=True, capture_output=True)
        trees = {"before": Path(tmp) / "src", **trees}
    results: dict[str, list[dict]] = {k: [] for k in trees}
    try:
        for rnd in range(args.rounds):
            for label, src in trees.items():
                env = {**os.environ, "PYTHONPATH": str(src)}
                cmd = [sys.executable, __file__, "--worker", "--models", args.models, "--methods", args.methods, "--threads", str(args.threads)]
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                results[label].append(json.loads(proc.stdout.strip().splitlines()[-1]))
                print(f"round {rnd + 1} {label} done", file=sys.stderr, flush=True)
    finally:
        if tmp:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", tmp], capture_output=True)

    def med(label: str, case: str, key: str) -> float:
        return statistics.median(r[case][key] for r in results[label])

    torch_version = results["after"][0]["torch"]
    print(f"### Iterative scoring: prune() vs its own forward/backward arithmetic — CPU ({platform.machine()}, "
          f"{args.threads} threads), torch {torch_version}, {date.today()}")
    print(f"`python benchmarks/ranking.py{' --ref ' + args.ref if args.ref else ''} --threads {args.threads}`; "
          f"median of {args.rounds} rounds; sparsity 99 %, batch 128, random inputs.")
    print()
    has_ref = "before" in results
    head = "| model | method | steps | arithmetic (s) |" + (" prune before (s) | before / arith. |" if has_ref else "") + " prune after (s) | after / arith. |"
    print(head)
    print("|---|---|---:|---:|" + ("---:|---:|" if has_ref else "") + "---:|---:|")
    for case in [f"{m}/{meth}" for m in models for meth in methods]:
        arch, meth = case.split("/")
        arith = med("after", case, "arithmetic")
        cells = [arch, meth, str(METHODS[meth]), f"{arith:.3f}"]
        if has_ref:
            b = med("before", case, "prune")
            cells += [f"{b:.3f}", f"{b / arith:.2f}"]
        a = med("after", case, "prune")
        cells += [f"{a:.3f}", f"{a / arith:.2f}"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

"""The ``prunekit`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .errors import ConfigError, PrunekitError, unknown


def _methods_arg(text: str) -> list[str]:
    from .methods import list_methods

    if text == "all":
        return list_methods()
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ConfigError("--methods needs at least one method name (or 'all')")
    return names


def parse_method_options(pairs: Sequence[str], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["num_steps=10", "force.num_batches=2"]`` -> ``{method: {option: value}}``.

    ``name=value`` applies to every chosen method that has the option (an error if none has);
    ``method.name=value`` to that method only.
    """
    from .methods import get_method
    from .options import parse_value

    out: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--opt takes name=value or method.name=value, got {pair!r}")
        key, text = pair.split("=", 1)
        target, _, name = key.rpartition(".")
        targets = [target] if target else list(methods)
        if target and target not in methods:
            raise ConfigError(f"--opt {pair!r} names method {target!r}, which is not among --methods {', '.join(methods)}")
        applied = False
        for m in targets:
            spec = get_method(m)
            if name in {f.name for f in dataclasses.fields(spec.options)}:
                out[m][name] = parse_value(spec.options, name, text, f"method {m!r}")
                applied = True
            elif target:
                parse_value(spec.options, name, text, f"method {m!r}")  # raises: unknown option
        if not applied:
            raise ConfigError(f"option {name!r} belongs to none of the methods {', '.join(methods)}")
    return out


def _device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is available")
    return device


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths))) + " |" for r in rows]
    return "\n".join([line, sep, *body])


# -- commands ----------------------------------------------------------------------------------
def cmd_prune(args: argparse.Namespace) -> int:
    from . import prune
    from .data import load_dataset, scoring_batches, split_validation
    from .models import create
    from .pruning import resolve_density

    density = resolve_density(args.sparsity if args.density is None else None, args.density)
    methods = _methods_arg(args.methods)
    from .methods import get_method

    for m in methods:
        get_method(m)
    options = parse_method_options(args.opt, methods)
    device = _device(args.device)
    dataset = load_dataset(args.dataset, args.data_dir)
    train, _ = split_validation(dataset.train, args.val_size, args.seed) if args.val_size else (dataset.train, None)
    batches = scoring_batches(
        train, batch_size=args.batch_size, mean=dataset.info.mean, std=dataset.info.std, device=device, seed=args.seed
    )
    model = create(args.model, dataset.num_classes, dataset.input_shape, seed=args.seed).to(device)
    reports: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for i, method in enumerate(methods, 1):
        print(f"[{i}/{len(methods)}] {method} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        masks = prune(model, method, density=density, data=batches, seed=args.seed, allocation=args.allocation, **options[method])
        seconds[method] = time.perf_counter() - start
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reports[method] = masks.report(model)
        if args.save_masks:
            masks.save(Path(args.save_masks) / f"{method}.pt")
    first = next(iter(reports.values()))
    header = ["layer (size)"] + methods
    rows = []
    for j, row in enumerate(first.rows):
        rows.append([f"{row.name} ({row.size:,})"] + [f"{reports[m].rows[j].density:.2%}" for m in methods])
    rows.append(["total density"] + [f"{reports[m].density:.2%}" for m in methods])
    rows.append(["effective density"] + [f"{reports[m].effective_density:.2%}" for m in methods])
    rows.append(["collapsed layers"] + [str(len(reports[m].collapsed)) for m in methods])
    rows.append(["scoring time (s)"] + [f"{seconds[m]:.2f}" for m in methods])
    print(f"{args.model} on {args.dataset}, sparsity {1 - density:.2%}, seed {args.seed}, device {device}")
    print(_table(header, rows))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .data import DATASETS
    from .methods import all_methods
    from .models import get_model_spec, list_models
    from .options import describe
    from .training import RECIPES

    if args.what == "methods":
        for m in all_methods():
            data = "data" if m.needs_data else "data-free"
            print(f"{m.name:12s} {m.summary}  [{data}, {m.allocation}]")
            if args.verbose:
                for name, typ, default, help_ in describe(m.options):
                    print(f"    {name}={default!r} ({typ}): {help_}")
                if m.official:
                    sets = ", ".join(f"{k}={v!r}" for k, v in m.official.items())
                    rule = f"; count rule: {m.official_rule}" if m.official_rule else ""
                    print(f"    official=True sets: {sets}{rule}")
                print(f"    reference: {m.reference}")
    elif args.what == "models":
        for name in list_models():
            print(f"{name:15s} {get_model_spec(name).summary}")
    elif args.what == "datasets":
        for d in DATASETS.values():
            print(f"{d.name:14s} {d.summary}")
    else:
        for r in RECIPES.values():
            print(f"{r.name:14s} {r.summary}  [default: {r.model} on {r.dataset}]")
    return 0


def _csv(text: str | None, cast: Any = str) -> tuple | None:
    if text is None:
        return None
    try:
        return tuple(cast(t.strip()) for t in text.split(",") if t.strip())
    except ValueError:
        raise ConfigError(f"cannot read {text!r} as a comma-separated list of {cast.__name__}") from None


def _train_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    from .options import parse_value
    from .training import TrainConfig

    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--train takes name=value, got {pair!r}")
        k, v = pair.split("=", 1)
        out[k] = parse_value(TrainConfig, k, v, "train")
    return out


def _print_table(out_dir: Path, metric: str) -> None:
    from .report import write_report

    tables, files = write_report(out_dir, metric)
    for t in tables:
        print()
        print(t.to_markdown())
    print()
    for f in files:
        print(f"wrote {f}", file=sys.stderr)


def _launch_data_parallel(args: argparse.Namespace) -> int:
    """Run this command again as ``--nproc`` processes under ``torchrun`` (standalone: this machine)."""
    import subprocess

    if args.nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {args.nproc}")
    rest, skip = [], False
    for token in args.argv:
        if skip:
            skip = False
            continue
        if token == "--nproc":
            skip = True
            continue
        if token.startswith("--nproc="):
            continue
        rest.append(token)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}", "-m", "prunekit.cli", *rest]
    return subprocess.call(cmd)


def _join_process_group(args: argparse.Namespace) -> torch.device:
    """Inside a torchrun launch: this rank's device, process group joined."""
    import os

    from .distributed import init_from_environment

    device = _device(args.device)
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    init_from_environment(device)
    return device


def cmd_run(args: argparse.Namespace) -> int:
    import os

    if args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        return _launch_data_parallel(args)
    device = _join_process_group(args)
    try:
        return _run(args, device)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _run(args: argparse.Namespace, device: torch.device) -> int:
    from .distributed import rank
    from .experiments import RunSpec, run_one
    from .experiments.config import method_options_class
    from .experiments.execute import DatasetCache
    from .experiments.run import describe_outcome
    from .options import parse_value

    method = args.method or ("dense" if args.structured else None)
    if method is None:
        raise ConfigError("--method is required (or --structured for early structured pruning of a dense run)")
    opts = {}
    for pair in args.opt:
        if "=" not in pair:
            raise ConfigError(f"--opt takes name=value, got {pair!r}")
        k, v = pair.split("=", 1)
        opts[k] = parse_value(method_options_class(method), k, v, f"method {method!r}")
    if args.sparsity is not None and args.density is not None:
        raise ConfigError("give --sparsity or --density, not both")
    if method in ("dense",) and (args.sparsity is not None or args.density is not None):
        raise ConfigError("the dense baseline prunes nothing: --sparsity/--density do not apply to --method dense")
    if args.density is not None:
        from .allocation import check_density

        sparsity = 1.0 - check_density(args.density)
    else:
        sparsity = 0.0 if method == "dense" else (0.9 if args.sparsity is None else args.sparsity)
    spec = RunSpec(
        args.model, args.dataset, method, sparsity, args.seed, recipe=args.recipe, epochs=args.epochs,
        ablation=args.ablation, allocation=args.allocation, method_options=opts, train=_train_overrides(args.train),
        structured=args.structured, budget=args.budget,
    )
    outcome = run_one(spec, args.out, datasets=DatasetCache(args.data_dir), device=device, force=args.force,
                      retry_failed=args.retry_failed, progress=None if not args.no_progress else False)
    if rank() > 0:
        return 0
    print(describe_outcome(outcome))
    row = outcome.row or {}
    if row.get("status") == "done":
        print(f"density {row['density']:.4%} (effective {row['effective_density']:.4%}), scoring {row['scoring_seconds']:.2f} s, "
              f"training {row['train_seconds']:.0f} s ({row['images_per_second']:,.0f} img/s) on {row['device']}")
        print(f"run folder: {row['run_dir']}")
    elif row.get("status") == "failed":
        print(row.get("error", ""), file=sys.stderr)
        return 1
    return 0


def _sweep_spec(args: argparse.Namespace) -> Any:
    from .experiments import load_sweep_file, sweep_from_mapping

    values: dict[str, Any] = {}
    if args.config:
        from dataclasses import asdict

        base = load_sweep_file(args.config)
        values = dict(asdict(base))
        values["options"] = values.pop("method_options")
    flags = {
        "models": _csv(args.models), "dataset": args.dataset, "methods": _csv(args.methods), "sparsities": _csv(args.sparsities, float),
        "seeds": _csv(args.seeds, int), "recipe": args.recipe, "epochs": args.epochs, "ablations": _csv(args.ablations),
        "allocation": args.allocation, "data_dir": args.data_dir,
        "structured": None if args.structured is None else tuple(s for s in args.structured.split(";") if s),
        "budgets": _csv(args.budgets),
    }
    values.update({k: v for k, v in flags.items() if v is not None})
    if args.methods == "all":
        from .methods import list_methods

        values["methods"] = tuple(list_methods())
    if args.config and args.methods is not None:
        # --methods narrows the file's grid: the file's options of the methods left out go with them
        values["options"] = {m: o for m, o in values.get("options", {}).items() if m in values["methods"]}
    if args.no_dense:
        values["dense"] = False
    if args.train:
        values["train"] = {**values.get("train", {}), **_train_overrides(args.train)}
    if args.opt:
        methods = list(values.get("methods", ()))
        parsed = parse_method_options(args.opt, methods)
        options = dict(values.get("options", {}))
        for m, o in parsed.items():
            if o:
                options[m] = {**options.get(m, {}), **o}
        values["options"] = options
    return sweep_from_mapping(values, where="the sweep (config file and flags)")


def cmd_sweep(args: argparse.Namespace) -> int:
    from .experiments import run_sweep

    spec = _sweep_spec(args)
    from .report.tables import METRICS

    if args.report and args.metric not in METRICS:  # checked before the sweep, not after it
        raise unknown("metric", args.metric, METRICS)
    summary = run_sweep(spec, args.out, device=_device(args.device), retry_failed=args.retry_failed, backend=args.backend, address=args.address,
                        progress=None if not args.no_progress else False, stack=args.stack)
    print(summary, file=sys.stderr)
    if args.report:
        _print_table(Path(args.out), args.metric)
    return 1 if summary.counts["failed"] else 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    filters = {k: v for k, v in (("model", args.model), ("dataset", args.dataset), ("recipe", args.recipe)) if v}
    tables, files = write_report(Path(args.out), args.metric, plots=not args.no_plots, **filters)
    if not tables:
        if filters:
            from .experiments.db import ResultsDB

            with ResultsDB(Path(args.out) / "results.db") as db:
                have = sorted({(r["model"], r["dataset"], r["recipe"]) for r in db.runs(status="done")})
            shown = ", ".join("/".join(h) for h in have[:8]) or "none"
            wanted = ", ".join(f"{k}={v}" for k, v in filters.items())
            print(f"no finished runs match {wanted}; finished runs (model/dataset/recipe): {shown}", file=sys.stderr)
        else:
            print("no finished runs in the database yet", file=sys.stderr)
    for t in tables:
        print(t.to_markdown())
        print()
    for f in files:
        print(f"wrote {f}", file=sys.stderr)
    if args.tensorboard:
        from .report.tensorboard import export_tensorboard

        print(f"wrote {export_tensorboard(Path(args.out), **filters)} (tensorboard --logdir it)", file=sys.stderr)
    return 0


DEMO_CONFIG = Path(__file__).parent / "experiments" / "configs" / "demo.toml"


def cmd_demo(args: argparse.Namespace) -> int:
    from .experiments import load_sweep_file, run_sweep
    from .experiments.config import with_overrides

    spec = with_overrides(load_sweep_file(DEMO_CONFIG), data_dir=args.data_dir)
    print(f"main job: {len(spec.runs())} runs ({DEMO_CONFIG.name}) into {args.out}; finished runs are read from the database",
          file=sys.stderr)
    summary = run_sweep(spec, args.out, device=_device(args.device), progress=None if not args.no_progress else False)
    print(summary, file=sys.stderr)
    _print_table(Path(args.out), "auto")
    return 1 if summary.counts["failed"] else 0


def cmd_autosparse_list(args: argparse.Namespace) -> int:
    from .autosparse import list_scorers, load_scorer
    from .methods.autosparse import AutoSparseOptions

    for name, path in list_scorers().items():
        meta = load_scorer(path).meta
        taught = meta.get("taught_on", {})
        ranking = taught.get("irp", {}).get("scorer", "magnitude")
        default = " (default)" if name == AutoSparseOptions().scorer else ""
        print(f"{name:20s} {meta.get('arch')} taught on {taught.get('model')} / {taught.get('dataset')} "
              f"(IRP to density {taught.get('final_density', float('nan')):.3g}, {taught.get('rounds')} rounds ranked by {ranking}); "
              f"held-out Spearman {meta.get('heldout_spearman', float('nan')):.3f}{default}")
    return 0


def cmd_autosparse_teach(args: argparse.Namespace) -> int:
    from .autosparse import table_from_imp_run, teach
    from .experiments.config import resolve_config
    from .experiments.db import ResultsDB
    from .experiments.execute import DatasetCache, _scoring_data, make_model

    if Path(args.save).is_dir():  # checked before any training or teaching
        raise ConfigError(f"--save {args.save!r} is a directory; give the scorer file's path (e.g. {Path(args.save) / 'scorer.pt'})")
    device = _device(args.device)
    key, data_dir = args.from_run, args.data_dir
    if args.config:  # the IRP run the file describes, trained first unless the database already holds it
        from .experiments import load_sweep_file, run_key, run_sweep
        from .experiments.config import with_overrides

        spec = with_overrides(load_sweep_file(args.config), data_dir=args.data_dir)
        data_dir = spec.data_dir
        runs = spec.resolved(device)
        if len(runs) != 1 or runs[0].method != "imp":
            raise ConfigError(f"{args.config} describes {len(runs)} run(s) ({', '.join(sorted({r.method for r in runs}))}); "
                              "--config needs exactly one IMP/IRP run: methods = [\"imp\"], one model, sparsity and seed, dense = false")
        summary = run_sweep(spec, args.out, device=device, progress=None if not args.no_progress else False)
        print(summary, file=sys.stderr)
        if summary.counts["failed"]:
            raise ConfigError(f"the IRP run of {args.config} failed; see {Path(args.out) / 'results.db'}")
        key = run_key(runs[0])
    db_path = Path(args.out) / "results.db"
    if not db_path.is_file():
        raise ConfigError(f"no results database at {db_path}; pass --out of the IRP run")
    with ResultsDB(db_path) as db:
        rows = [r for r in db.runs(status="done") if r["key"].startswith(key)]
    if len(rows) != 1:
        raise ConfigError(f"--from-run {key!r} matches {len(rows)} finished runs in {db_path}; give a longer key")
    row = rows[0]
    if row["method"] != "imp":
        raise ConfigError(f"run {row['key']} is a {row['method']!r} run; a scorer is taught from an IMP/IRP run (--method imp)")
    run = resolve_config(row["config"])
    ds = DatasetCache(data_dir).get(run.dataset)
    model = make_model(run, ds, device)
    print(f"features: initial weights and a full-pass gradient of {run.model} on {run.dataset} ...", file=sys.stderr)
    table = table_from_imp_run(row["run_dir"], model, _scoring_data(run, ds, device))
    meta = {"taught_on": {"model": run.model, "dataset": run.dataset, "run": row["key"], "sparsity": run.sparsity,
                          "final_density": table.source["final_density"], "rounds": table.source["rounds"],
                          "irp": {**dict(run.method_options)}, "recipe": run.recipe, "epochs_per_round": run.train.epochs}}
    scorer = teach(table.features, table.targets, arch=args.arch, epochs=args.epochs, seed=args.seed, meta=meta,
                   progress=not args.no_progress)
    path = scorer.save(args.save)
    print(f"scorer: {scorer.meta['arch']}, {len(table.targets):,} weights, held-out Spearman {scorer.meta['heldout_spearman']:.4f} "
          f"(MSE {scorer.meta['heldout_mse']:.5f}, best epoch {scorer.meta['best_epoch']}); wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunekit", description="Pruning neural networks at initialization and early in training.")
    parser.add_argument("--version", action="version", version=f"prunekit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prune", help="score and prune a model with one or more methods; print per-layer densities")
    p.add_argument("--model", default="lenet5", help="model name (prunekit models)")
    p.add_argument("--dataset", default="fashion-mnist", help="dataset name (prunekit datasets)")
    p.add_argument("--data-dir", default=None, help="where the dataset lives")
    p.add_argument("--methods", default="all", help="comma-separated method names, or 'all'")
    p.add_argument("--sparsity", type=float, default=0.98, help="fraction of prunable weights removed")
    p.add_argument("--density", type=float, default=None, help="fraction kept (instead of --sparsity)")
    p.add_argument("--allocation", default=None, help="global, layerwise or erk (default: each method's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=128, help="scoring batch size")
    p.add_argument("--val-size", type=int, default=5000, help="training images held out (not used for scoring)")
    p.add_argument("--opt", action="append", default=[], metavar="[METHOD.]NAME=VALUE", help="method option, repeatable")
    p.add_argument("--device", default="auto")
    p.add_argument("--save-masks", default=None, metavar="DIR", help="save each method's masks as DIR/<method>.pt")
    p.set_defaults(func=cmd_prune)

    def common(q: argparse.ArgumentParser, out_default: str = "runs") -> None:
        q.add_argument("--out", default=out_default, help="folder of the results database and run files")
        q.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: cuda when available)")
        q.add_argument("--data-dir", default=None, help="where the dataset lives")
        q.add_argument("--no-progress", action="store_true", help="no progress bars")

    r = sub.add_parser("run", help="score, mask, train, evaluate and store one run")
    r.add_argument("--model", required=True)
    r.add_argument("--dataset", required=True)
    r.add_argument("--method", default=None, help="dense, a pruning method, or imp (dense with --structured)")
    r.add_argument("--sparsity", type=float, default=None, help="fraction of prunable weights removed (default 0.9)")
    r.add_argument("--density", type=float, default=None)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--recipe", default="lenet-fmnist")
    r.add_argument("--epochs", type=int, default=None, help="shorten/lengthen the recipe (milestones scale)")
    r.add_argument("--ablation", default=None, choices=["shuffle", "reinit", "invert"])
    r.add_argument("--allocation", default=None)
    r.add_argument("--structured", default=None, metavar="TRIGGER[:NAME=VALUE,...]",
                   help="early structured pruning of a dense run: epi, early_bird, epoch:prune_at=N, after_training")
    r.add_argument("--budget", default=None, help="structured budget: macs=F or params=F (the fraction kept; default macs=0.5)")
    r.add_argument("--opt", action="append", default=[], metavar="NAME=VALUE", help="method option, repeatable")
    r.add_argument("--train", action="append", default=[], metavar="NAME=VALUE", help="training option, repeatable")
    r.add_argument("--force", action="store_true", help="discard an earlier result and run again")
    r.add_argument("--retry-failed", action="store_true", help="run again if it failed before")
    r.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train data-parallel on N processes of this machine (a torchrun launch: NCCL on GPUs, gloo on the CPU)")
    common(r)
    r.set_defaults(func=cmd_run)

    w = sub.add_parser("sweep", help="run methods x sparsities x seeds (x models), skipping finished runs")
    w.add_argument("--config", default=None, help="TOML sweep file; flags override its values")
    w.add_argument("--models", default=None, help="comma-separated")
    w.add_argument("--dataset", default=None)
    w.add_argument("--methods", default=None, help="comma-separated, or all")
    w.add_argument("--sparsities", default=None, help="comma-separated, e.g. 0.9,0.98,0.995")
    w.add_argument("--seeds", default=None, help="comma-separated, e.g. 0,1,2")
    w.add_argument("--recipe", default=None)
    w.add_argument("--epochs", type=int, default=None)
    w.add_argument("--ablations", default=None, help="comma-separated: shuffle,reinit,invert")
    w.add_argument("--allocation", default=None)
    w.add_argument("--structured", default=None, help="early structured pruning specs, separated by ';' (e.g. 'epi;epoch:prune_at=5')")
    w.add_argument("--budgets", default=None, help="structured budgets, comma-separated, e.g. macs=0.5,macs=0.3")
    w.add_argument("--no-dense", action="store_true", help="no dense baseline runs")
    w.add_argument("--opt", action="append", default=[], metavar="[METHOD.]NAME=VALUE")
    w.add_argument("--train", action="append", default=[], metavar="NAME=VALUE")
    w.add_argument("--retry-failed", action="store_true")
    w.add_argument("--backend", default="local", choices=["local", "ray"],
                   help="local: this process; ray: every run a Ray task (pip install 'prunekit[ray]'); --out must be shared storage")
    w.add_argument("--address", default=None, help="the Ray cluster: auto or HOST:PORT (default: start a local Ray instance)")
    w.add_argument("--stack", type=int, default=None,
                   help="runs of one architecture trained stacked as one network (default: fit GPU memory; 1 on the CPU)")
    w.add_argument("--report", action="store_true", help="print the table and write plots at the end")
    w.add_argument("--metric", default="auto")
    common(w)
    w.set_defaults(func=cmd_sweep)

    rep = sub.add_parser("report", help="tables (Markdown, CSV) and plots (PNG) from the results database")
    rep.add_argument("--out", default="runs")
    rep.add_argument("--metric", default="auto", help="auto, final, best or val")
    rep.add_argument("--model", default=None)
    rep.add_argument("--dataset", default=None)
    rep.add_argument("--recipe", default=None)
    rep.add_argument("--no-plots", action="store_true")
    rep.add_argument("--tensorboard", action="store_true", help="also write every run's per-epoch metrics as TensorBoard events to OUT/tensorboard")
    rep.set_defaults(func=cmd_report)

    a = sub.add_parser("autosparse", help="AutoSparse scorers: teach one from an IRP run, list the shipped ones")
    asub = a.add_subparsers(dest="action", required=True)
    t = asub.add_parser("teach", help="build (theta0, g0) -> survival from an IMP/IRP run and train a score network")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-run", metavar="KEY", help="a finished IMP/IRP run's key (or a unique prefix) in --out's results.db")
    src.add_argument("--config", metavar="FILE", help="a sweep file describing one IMP/IRP run (methods = [\"imp\"]): "
                     "trained into --out first (resumable; skipped when already there), then taught from")
    t.add_argument("--save", required=True, help="where to write the scorer file")
    t.add_argument("--arch", default="mlp", choices=["mlp", "resnet"])
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--seed", type=int, default=0)
    common(t)
    t.set_defaults(func=cmd_autosparse_teach)
    ls = asub.add_parser("list", help="the scorers shipped with prunekit")
    ls.set_defaults(func=cmd_autosparse_list)

    d = sub.add_parser("demo", help="the main job: every method on LeNet-300-100 / Fashion-MNIST, table and plots")
    common(d, out_default="runs/demo")
    d.set_defaults(func=cmd_demo)

    for what in ("methods", "models", "datasets", "recipes"):
        q = sub.add_parser(what, help=f"list the {what} prunekit knows")
        q.add_argument("-v", "--verbose", action="store_true", help="also list options")
        q.set_defaults(func=cmd_list, what=what)
    return parser


class _NoticeFormat(logging.Formatter):
    """Progress lines as they are; warnings prefixed with ``prunekit:``."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        return f"prunekit: {text}" if record.levelno >= logging.WARNING else text


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    # the library logs to the "prunekit" logger; the command line shows its INFO lines on stderr
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_NoticeFormat())
    logger = logging.getLogger("prunekit")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        return int(args.func(args) or 0)
    except PrunekitError as exc:
        print(f"prunekit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prunekit: interrupted", file=sys.stderr)
        return 130
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


if __name__ == "__main__":
    sys.exit(main())

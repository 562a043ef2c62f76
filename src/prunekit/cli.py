"""The ``prunekit`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .console import NoticeFormat
from .errors import ConfigError, PrunekitError, unknown

_SPECIAL = ("method_options", "train", "model_kwargs", "_resolved")  # tables: --opt, --train, --model-args


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_spec_flags(parser: argparse.ArgumentParser, cls: type, *, skip: Sequence[str] = (), defaults: Mapping[str, Any] | None = None) -> None:
    """One flag per field of the request type ``cls`` (:class:`~prunekit.experiments.RunSpec`,
    :class:`~prunekit.experiments.SweepSpec`), with the field's help text and default; its tables
    become ``--opt``, ``--train`` and ``--model-args``. The values are converted and validated by the
    field's own rules (:func:`spec_values`), then the request is resolved once, by the spec."""
    from .options import describe

    defaults = dict(defaults or {})
    help_of = {name: (typ, default, help_) for name, typ, default, help_ in describe(cls)}
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name in _SPECIAL:
            continue
        typ, default, help_ = help_of[f.name]
        default = defaults.get(f.name, default)
        missing = default is dataclasses.MISSING
        if typ == "bool":
            parser.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{help_} (default: {'yes' if default else 'no'})")
            continue
        if isinstance(default, tuple):
            sep = f.metadata.get("sep") or ","
            shown = sep.join(str(v) for v in default) if default else "none"
        else:
            shown = "required" if missing else ("none" if default is None else str(default))
        parser.add_argument(_flag(f.name), dest=f.name, default=None, required=missing and f.name not in defaults,
                            metavar=f.name.upper(), help=f"{help_} (default: {shown})")
    names = {f.name for f in dataclasses.fields(cls)}
    if "method_options" in names:
        parser.add_argument("--opt", action="append", default=[], metavar="[METHOD.]NAME=VALUE",
                            help="a method option, repeatable; NAME=VALUE applies to every method that has the option, "
                                 "METHOD.NAME=VALUE to that method (prunekit methods -v lists them)")
    if "train" in names:
        from .training import TrainConfig

        parser.add_argument("--train", action="append", default=[], metavar="NAME=VALUE",
                            help="a training option overriding the recipe's, repeatable: " + ", ".join(f.name for f in dataclasses.fields(TrainConfig)))
    if "model_kwargs" in names:
        parser.add_argument("--model-args", action="append", default=[], metavar="NAME=VALUE",
                            help="a keyword argument of the model's builder, repeatable (VALUE read as JSON, else text)")


def spec_values(args: argparse.Namespace, cls: type, owner: str, defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The values given on the command line for the fields of ``cls``, converted and validated."""
    from .options import parse_value

    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        text = getattr(args, f.name, None)
        if f.name in _SPECIAL or text is None:
            if defaults and f.name in defaults and text is None:
                out[f.name] = defaults[f.name]
            continue
        out[f.name] = text if isinstance(text, bool) else parse_value(cls, f.name, text, owner)
    return out


def _pairs(pairs: Sequence[str], flag: str) -> list[tuple[str, str]]:
    out = []
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"{flag} takes NAME=VALUE, got {pair!r}")
        name, _, text = pair.partition("=")
        out.append((name.strip(), text))
    return out


def parse_method_options(pairs: Sequence[str], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["num_steps=10", "force.num_batches=2"]`` -> ``{method: {option: value}}`` (the one ``--opt``
    grammar of prune, run and sweep).

    ``name=value`` applies to every chosen method that has the option (an error if none has);
    ``method.name=value`` to that method only.
    """
    from .experiments.spec import method_options_class
    from .options import parse_value

    out: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for key, text in _pairs(pairs, "--opt"):
        target, _, name = key.rpartition(".")
        if target and target not in methods:
            raise ConfigError(f"--opt {key}={text} names method {target!r}, which is not among the methods ({', '.join(methods) or 'none'})")
        applied = False
        for m in [target] if target else list(methods):
            cls = method_options_class(m)
            if cls is not None and name in {f.name for f in dataclasses.fields(cls)}:
                out[m][name] = parse_value(cls, name, text, f"method {m!r}")
                applied = True
            elif target:
                if cls is None:
                    raise ConfigError(f"method {m!r} has no options, got --opt {key}={text}")
                parse_value(cls, name, text, f"method {m!r}")  # raises: unknown option
        if not applied:
            raise ConfigError(f"option {name!r} belongs to none of the methods {', '.join(methods) or '(none given)'}")
    return out


def _train_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    from .options import parse_value
    from .training import TrainConfig

    return {k: parse_value(TrainConfig, k, v, "train") for k, v in _pairs(pairs, "--train")}


def _model_args(pairs: Sequence[str]) -> dict[str, Any]:
    import json

    out: dict[str, Any] = {}
    for k, v in _pairs(pairs, "--model-args"):
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


def _methods_value(text: str | None) -> tuple[str, ...] | None:
    from .methods import list_methods

    if text is None:
        return None
    if text.strip() == "all":
        return tuple(list_methods())
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    if not names:
        raise ConfigError("--methods needs at least one method name (or 'all')")
    return names


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
_PRUNE_DEFAULTS = {"model": "lenet5", "dataset": "fashion-mnist"}


def cmd_prune(args: argparse.Namespace) -> int:
    from .core.pruning import prune
    from .experiments import DatasetCache, RunSpec, TrainingRun, resolve

    values = spec_values(args, RunSpec, "prune", _PRUNE_DEFAULTS)
    methods = _methods_value(args.methods) or ()
    options = parse_method_options(args.opt, methods)
    device = _device(args.device)
    runs = [resolve(RunSpec(**values, method=m, method_options=options[m], train=_train_overrides(args.train),
                            model_kwargs=_model_args(args.model_args)), device) for m in methods]
    for run in runs:
        if not isinstance(run, TrainingRun) or not run.pruned:
            raise ConfigError(f"prune scores pruning-at-initialisation methods; {run.method!r} is not one")
    first = runs[0]
    ds = DatasetCache(args.data_dir).get(first.dataset)
    batches = first.scoring_data(ds, device)  # the scoring batches of a run of this spec: the masks `prunekit run` trains
    reports: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for i, run in enumerate(runs, 1):
        assert isinstance(run, TrainingRun)
        print(f"[{i}/{len(runs)}] {run.method} ...", file=sys.stderr, flush=True)
        model = run.make_model(ds, device)
        start = time.perf_counter()
        masks = prune(model, run.method, run.sparsity, data=batches, seed=run.seed, allocation=run.allocation, options=run.options)
        seconds[run.method] = time.perf_counter() - start
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reports[run.method] = masks.report(model)
        if args.save_masks:
            masks.save(Path(args.save_masks) / f"{run.method}.pt")
    names = [r.method for r in runs]
    rows = [[f"{row.name} ({row.size:,})"] + [f"{reports[m].rows[j].density:.2%}" for m in names] for j, row in enumerate(reports[names[0]].rows)]
    rows.append(["total density"] + [f"{reports[m].density:.2%}" for m in names])
    rows.append(["effective density"] + [f"{reports[m].effective_density:.2%}" for m in names])
    rows.append(["collapsed layers"] + [str(len(reports[m].collapsed)) for m in names])
    rows.append(["scoring time (s)"] + [f"{seconds[m]:.2f}" for m in names])
    print(f"{first.model} on {first.dataset}, sparsity {first.sparsity:.2%}, seed {first.seed}, device {device}")
    print(_table(["layer (size)", *names], rows))
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
    import signal
    import subprocess

    from .distributed import die_with_parent

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
    # torchrun stops its ranks on SIGTERM; it gets one when this command dies, however it dies (kill -9)
    return subprocess.call(cmd, preexec_fn=lambda: die_with_parent(signal.SIGTERM))


def _join_process_group(args: argparse.Namespace) -> torch.device:
    """Inside a torchrun launch: this rank's device, process group joined."""
    import os

    from .distributed import die_with_parent, init_from_environment

    if "LOCAL_RANK" in os.environ:
        die_with_parent()  # a rank never outlives its torchrun agent
    device = _device(args.device)
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    init_from_environment(device)
    return device


def cmd_run(args: argparse.Namespace) -> int:
    import os

    if isinstance(args.nproc, bool) or args.nproc < 1:
        raise ConfigError(f"--nproc must be at least 1 (processes of this machine), got {args.nproc}")
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
    from .experiments import DatasetCache, RunSpec, run_one

    values = spec_values(args, RunSpec, "run")
    method = values.get("method") or ("dense" if values.get("structured") else None)
    options = parse_method_options(args.opt, [method] if method else [])
    spec = RunSpec(**values, method_options=options.get(method, {}) if method else {}, train=_train_overrides(args.train),
                   model_kwargs=_model_args(args.model_args))
    outcome = run_one(spec, args.out, datasets=DatasetCache(args.data_dir), device=device, force=args.force,
                      retry_failed=args.retry_failed, progress=None if not args.no_progress else False, lease=args.lease)
    if rank() > 0:
        return 0
    print(outcome.describe())
    row = outcome.record
    if row is not None and row.status == "done":
        print(f"density {row.density or 1:.4%} (effective {row.effective_density or 1:.4%}), scoring {row.scoring_seconds or 0:.2f} s, "
              f"training {row.train_seconds or 0:.0f} s ({row.images_per_second or 0:,.0f} img/s) on {row.device}")
        print(f"run folder: {row.run_dir}")
    elif row is not None and row.status == "failed":
        first = (row.error or "").splitlines()[0] if row.error else ""
        print(f"prunekit: {first} ({row.failure} failure; the traceback is in {Path(args.out) / 'results.db'})", file=sys.stderr)
        return 1
    return 0


def _sweep_spec(args: argparse.Namespace, device: torch.device | None = None) -> Any:
    """The sweep of the command line: a sweep file's values, overridden by the flags, resolved once."""
    from .experiments.spec import SweepSpec, read_sweep_file, sweep_from_mapping

    values: dict[str, Any] = {}
    where = "the sweep flags"
    if args.config:
        values = read_sweep_file(args.config)
        where = f"{args.config} and the sweep flags"
        if "model" in values:
            values["models"] = values.pop("model")
    flags = spec_values(args, SweepSpec, "sweep")
    methods = _methods_value(args.methods)
    if methods is not None:
        flags["methods"] = methods
        if args.config:  # --methods narrows the file's grid: the file's options of the methods left out go with them
            values["options"] = {m: o for m, o in values.get("options", {}).items() if m in methods}
    values.update(flags)
    if args.train:
        values["train"] = {**values.get("train", {}), **_train_overrides(args.train)}
    if args.model_args:
        values["model_kwargs"] = {**values.get("model_kwargs", {}), **_model_args(args.model_args)}
    if args.opt:
        options = dict(values.get("options", {}))
        for m, o in parse_method_options(args.opt, list(values.get("methods", ()))).items():
            if o:
                options[m] = {**options.get(m, {}), **o}
        values["options"] = options
    return sweep_from_mapping(values, where=where, device=device)


def cmd_sweep(args: argparse.Namespace) -> int:
    from .experiments import run_sweep
    from .report.tables import METRICS

    device = _device(args.device)
    spec = _sweep_spec(args, device)
    if args.report and args.metric not in METRICS:  # checked before the sweep, not after it
        raise unknown("metric", args.metric, METRICS)
    summary = run_sweep(spec, args.out, device=device, retry_failed=args.retry_failed, backend=args.backend, address=args.address,
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
                have = sorted({(r.model, r.dataset, r.recipe) for r in db.runs(status="done")})
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
    from .experiments.spec import with_overrides

    device = _device(args.device)
    spec = with_overrides(load_sweep_file(DEMO_CONFIG, device), data_dir=args.data_dir)
    print(f"main job: {len(spec.requests())} runs ({DEMO_CONFIG.name}) into {args.out}; finished runs are read from the database",
          file=sys.stderr)
    summary = run_sweep(spec, args.out, device=device, progress=None if not args.no_progress else False)
    print(summary, file=sys.stderr)
    _print_table(Path(args.out), "auto")
    return 1 if summary.counts["failed"] else 0


def cmd_autosparse_list(args: argparse.Namespace) -> int:
    from .autosparse import list_layerwise_scorers, list_scorers, load_layerwise_scorer, load_scorer
    from .methods.autosparse import AutoSparseOptions
    from .methods.autosparse_layerwise import DEFAULT_SCORER

    print("autosparse (the paper's score network of (theta0, g0)):")
    for name, path in list_scorers().items():
        meta = load_scorer(path).meta
        taught = meta.get("taught_on", {})
        ranking = taught.get("irp", {}).get("scorer", "magnitude")
        default = " (default)" if name == AutoSparseOptions().scorer else ""
        print(f"  {name:22s} {meta.get('arch')} taught on {taught.get('model')} / {taught.get('dataset')} "
              f"(IRP to density {taught.get('final_density', float('nan')):.3g}, {taught.get('rounds')} rounds ranked by {ranking}); "
              f"held-out Spearman {meta.get('heldout_spearman', float('nan')):.3f}{default}")
    print("autosparse_layerwise (learned per-layer densities and within-layer ranking):")
    for name, path in list_layerwise_scorers().items():
        meta = load_layerwise_scorer(path).meta
        default = " (default)" if name == DEFAULT_SCORER else ""
        teachers = ", ".join(t["name"] for t in meta.get("teachers", []))
        loto = meta.get("leave_one_teacher_out")
        said = ""
        if loto:
            said = "; leave-one-teacher-out: " + ", ".join(
                f"{r['teacher']} density error {r['density_error']:.2f} (ERK {r['density_error_erk']:.2f}), "
                f"ranking {r['ranking_spearman']:.2f} (|theta0| {r['ranking_spearman_abs_theta']:.2f})" for r in loto)
        print(f"  {name:22s} teachers (profile=): {teachers}{said}{default}")
    return 0


def _check_writable(path: Path) -> None:
    """A file can be written at ``path`` (its folder exists or can be made, and takes a file)."""
    import tempfile

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot write {str(path)!r} ({exc.strerror or exc}); choose another --save") from None


def _irp_runs(args: argparse.Namespace, device: torch.device) -> list[tuple[Any, Any, str | None]]:
    """The finished IMP/IRP runs ``--config`` (trained first where needed) and ``--from-run`` name:
    ``(record, typed run, data folder)`` each."""
    from .experiments import ImpRun
    from .experiments.db import ResultsDB

    wanted: list[tuple[str, str | None]] = []
    for config in args.config or []:  # the IRP run the file describes, trained first unless the database already holds it
        from .experiments import load_sweep_file, run_sweep
        from .experiments.spec import with_overrides

        spec = with_overrides(load_sweep_file(config, device), data_dir=args.data_dir)
        runs = spec.resolved(device)
        if len(runs) != 1 or not isinstance(runs[0], ImpRun):
            raise ConfigError(f"{config} describes {len(runs)} run(s) ({', '.join(sorted({r.method for r in runs}))}); "
                              "--config needs exactly one IMP/IRP run: methods = [\"imp\"], one model, sparsity and seed, dense = false")
        summary = run_sweep(spec, args.out, device=device, progress=None if not args.no_progress else False)
        print(summary, file=sys.stderr)
        if summary.counts["failed"]:
            raise ConfigError(f"the IRP run of {config} failed; see {Path(args.out) / 'results.db'}")
        wanted.append((runs[0].key, spec.data_dir))
    wanted += [(key, args.data_dir) for key in args.from_run or []]
    db_path = Path(args.out) / "results.db"
    if not db_path.is_file():
        raise ConfigError(f"no results database at {db_path}; pass --out of the IRP run")
    found = []
    with ResultsDB(db_path) as db:
        done = db.runs(status="done")
    for key, data_dir in wanted:
        rows = [r for r in done if r.key.startswith(key)]
        if len(rows) != 1:
            raise ConfigError(f"--from-run {key!r} matches {len(rows)} finished runs in {db_path}; give a longer key")
        if not isinstance(rows[0].run, ImpRun):
            raise ConfigError(f"run {rows[0].key} is a {rows[0].method!r} run; a scorer is taught from an IMP/IRP run (--method imp)")
        found.append((rows[0], rows[0].run, data_dir))
    keys = [r.key for r, _, _ in found]
    if len(set(keys)) != len(keys):
        raise ConfigError("the same IRP run is named twice; every teacher must be another run")
    return found


def _taught_on(row: Any, run: Any, **more: Any) -> dict[str, Any]:
    return {"model": run.model, "dataset": run.dataset, "run": row.key, "sparsity": run.sparsity, "irp": row.config["method_options"],
            "recipe": run.recipe, "epochs_per_round": run.train.epochs, "seed": run.seed, **more}


def cmd_autosparse_teach(args: argparse.Namespace) -> int:
    from .autosparse import table_from_imp_run, teach
    from .experiments import DatasetCache

    # every argument checked before any training or teaching
    if not args.config and not args.from_run:
        raise ConfigError("name the IRP run(s) to teach from: --config FILE or --from-run KEY (each may be repeated)")
    if Path(args.save).is_dir():
        raise ConfigError(f"--save {args.save!r} is a directory; give the scorer file's path (e.g. {Path(args.save) / 'scorer.pt'})")
    _check_writable(Path(args.save))
    if args.epochs is not None and args.epochs < 1:
        raise ConfigError(f"--epochs must be at least 1 (epochs of teaching the score network), got {args.epochs}")
    if any(not k.strip() for k in args.from_run or []):
        raise ConfigError("--from-run needs a run's key (or a unique prefix of it); it is empty")
    if args.gradient_batches is not None and args.gradient_batches < 1:
        raise ConfigError(f"--gradient-batches must be at least 1, got {args.gradient_batches}")
    device = _device(args.device)
    found = _irp_runs(args, device)
    caches: dict[str | None, Any] = {}
    if args.method == "autosparse_layerwise":
        return _teach_layerwise(args, found, caches, device)
    tables, taught = [], []
    for row, run, data_dir in found:
        ds = caches.setdefault(data_dir, DatasetCache(data_dir)).get(run.dataset)
        print(f"features: initial weights and a full-pass gradient of {run.model} on {run.dataset} ...", file=sys.stderr)
        table = table_from_imp_run(Path(row.run_dir or Path(args.out) / "runs" / row.key), run.make_model(ds, device),
                                   run.scoring_data(ds, device), num_batches=args.gradient_batches)
        tables.append(table)
        taught.append(_taught_on(row, run, rounds=table.source["rounds"], final_density=table.source["final_density"]))
    epochs = args.epochs or 10
    loto = []
    if len(tables) > 1:  # a scorer taught without each teacher, ranking that teacher's weights
        from .autosparse import spearman

        for i, (held, about) in enumerate(zip(tables, taught)):
            rest = [t for j, t in enumerate(tables) if j != i]
            other = teach(torch.cat([t.features for t in rest]), torch.cat([t.targets for t in rest]), arch=args.arch, epochs=epochs,
                          seed=args.seed)
            rho = spearman(other.predict(held.features), held.targets)
            loto.append({"teacher": f"{about['model']}/{about['dataset']}", "spearman": rho})
            print(f"leave-one-teacher-out: {about['model']}/{about['dataset']}: Spearman {rho:.4f}", file=sys.stderr)
    meta: dict[str, Any] = {"taught_on": taught[0] if len(taught) == 1 else {**taught[0], "teachers": taught}}
    if loto:
        meta["leave_one_teacher_out"] = loto
    scorer = teach(torch.cat([t.features for t in tables]), torch.cat([t.targets for t in tables]), arch=args.arch, epochs=epochs,
                   seed=args.seed, meta=meta, progress=not args.no_progress)
    path = scorer.save(args.save)
    print(f"scorer: {scorer.meta['arch']}, {sum(len(t.targets) for t in tables):,} weights, held-out Spearman "
          f"{scorer.meta['heldout_spearman']:.4f} (MSE {scorer.meta['heldout_mse']:.5f}, best epoch {scorer.meta['best_epoch']}); wrote {path}")
    return 0


def _teach_layerwise(args: argparse.Namespace, found: list[tuple[Any, Any, str | None]], caches: dict[str | None, Any],
                     device: torch.device) -> int:
    from .autosparse import TeachSettings, leave_one_teacher_out, teach_layerwise, teacher_from_imp_run
    from .experiments import DatasetCache
    from .methods.autosparse_layerwise import AutoSparseLayerwiseOptions

    batches = args.gradient_batches or AutoSparseLayerwiseOptions().gradient_batches
    names = [f"{run.model}/{run.dataset}" for _, run, _ in found]
    names = [n if names.count(n) == 1 else f"{n}/seed{run.seed}" for n, (_, run, _) in zip(names, found)]
    if len(set(names)) != len(names):
        raise ConfigError(f"two teachers are the same model, dataset and seed: {names}")
    teachers = []
    for name, (row, run, data_dir) in zip(names, found):
        ds = caches.setdefault(data_dir, DatasetCache(data_dir)).get(run.dataset)
        print(f"teacher {name}: initial weights, g0 over {batches} batches, every round's mask ...", file=sys.stderr)
        teachers.append(teacher_from_imp_run(Path(row.run_dir or Path(args.out) / "runs" / row.key), run.make_model(ds, device).cpu(),
                                             run.scoring_data(ds, torch.device("cpu")), name, num_batches=batches,
                                             source=_taught_on(row, run)))
    settings = TeachSettings(seed=args.seed, **({"epochs": args.epochs} if args.epochs else {}))
    loto = leave_one_teacher_out(teachers, settings, progress=lambda m: print(m, file=sys.stderr)) if len(teachers) > 1 else []
    scorer = teach_layerwise(teachers, settings, meta={"leave_one_teacher_out": loto, "g0_batches": batches})
    path = scorer.save(args.save)
    if loto:
        print("\nleave-one-teacher-out (a scorer taught on the other teachers, scored on this one's tickets):")
        print("| teacher | density error (ERK, uniform) | within-layer Spearman (abs theta0) | ticket IoU (random placement) | "
              "kept per layer at the last round (ticket) |")
        print("|---|---:|---:|---:|---|")
        for r in loto:
            print(f"| {r['teacher']} | {r['density_error']:.3f} ({r['density_error_erk']:.3f}, {r['density_error_layerwise']:.3f}) | "
                  f"{r['ranking_spearman']:.3f} ({r['ranking_spearman_abs_theta']:.3f}) | {r['ticket_iou']:.3f} "
                  f"({r['ticket_iou_random_placement']:.3f}) | {' / '.join(map(str, r['kept_final']))} "
                  f"({' / '.join(map(str, r['kept_final_ticket']))}) |")
    print(f"\nscorer: autosparse_layerwise, {len(teachers)} teacher(s) ({', '.join(names)}); wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunekit", description="Pruning neural networks at initialization and early in training.")
    parser.add_argument("--version", action="version", version=f"prunekit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    from .experiments import RunSpec, SweepSpec

    def common(q: argparse.ArgumentParser, out_default: str | None = "runs", data_dir: bool = True) -> None:
        if out_default is not None:
            q.add_argument("--out", default=out_default, help=f"folder of the results database and run files (default: {out_default})")
        q.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: cuda when available)")
        if data_dir:
            q.add_argument("--data-dir", default=None, help="where the dataset lives (default: its standard places)")
        q.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = sub.add_parser("prune", help="score and prune a model with one or more methods; print per-layer densities")
    p.add_argument("--methods", default="all", help="comma-separated method names, or all (default: all)")
    add_spec_flags(p, RunSpec, skip=("method", "epochs", "ablation", "structured", "budget"), defaults=_PRUNE_DEFAULTS)
    p.add_argument("--save-masks", default=None, metavar="DIR", help="save each method's masks as DIR/<method>.pt")
    common(p, out_default=None)
    p.set_defaults(func=cmd_prune)

    r = sub.add_parser("run", help="score, mask, train, evaluate and store one run")
    add_spec_flags(r, RunSpec)
    r.add_argument("--force", action="store_true", help="discard an earlier result and run again")
    r.add_argument("--retry-failed", action="store_true", help="run again if it failed before")
    r.add_argument("--lease", type=float, default=300.0, metavar="SECONDS",
                   help="seconds without a heartbeat after which a run held by a process on another host or in another PID "
                        "namespace is taken over (default: 300)")
    r.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train data-parallel on N processes of this machine (a torchrun launch: NCCL on GPUs, gloo on the CPU; default 1)")
    common(r)
    r.set_defaults(func=cmd_run)

    w = sub.add_parser("sweep", help="run methods x sparsities x seeds (x models), skipping finished runs")
    w.add_argument("--config", default=None, help="TOML sweep file; flags override its values")
    add_spec_flags(w, SweepSpec, defaults={"models": (), "dataset": None})
    w.add_argument("--retry-failed", action="store_true", help="run again the runs that failed before")
    w.add_argument("--backend", default="local", choices=["local", "ray"],
                   help="local: this process; ray: every run a Ray task (pip install 'prunekit[ray]'); --out must be shared storage (default: local)")
    w.add_argument("--address", default=None, help="the Ray cluster: auto or HOST:PORT (default: start a local Ray instance)")
    w.add_argument("--stack", type=int, default=None,
                   help="runs of one architecture trained stacked as one network (default: fit GPU memory; 1 on the CPU)")
    w.add_argument("--report", action="store_true", help="print the table and write plots at the end")
    w.add_argument("--metric", default="auto", help="auto, final, best or val (default: auto, the recipe's)")
    common(w, data_dir=False)
    w.set_defaults(func=cmd_sweep)

    rep = sub.add_parser("report", help="tables (Markdown, CSV) and plots (PNG) from the results database")
    rep.add_argument("--out", default="runs", help="folder of the results database (default: runs)")
    rep.add_argument("--metric", default="auto", help="auto, final, best or val (default: auto, each recipe's)")
    rep.add_argument("--model", default=None, help="only this model's runs (default: all)")
    rep.add_argument("--dataset", default=None, help="only this dataset's runs (default: all)")
    rep.add_argument("--recipe", default=None, help="only this recipe's runs (default: all)")
    rep.add_argument("--no-plots", action="store_true", help="tables only")
    rep.add_argument("--tensorboard", action="store_true", help="also write every run's per-epoch metrics as TensorBoard events to OUT/tensorboard")
    rep.set_defaults(func=cmd_report)

    a = sub.add_parser("autosparse", help="AutoSparse scorers: teach one from an IRP run, list the shipped ones")
    asub = a.add_subparsers(dest="action", required=True)
    t = asub.add_parser("teach", help="teach a scorer from one or several IMP/IRP runs (with several: a leave-one-teacher-out score)")
    t.add_argument("--from-run", metavar="KEY", action="append",
                   help="a finished IMP/IRP run's key (or a unique prefix) in --out's results.db; repeat for several teachers")
    t.add_argument("--config", metavar="FILE", action="append", help="a sweep file describing one IMP/IRP run (methods = [\"imp\"]): "
                   "trained into --out first (resumable; skipped when already there), then taught from; repeat for several teachers")
    t.add_argument("--method", default="autosparse", choices=["autosparse", "autosparse_layerwise"],
                   help="the method the scorer is for: the paper's score network of (theta0, g0), or the layer-aware one (default: autosparse)")
    t.add_argument("--save", required=True, help="where to write the scorer file")
    t.add_argument("--arch", default="mlp", choices=["mlp", "resnet"], help="autosparse's score network (default: mlp)")
    t.add_argument("--epochs", type=int, default=None, help="epochs of teaching the score network (default: 10; autosparse_layerwise: 6)")
    t.add_argument("--gradient-batches", type=int, default=None,
                   help="batches of g0 per teacher (default: autosparse a full pass, autosparse_layerwise its option's default, 10)")
    t.add_argument("--seed", type=int, default=0, help="seed of the score network and its held-out split (default: 0)")
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    # the library logs to the "prunekit" logger; the command line shows its INFO lines on stderr
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(NoticeFormat())
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

"""The ``prunekit`` command line."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .errors import ConfigError, PrunekitError


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
            if name in spec.options.__dataclass_fields__:
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

    for what in ("methods", "models", "datasets", "recipes"):
        q = sub.add_parser(what, help=f"list the {what} prunekit knows")
        q.add_argument("-v", "--verbose", action="store_true", help="also list options")
        q.set_defaults(func=cmd_list, what=what)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PrunekitError as exc:
        print(f"prunekit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prunekit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""Every method on models as users bring them: before and after the tie rule and the zero-tensor reserve.

    python benchmarks/real_models.py --threads 2

The stand-ins of tests/real_models.py (a ViT with a zero-initialised head, a ResNet-20 with zero
last-BatchNorm scales, a MobileNet-like ReLU6 net, a GPT-2-like causal decoder), every method at 90 %
and 99 %: *before* is prunekit's rule before 0.3 (``ties="index"``: zero-score ties to the earliest
parameters, no reserve for zero tensors), *after* the default (``ties="random"``: spread in proportion,
zero tensors keep the density). One row per model, method and sparsity: scoring time, effective
density (kept weights on an input-to-output path, over all weights), layers left empty, and whether
the mask cut every path (‡).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import warnings
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import prunekit
from real_models import FAST, MODELS, NEEDS, build


def run(model_name: str, method: str, sparsity: float, ties: str) -> tuple[float, float | None, int, bool]:
    model, data, kwargs = build(model_name)
    options = {**FAST.get(method, {}), **NEEDS.get((model_name, method), {})}
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        masks = prunekit.prune(model, method, sparsity, data=data, seed=0, ties=ties, **kwargs, **options)
        seconds = time.perf_counter() - start
        report = masks.report(model, example_inputs=data[0][0])
    return seconds, report.effective_density, len(report.empty), bool(report.disconnected)


def cell(result: tuple[float, float | None, int, bool]) -> str:
    _, eff, empty, cut = result
    return f"{'n/a' if eff is None else f'{100 * eff:.2f} %'}{' ‡' if cut else ''} / {empty}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"CPU ({platform.machine()}, {torch.get_num_threads()} threads), torch {torch.__version__}, {date.today()}\n")
    print("| model | method | sparsity | before: effective density / empty layers | after: effective density / empty layers | "
          "scoring time after (s) |")
    print("|---|---|---:|---|---|---:|")
    cuts = {"index": 0, "random": 0}
    for model_name in MODELS:
        for method in prunekit.list_methods():
            for sparsity in (0.9, 0.99):
                before, after = run(model_name, method, sparsity, "index"), run(model_name, method, sparsity, "random")
                cuts["index"] += before[3]
                cuts["random"] += after[3]
                print(f"| {model_name} | {method} | {100 * sparsity:g} % | {cell(before)} | {cell(after)} | {after[0]:.2f} |", flush=True)
    print(f"\nmasks that cut every path (‡): {cuts['index']} before, {cuts['random']} after, "
          f"of {len(MODELS) * len(prunekit.list_methods()) * 2}")


if __name__ == "__main__":
    main()

"""Per-layer kept weights of the FORCE-variant comparison (benchmarks/force_variants.sh), without training.

Every pruned run of the four variant configs (paper / official loss x exact / official count) plus
SNIP and SynFlow is scored exactly as ``prunekit sweep`` scores it (same resolved run, same scoring
batches, same seed: the masks are the ones the trained runs used), and the weights kept per layer
are printed as a Markdown table, mean over seeds (min-max in brackets when the seeds differ), next
to the number of scoring steps whose mask was decided by ties.

    python benchmarks/force_layers.py [--configs DIR] [--data-dir DIR] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import warnings
from collections import defaultdict
from pathlib import Path

import torch

from prunekit.experiments import DatasetCache, RunContext, TrainingRun, load_sweep_file

VARIANTS = ("paper", "official_loss", "official_count", "official")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default=str(Path(__file__).parent / "configs" / "force_variants"))
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--json", default=None, help="also write the raw counts here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cache = DatasetCache(args.data_dir)
    counts: dict[tuple[str, str, float], list[dict[str, int]]] = defaultdict(list)
    ties: dict[tuple[str, str, float], int] = defaultdict(int)
    layer_names: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in VARIANTS:
            spec = load_sweep_file(Path(args.configs) / f"{variant}.toml")
            for run in spec.resolved(torch.device("cpu")):
                if not isinstance(run, TrainingRun) or not run.pruned:
                    continue
                label = variant if run.method in ("force", "iter_snip") else "-"
                ds = cache.get(run.dataset)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ctx = RunContext(Path(tmp) / run.key, cache, torch.device("cpu"), progress=False)
                    _, masks = run.prepare(ctx, ds)
                assert masks is not None
                kept = {name: int(m.sum()) for name, m in masks.items()}
                layer_names = list(kept)
                counts[(run.method, label, run.sparsity)].append(kept)
                ties[(run.method, label, run.sparsity)] += len(masks.meta.get("tie_steps") or [])
    short = [n.removesuffix(".weight") for n in layer_names]
    print("| method | variant | sparsity | seeds | " + " | ".join(short) + " | steps decided by ties |")
    print("|---|---|---|---|" + "---|" * len(short) + "---|")
    for (method, variant, sparsity), rows in sorted(counts.items()):
        cells = []
        for name in layer_names:
            vals = [r[name] for r in rows]
            mean = statistics.mean(vals)
            cells.append(f"{mean:.0f}" if min(vals) == max(vals) else f"{mean:.0f} ({min(vals)}-{max(vals)})")
        print(f"| {method} | {variant} | {sparsity:g} | {len(rows)} | " + " | ".join(cells) + f" | {ties[(method, variant, sparsity)]} |")
    if args.json:
        out = [dict(method=m, variant=v, sparsity=s, kept=rows, tie_steps=ties[(m, v, s)]) for (m, v, s), rows in sorted(counts.items())]
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

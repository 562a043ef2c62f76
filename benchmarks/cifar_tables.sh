#!/usr/bin/env bash
# Table 1 (every PaI method), Table 2 (early structured pruning) and the precision-parity runs of
# benchmarks/RESULTS.md: ResNet-20 on the full CIFAR-10-jpg with the cifar-cpu recipe, as resumable
# sweeps into runs/cifar_full (run it again after an interruption: only unfinished runs train). Seed 0
# of every cell first, so that an interrupted machine still leaves whole tables; then the fp32 parity
# runs; then seed 1. PARTS picks and orders the parts (default: all, in this order):
#   t1s0 table 1, seed 0 | t1x0 table 1 at 99.5 %, seed 0 | t2 table 2 | parity0 fp32 dense, seed 0
#   t1s1 | t1x1 | parity1   (the same, seed 1)
#   paritycompile   the dense runs of both seeds with the training step through torch.compile
#   t1s2   table 1 at 98 %, seed 2
# The results database (without checkpoints or masks) is copied to benchmarks/cifar_full/ after
# every sweep and every 5 minutes, so that the tables survive a new machine: `prunekit report --out benchmarks/cifar_full`.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/cifar_full}
DATA=${DATA:-.data/cifar10-jpg.tar.gz}   # copy of ../shared/datasets/cifar10-jpg/cifar10-jpg.tar.gz
C=benchmarks/configs/cifar_full
KEEP=${KEEP:-benchmarks/cifar_full/results.db}
keep() { .venv/bin/python -c "import sys; from prunekit.experiments.db import ResultsDB; ResultsDB(sys.argv[1]).export(sys.argv[2])" "$OUT/results.db" "$KEEP"; }
sweep() { .venv/bin/prunekit sweep --out "$OUT" --data-dir "$DATA" --no-progress --config "$@"; keep; }
# also every 5 minutes while the sweeps run: a machine lost mid-sweep keeps every run finished before
mkdir -p "$(dirname "$KEEP")"
( while sleep 300; do [ -f "$OUT/results.db" ] && keep; done ) & exporter=$!
trap 'kill $exporter 2>/dev/null' EXIT
for part in ${PARTS:-t1s0 t1x0 t2 parity0 t1s1 t1x1 parity1 paritycompile t1s2}; do
    case $part in
        t1s0) sweep $C/table1_seed0.toml ;;
        t1x0) sweep $C/table1_extreme_seed0.toml ;;
        t2) sweep $C/table2_epi.toml ;;
        parity0) sweep $C/parity_fp32.toml --seeds 0 ;;
        t1s1) sweep $C/table1_seed1.toml ;;
        t1x1) sweep $C/table1_extreme_seed1.toml ;;
        parity1) sweep $C/parity_fp32.toml --seeds 1 ;;
        paritycompile) sweep $C/parity_compile.toml ;;
        t1s2) sweep $C/table1_seed2_98.toml ;;
        *) echo "unknown part $part" >&2; exit 2 ;;
    esac
done

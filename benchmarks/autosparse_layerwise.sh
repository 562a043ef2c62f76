#!/usr/bin/env bash
# The layer-aware AutoSparse benchmark of benchmarks/RESULTS.md, as resumable steps (run it again after
# an interruption). PARTS picks and orders them (default: teach b a c):
#   teach  the three IRP teachers (trained into runs/irp_layerwise unless there) and the scorer, with the
#          leave-one-teacher-out table
#   b      target (b) LeNet-5 / CIFAR-10-jpg, seeds 0-2, and the shuffle ablation
#   a      target (a) LeNet-5 / Fashion-MNIST, seeds 0-2, the shuffle ablation and the teacher's profile
#   c      target (c) ResNet-20 / full CIFAR-10-jpg, seed 0, into Table 1's folder (its runs are reused)
# The results databases (without checkpoints or masks) are copied under benchmarks/ after every sweep
# and every 5 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
C=benchmarks/configs/autosparse_layerwise
OUT=${OUT:-runs/autosparse_layerwise}
CIFAR_OUT=${CIFAR_OUT:-runs/cifar_full}
DATA=${DATA:-.data/cifar10-jpg.tar.gz}   # copy of ../shared/datasets/cifar10-jpg/cifar10-jpg.tar.gz
SAVE=${SAVE:-runs/irp_layerwise/irp-lenets-resnet20.pt}
keep() { .venv/bin/python -c "import sys; from prunekit.experiments.db import ResultsDB; ResultsDB(sys.argv[1]).export(sys.argv[2])" "$1/results.db" "$2"; }
sweep() { local out=$1; shift; .venv/bin/prunekit sweep --out "$out" --no-progress --config "$@"; }
# every 5 minutes while the sweeps run, too: a machine lost mid-sweep keeps every run finished before
mkdir -p benchmarks/autosparse_layerwise benchmarks/cifar_full
( while sleep 300; do [ -f "$OUT/results.db" ] && keep "$OUT" benchmarks/autosparse_layerwise/results.db
                      [ -f "$CIFAR_OUT/results.db" ] && keep "$CIFAR_OUT" benchmarks/cifar_full/results.db; done ) & exporter=$!
trap 'kill $exporter 2>/dev/null' EXIT
for part in ${PARTS:-teach b a c}; do
    case $part in
        teach) .venv/bin/prunekit autosparse teach --method autosparse_layerwise --out runs/irp_layerwise --save "$SAVE" --no-progress \
                   --config $C/irp_lenet300_fmnist.toml --config $C/irp_lenet5_fmnist.toml --config $C/irp_resnet20_cifar.toml ;;
        b) for f in cifar_lenet5 cifar_lenet5_shuffle; do sweep "$OUT" $C/$f.toml --data-dir "$DATA"; keep "$OUT" benchmarks/autosparse_layerwise/results.db; done ;;
        a) for f in fmnist_lenet5 fmnist_lenet5_shuffle fmnist_lenet5_profile; do sweep "$OUT" $C/$f.toml; keep "$OUT" benchmarks/autosparse_layerwise/results.db; done ;;
        c) for f in cifar_resnet20 cifar_resnet20_shuffle cifar_resnet20_profile; do
               sweep "$CIFAR_OUT" $C/$f.toml --data-dir "$DATA"; keep "$CIFAR_OUT" benchmarks/cifar_full/results.db; done ;;
        *) echo "unknown part $part" >&2; exit 2 ;;
    esac
done

"""Does SynFlow need float64? The largest value of the path-product forward in float32, and how far the
float32 scores rank from the float64 ones, on plain and residual networks.

    python benchmarks/synflow_precision.py     # VGG-11/16/19 (no BN), ResNet-20/56/110/50; 32x32 and 224x224
    python benchmarks/synflow_precision.py --models vgg19 --sizes 32

For each network (the zoo's initialisation, seed 0) and input size, one SynFlow scoring pass
(absolute weights, all-ones input, eval mode) in float32 and in float64: the largest activation of
the float32 forward and of R, whether anything overflowed (inf) or underflowed (exact zeros where
float64 is nonzero), and the Spearman correlation of the two score rankings. ImageNet-sized inputs
(224x224) run through the same CIFAR-variant networks (global average pooling before the head).
BN in eval mode at initialisation is an affine map with |gamma| = 1, |running var| = 1: residual
networks add their branches at every block, so their path sum grows with depth.
"""

from __future__ import annotations

import argparse
import platform
from datetime import date

import torch

import prunekit
from prunekit import models


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    def ranks(x: torch.Tensor) -> torch.Tensor:
        r = torch.empty_like(x, dtype=torch.float64)
        r[torch.argsort(x, stable=True)] = torch.arange(x.numel(), dtype=torch.float64)
        return r

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def peak_activation(model: torch.nn.Module, shape: tuple[int, ...], dtype: torch.dtype) -> float:
    import copy

    m = copy.deepcopy(model).to(dtype).eval()
    with torch.no_grad():
        for t in m.state_dict(keep_vars=True).values():
            if t.is_floating_point():
                t.data.abs_()
    peak = 0.0

    def hook(_mod, _inp, out):
        nonlocal peak
        if isinstance(out, torch.Tensor):
            peak = max(peak, float(out.abs().max()))

    handles = [mod.register_forward_hook(hook) for mod in m.modules() if not list(mod.children())]
    with torch.no_grad():
        m(torch.ones(1, *shape, dtype=dtype))
    for h in handles:
        h.remove()
    return peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="vgg11,vgg16,vgg19,resnet20,resnet56,resnet110,resnet50")
    ap.add_argument("--sizes", default="32,224")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models.split(","):
        for size in map(int, args.sizes.split(",")):
            shape = (3, size, size)
            model = models.create(name, 10, shape, seed=0)
            s64 = prunekit.score(model, "synflow", input_shape=shape, float64=True)
            f64 = torch.cat([v.flatten() for v in s64.values()])
            peak = peak_activation(model, shape, torch.float32)
            try:
                s32 = prunekit.score(model, "synflow", input_shape=shape, float64=False)
            except prunekit.ScoreError:  # inf/NaN scores: float32 overflowed
                rows.append((name, size, peak, True, None, f64.numel(), None))
                print(rows[-1], flush=True)
                continue
            f32 = torch.cat([v.flatten().double() for v in s32.values()])
            underflow = int(((f32 == 0) & (f64 != 0)).sum())
            rows.append((name, size, peak, False, underflow, f64.numel(), spearman(f32, f64)))
            print(rows[-1], flush=True)
    print()
    print(f"### SynFlow in float32 vs float64 — CPU ({platform.machine()}, {args.threads} threads), torch {torch.__version__}, {date.today()}")
    print("`python benchmarks/synflow_precision.py`; zoo initialisation, seed 0, all-ones input, eval mode.")
    print()
    print("| network | input | largest float32 activation | inf in float32 | float32 zeros where float64 > 0 | weights | Spearman(float32, float64) |")
    print("|---|---|---:|---|---:|---:|---:|")
    for name, size, peak, inf, under, n, rho in rows:
        if inf:
            print(f"| {name} | {size}x{size} | {peak:.3g} | **yes: scoring fails** | – | {n:,} | – |")
        else:
            print(f"| {name} | {size}x{size} | {peak:.3g} | no | {under:,} | {n:,} | {rho:.12f} |")


if __name__ == "__main__":
    main()

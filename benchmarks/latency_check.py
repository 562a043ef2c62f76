"""The latency budget against the clock: planned training-step time vs the measured one.

    python benchmarks/latency_check.py --threads 2

For ResNet-20 and VGG-11-BN (CIFAR shapes, batch 128), in fp32 (contiguous) and bf16 + channels-last:
the latency table is measured (or read from the cache), then for ``latency=0.7/0.5/0.3`` a plan is
made (L1 importance), the channels removed, and one training step of the pruned network timed
against the full one's, alternating in this process (the median of the per-round ratios, so that a
machine that slows down or speeds up while it runs moves both). The estimate is the plan's step time over the full
network's; the error is estimate / measured - 1. The MACs plan of the same fraction is timed beside
it (what a MACs budget buys in time), and the last column times inference (a forward pass in
evaluation mode at the same batch) of the latency plan against the full network's. Run it on a
quiet machine: it times.
"""

from __future__ import annotations

import argparse
import platform
from datetime import date

import torch

from prunekit import models, structured
from prunekit.errors import ConfigError
from prunekit.structured.latency import median_seconds, timed_copy, training_step
from prunekit.training.precision import Precision

VARIANTS = {"fp32": Precision("fp32", False), "bf16+cl": Precision("bf16", True)}


def inference_step(model: torch.nn.Module, x: torch.Tensor, batch_size: int, precision: Precision, device: torch.device):
    """One forward pass of a copy of ``model`` in evaluation mode, without gradients, as a function to time."""
    net, batch = timed_copy(model, x, batch_size, precision, device)
    net.eval()

    def step() -> None:
        with torch.inference_mode(), precision.autocast(device):
            net(batch)

    return step


def step_ratio(full: torch.nn.Module, pruned: torch.nn.Module, x: torch.Tensor, batch_size: int, precision: Precision,
               rounds: int = 7, repeats: int = 5, make_step=training_step) -> float:
    """The pruned network's training step (or ``make_step``'s) over the full one's: the median over
    ``rounds`` of the ratio of their median steps, the two timed one after the other in each round."""
    device = torch.device("cpu")
    steps = [make_step(net, x, batch_size, precision, device) for net in (full, pruned)]
    ratios = []
    for _ in range(rounds):
        a, b = (median_seconds(step, device, repeats, warmup=1) for step in steps)
        ratios.append(b / a)
    return sorted(ratios)[len(ratios) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet20,vgg11_bn")
    ap.add_argument("--variants", default="fp32,bf16+cl")
    ap.add_argument("--fractions", default="0.7,0.5,0.3")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"batch {args.batch_size}, CPU ({platform.machine()}, {torch.get_num_threads()} threads), torch {torch.__version__}, "
          f"{date.today()}\n")
    print("| model | precision | budget | estimated step / full | measured step / full | error | MACs kept | "
          "measured step / full of macs= same fraction | inference / full |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for name in args.models.split(","):
        model = models.create(name, 10, (3, 32, 32), seed=0)
        x = torch.randn(1, 3, 32, 32)
        for variant in args.variants.split(","):
            precision = VARIANTS[variant]
            for fraction in (float(f) for f in args.fractions.split(",")):
                try:
                    plan = structured.plan_channels(model, budget=f"latency={fraction}", example_inputs=x, batch_size=args.batch_size,
                                                    precision=precision)
                except ConfigError as e:  # a budget below what the kept floors cost: said in the row
                    print(f"| {name} | {variant} | latency={fraction:g} | not reachable: {e} | | | | | |", flush=True)
                    continue
                assert plan.step_seconds_before and plan.step_seconds_after is not None
                estimate = plan.step_seconds_after / plan.step_seconds_before
                pruned = structured.remove_channels(model, plan)
                measured = step_ratio(model, pruned, x, args.batch_size, precision)
                inference = step_ratio(model, pruned, x, args.batch_size, precision, make_step=inference_step)
                macs_plan = structured.plan_channels(model, budget=f"macs={fraction}", example_inputs=x)
                macs_measured = step_ratio(model, structured.remove_channels(model, macs_plan), x, args.batch_size, precision)
                print(f"| {name} | {variant} | latency={fraction:g} | {estimate:.3f} | {measured:.3f} | {estimate / measured - 1:+.1%} | "
                      f"{plan.macs_after / plan.macs_before:.1%} | {macs_measured:.3f} | {inference:.3f} |", flush=True)


if __name__ == "__main__":
    main()

"""One model at a time vs N models stacked into one network, side by side in one run.

    python benchmarks/stacked.py                                   # CUDA if present: ResNet-20, VGG-16, N in 1,4,16,32
    python benchmarks/stacked.py --device cpu --sizes 1,2,4 --steps 5

Every variant runs the same training step on CIFAR-10-shaped inputs already on the device (batch 128
per model): forward, cross-entropy, backward, SGD with momentum and weight decay, masks re-applied.
Throughput is counted in model-images per second (N models x batch x steps / seconds), after warm-up,
with the device synchronised. Baselines for one model: the plain loop (bf16 autocast and
channels-last on CUDA, as prunekit's trainer), ``torch.compile`` (default mode), and
``torch.compile(mode="reduce-overhead")``, which replays the step as a CUDA graph.
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import date

import torch
import torch.nn.functional as F

import prunekit
from prunekit import models
from prunekit.stacked import StackedModel


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def single_step_fn(model: torch.nn.Module, run: torch.nn.Module, masks: prunekit.Masks, amp: bool):
    """A training step of ``model`` through ``run`` (the model itself, or its compiled form)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    enforce = masks.bind(model)
    device = next(model.parameters()).device

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(run(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        enforce()

    return step


def timed(step, x, y, steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        step(x, y)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    sync(device)
    return time.perf_counter() - start


def bench_single(name: str, device: torch.device, batch: int, steps: int, warmup: int, mode: str | None) -> float:
    model = models.create(name, 10, (3, 32, 32), seed=0).to(device)
    amp = device.type == "cuda"
    if amp:
        model = model.to(memory_format=torch.channels_last)
    masks = prunekit.prune(model, "random", 0.9, seed=0)
    masks.apply(model)
    masks.remove(model)  # the loop re-applies masks after each step, as the trainer does
    x = torch.randn(batch, 3, 32, 32, device=device)
    if amp:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)
    run = model if mode is None else torch.compile(model, mode=None if mode == "default" else mode)
    step = single_step_fn(model, run, masks, amp)
    return batch * steps / timed(step, x, y, steps, warmup, device)


def stacked_step_fn(stacked: StackedModel, masks: list[prunekit.Masks], amp: bool):
    """A training step of the members of ``stacked`` (one mask each): the members' mean losses summed,
    SGD with momentum and weight decay, masks re-applied to the stacked parameters in one call."""
    device = next(stacked.parameters()).device
    n = len(masks)
    pairs = [(stacked.stacked_parameter(k), torch.stack([m[k] for m in masks]).to(device=device, dtype=torch.float32)) for k in masks[0]]
    opt = torch.optim.SGD(stacked.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = stacked(x)
            losses = F.cross_entropy(out.flatten(0, 1), y.reshape(-1), reduction="none").view(n, -1).mean(1)
        opt.zero_grad(set_to_none=True)
        losses.sum().backward()
        opt.step()
        with torch.no_grad():
            torch._foreach_mul_([p for p, _ in pairs], [m for _, m in pairs])

    return step


def bench_stacked(name: str, n: int, device: torch.device, batch: int, steps: int, warmup: int, path: str = "fused") -> float:
    members = [models.create(name, 10, (3, 32, 32), seed=s).to(device) for s in range(n)]
    masks = [prunekit.prune(m, "random", 0.9, seed=s) for s, m in enumerate(members)]
    stacked = StackedModel(members, fused=path == "fused").to(device)
    x = torch.randn(n, batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (n, batch), device=device)
    step = stacked_step_fn(stacked, masks, amp=device.type == "cuda")
    return n * batch * steps / timed(step, x, y, steps, warmup, device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet20,vgg16_bn")
    ap.add_argument("--sizes", default="1,4,16,32")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sizes = [int(s) for s in args.sizes.split(",")]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"### Stacked training: {where}, torch {torch.__version__}, {date.today()}")
    print(f"batch {args.batch} per model, {args.steps} timed steps after {args.warmup} warm-up steps, random masks at 90 %")
    print()
    print("| model | variant | model-img/s | vs one at a time |")
    print("|---|---|---:|---:|")
    for name in args.models.split(","):
        base = bench_single(name, device, args.batch, args.steps, args.warmup, None)
        print(f"| {name} | one at a time (plain loop) | {base:,.0f} | 1.00x |", flush=True)
        if not args.no_compile:
            modes = ["default"] + (["reduce-overhead"] if device.type == "cuda" else [])
            for mode in modes:
                try:
                    v = bench_single(name, device, args.batch, args.steps, args.warmup, mode)
                    label = "torch.compile" if mode == "default" else "torch.compile reduce-overhead (CUDA graphs)"
                    print(f"| {name} | one at a time, {label} | {v:,.0f} | {v / base:.2f}x |", flush=True)
                except Exception as exc:  # report, do not hide, a baseline that does not run here
                    print(f"| {name} | one at a time, torch.compile {mode} | failed: {type(exc).__name__} | |", flush=True)
        for n in sizes:
            for path in ("fused", "vmap"):
                try:
                    v = bench_stacked(name, n, device, args.batch, args.steps, args.warmup, path)
                    print(f"| {name} | stacked ({path}), N = {n} | {v:,.0f} | {v / base:.2f}x |", flush=True)
                except torch.cuda.OutOfMemoryError:
                    print(f"| {name} | stacked ({path}), N = {n} | out of memory | |", flush=True)
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

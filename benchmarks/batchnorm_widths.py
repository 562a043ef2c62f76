"""BatchNorm forward + backward at pruned widths, channels-last against NCHW, on the CPU.

    python benchmarks/batchnorm_widths.py --threads 2

PyTorch's channels-last BatchNorm on a CPU with more than one thread is slow at widths that are not
a multiple of 16; this is why a latency plan keeps only widths the measured table makes faster
(prunekit.structured.latency.LatencyModel.widths). For each (C, map) of ResNet-20's stages at batch
128: the median of 9 forward + backward passes in bf16 (or --dtype fp32), channels-last, and the
same BatchNorm run on an NCHW copy (converted in and out). Run it on a quiet machine: it times.
"""

from __future__ import annotations

import argparse
import time

import torch

SHAPES = ((32, (16, 14, 12, 10, 8, 6, 4, 2)), (16, (32, 28, 24, 20, 16, 8, 4)), (8, (64, 56, 48, 40, 32, 16, 8)))


def milliseconds(channels: int, size: int, through_nchw: bool, dtype: torch.dtype, batch: int = 128) -> float:
    bn = torch.nn.BatchNorm2d(channels).train()
    x = torch.randn(batch, channels, size, size).to(dtype).contiguous(memory_format=torch.channels_last).requires_grad_(True)

    def forward() -> torch.Tensor:
        if through_nchw:
            return bn(x.contiguous()).contiguous(memory_format=torch.channels_last)
        return bn(x)

    grad = torch.randn_like(forward())
    times = []
    for _ in range(9):
        start = time.perf_counter()
        forward().backward(grad)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    print(f"{args.dtype}, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| C, map | channels-last | through NCHW (converted in and out) |\n|---|---:|---:|")
    for size, widths in SHAPES:
        for c in widths:
            print(f"| {c}, {size}×{size} | {milliseconds(c, size, False, dtype):.2f} ms | {milliseconds(c, size, True, dtype):.2f} ms |",
                  flush=True)


if __name__ == "__main__":
    main()

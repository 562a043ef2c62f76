"""Cost of keeping masks in a model during training, side by side in one run (CPU by default).

Three ways to keep pruned weights at zero through an SGD step (momentum 0.9, weight decay 5e-4),
each timed per training step (forward, backward, optimizer) on the same model and batch:

* ``parametrize``: :meth:`prunekit.Masks.apply` (``weight = original * mask``, a
  ``torch.nn.utils.parametrize`` parametrization; travels with deepcopy and state_dict);
* ``grad-hook``: the earlier ``apply`` (pruned entries zeroed once, then a tensor hook multiplying
  each gradient by the mask), reproduced here for the comparison;
* ``enforce``: what prunekit's own Trainer does (re-zero after each step, one fused ``_foreach_mul_``).

The three are interleaved round by round, so a machine whose load changes during the run affects
them alike; the table gives the median step time and the ratio to ``grad-hook``.

    python benchmarks/mask_mechanisms.py [--models lenet5,resnet20] [--rounds 15] [--steps 10] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

import prunekit
from prunekit.models import create

SHAPES = {"lenet5": ((1, 28, 28), 128), "resnet20": ((3, 32, 32), 128)}


def grad_hook_apply(model: nn.Module, masks: prunekit.Masks) -> list:
    handles = []
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, m in masks.items():
            p = params[name]
            p.masked_fill_(~m, 0.0)
            keep = m.to(p.dtype)
            handles.append(p.register_hook(lambda g, keep=keep: g * keep))
    return handles


def make_step(model: nn.Module, after: Callable[[], None] | None) -> Callable[[torch.Tensor, torch.Tensor], None]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if after is not None:
            after()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lenet5,resnet20")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=10, help="training steps per timed round")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, {args.threads} thread(s), torch {torch.__version__}, prunekit {prunekit.__version__}")
    print("| model | mechanism | median ms / step | ratio to grad-hook |")
    print("|---|---|---|---|")
    for name in args.models.split(","):
        shape, batch = SHAPES[name]
        base = create(name, 10, shape, seed=0).to(device)
        masks = prunekit.prune(base, "random", 0.9, seed=0)
        x = torch.randn(batch, *shape, device=device)
        y = torch.randint(0, 10, (batch,), device=device)
        steps: dict[str, Callable] = {}
        m1 = copy.deepcopy(base)
        masks.apply(m1)
        steps["parametrize"] = make_step(m1, None)
        m2 = copy.deepcopy(base)
        grad_hook_apply(m2, masks)
        steps["grad-hook"] = make_step(m2, None)
        m3 = copy.deepcopy(base)
        enforce = masks.bind(m3)
        enforce()
        steps["enforce"] = make_step(m3, enforce)
        for step in steps.values():  # warm-up
            for _ in range(3):
                step(x, y)
        times: dict[str, list[float]] = {k: [] for k in steps}
        for _ in range(args.rounds):
            for key, step in steps.items():
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                for _ in range(args.steps):
                    step(x, y)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[key].append((time.perf_counter() - start) / args.steps)
        for model_, key in ((m1, "parametrize"), (m2, "grad-hook"), (m3, "enforce")):
            assert masks.is_applied(model_), key
        ref = statistics.median(times["grad-hook"])
        for key, ts in times.items():
            med = statistics.median(ts)
            print(f"| {name} | {key} | {med * 1e3:.2f} | {med / ref:.3f} |")


if __name__ == "__main__":
    main()

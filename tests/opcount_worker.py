"""Kernel-launching ops of one training step, one model against N stacked (run by tests/test_stacked.py
in a fresh interpreter): ``python opcount_worker.py MODEL C H W`` prints one JSON line."""

import json
import sys

import torch
import torch.nn.functional as F

import prunekit
from prunekit import models
from prunekit.stacked import StackedModel

# ops that launch no kernel of their own (views, metadata, allocation)
_NO_KERNEL = {
    "aten::view", "aten::reshape", "aten::_reshape_alias", "aten::flatten", "aten::transpose", "aten::t", "aten::permute",
    "aten::expand", "aten::unsqueeze", "aten::squeeze", "aten::as_strided", "aten::alias", "aten::detach", "aten::select",
    "aten::slice", "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::resize_", "aten::_unsafe_view",
    "aten::lift_fresh", "aten::result_type", "aten::to", "aten::_to_copy", "aten::contiguous", "aten::unbind", "aten::split",
    "aten::chunk", "aten::narrow", "aten::view_as", "aten::expand_as", "aten::is_nonzero", "aten::item",
    "aten::_local_scalar_dense", "aten::zeros", "aten::ones",
}


def _kernel_ops(step) -> int:
    """Leaf aten calls of one call of ``step`` that launch a kernel (views and allocations left out)."""
    from torch.profiler import ProfilerActivity, profile, record_function

    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof, record_function("the-step"):
        step()
    events = prof.events()
    thread = next(e.thread for e in events if e.name == "the-step")  # threads left by other tests are not counted
    return sum(
        1 for e in events
        if e.thread == thread and e.name.startswith("aten::") and e.name not in _NO_KERNEL
        and not any(c.name.startswith("aten::") for c in e.cpu_children)
    )


def counts(name, shape):
    def single_step():
        model = models.create(name, 10, shape, seed=0)
        enforce = prunekit.prune(model, "random", 0.9, seed=0).bind(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        x, y = torch.randn(4, *shape), torch.randint(0, 10, (4,))

        def step():
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            enforce()

        return step

    def stacked_step(n, path):
        members = [models.create(name, 10, shape, seed=s) for s in range(n)]
        masks = [prunekit.prune(m, "random", 0.9, seed=s) for s, m in enumerate(members)]
        stacked = StackedModel(members, fused=path == "fused")
        pairs = [(stacked.stacked_parameter(k), torch.stack([m[k] for m in masks]).float()) for k in masks[0]]
        opt = torch.optim.SGD(stacked.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        x, y = torch.randn(n, 4, *shape), torch.randint(0, 10, (n, 4))

        def step():
            losses = F.cross_entropy(stacked(x).flatten(0, 1), y.reshape(-1), reduction="none").view(n, -1).mean(1)
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            opt.step()
            with torch.no_grad():
                torch._foreach_mul_([p for p, _ in pairs], [m for _, m in pairs])

        return step, stacked

    result = {"one": _kernel_ops(single_step()), "fused": {}, "vmap": {}}
    for n in (1, 4, 8):
        step, stacked = stacked_step(n, "fused")
        ops = _kernel_ops(step)
        result["fused"][str(n)] = (stacked.path, ops)
    step, stacked = stacked_step(4, "vmap")
    ops = _kernel_ops(step)
    result["vmap"]["4"] = (stacked.path, ops)
    return result


if __name__ == "__main__":
    print(json.dumps(counts(sys.argv[1], tuple(int(v) for v in sys.argv[2:]))))



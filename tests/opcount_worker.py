"""Kernel-launching ops of one training step, one model against N stacked (run by tests/test_stacked.py
in a fresh interpreter): ``python opcount_worker.py MODEL C H W`` prints one JSON line."""

import json
import sys
from pathlib import Path

import torch

import prunekit
from prunekit import models
from prunekit.stacked import StackedModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import stacked as sb  # the benchmark's training steps: the test counts the kernels of what it times

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
    """The steps are the ones ``benchmarks/stacked.py`` times, at batch 4 per model.

    Counted with 2 intra-op threads whatever the environment says: with one (``OMP_NUM_THREADS=1``)
    PyTorch 2.13 dispatches these small grouped convolutions to a path that loops over the groups
    (a copy, fill and cat per group: 139 ops against 79 for 4 stacked LeNet-5s), and the count would
    measure that dispatch rule rather than the stacked step."""
    torch.set_num_threads(2)
    def single_step():
        model = models.create(name, 10, shape, seed=0)
        masks = prunekit.prune(model, "random", 0.9, seed=0)
        step = sb.single_step_fn(model, model, masks, amp=False)
        x, y = torch.randn(4, *shape), torch.randint(0, 10, (4,))
        return lambda: step(x, y)

    def stacked_step(n, path):
        members = [models.create(name, 10, shape, seed=s) for s in range(n)]
        masks = [prunekit.prune(m, "random", 0.9, seed=s) for s, m in enumerate(members)]
        stacked = StackedModel(members, fused=path == "fused")
        step = sb.stacked_step_fn(stacked, masks, amp=False)
        x, y = torch.randn(n, 4, *shape), torch.randint(0, 10, (n, 4))
        return (lambda: step(x, y)), stacked

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



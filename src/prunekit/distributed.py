"""Scoring under ``torch.distributed``: every rank gets the mask one process would get on all ranks' data.

When a process group is initialised (``torchrun``, DDP) and has more than one rank, each rank scores
on its own batches and prunekit reduces what a method needs across ranks, at every scoring step:

* SNIP, Iter-SNIP, FORCE: the mean loss gradient (the mean over all ranks' batches);
* GraSP, |GraSP|: the gradient ``g`` and then the Hessian-gradient product ``Hg`` (each rank's
  ``H_r g`` with the reduced ``g``, averaged);
* ProsPr: every inner step's gradient and every Hessian-vector product of the unrolled backward pass,
  so the inner steps are those of data-parallel SGD on all ranks' batches;
* AutoSparse: the full-pass gradient sum ``g0`` (summed over ranks, i.e. over a sharded dataset);
* SynFlow, magnitude, random, random-ERK need no data; the shared seed gives every rank the same.

With equal batch sizes on every rank this is the single-process computation on the ranks' batches
concatenated, up to the order of float additions (the reduced values are bit-identical on every
rank, so the ranks' masks are identical; against one process they can differ only where two scores
agree to the last bits). Exceptions, by definition: BatchNorm in train mode normalises each rank's
batch with its own statistics (as DDP training does without SyncBatchNorm), so a BN network scored in
train mode matches one process only with SyncBatchNorm or ``bn_mode="eval"``; GraSP's class-balanced
sampling draws ``samples_per_class`` on every rank (so the union holds ``world_size`` times as many).

After pruning, :func:`check_agreement` gathers a checksum of the mask from every rank and raises one
clear error if any rank's differs (weights or data that should agree do not).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import PrunekitError, ScoreError


def world_size() -> int:
    """The number of ranks of the default process group (1 when there is none)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return int(dist.get_world_size())


def _comm_device() -> torch.device:
    """Where the backend reduces: CUDA for NCCL, the CPU otherwise (gloo)."""
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _reduce_(tensors: Sequence[Tensor], average: bool) -> None:
    import torch.distributed as dist

    size = world_size()
    if size == 1 or not tensors:
        return
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    device = _comm_device()
    buf = flat.to(device)
    dist.all_reduce(buf)
    if average:
        buf /= size
    buf = buf.to(flat.device)
    offset = 0
    with torch.no_grad():
        for t in tensors:
            n = t.numel()
            t.copy_(buf[offset : offset + n].view_as(t))
            offset += n


def mean_across_ranks_(tensors: Sequence[Tensor]) -> None:
    """Replace each tensor, in place, by its mean over the ranks (nothing without a process group)."""
    _reduce_(tensors, average=True)


def sum_across_ranks_(tensors: Sequence[Tensor]) -> None:
    """Replace each tensor, in place, by its sum over the ranks (nothing without a process group)."""
    _reduce_(tensors, average=False)


def mask_digest(masks: Mapping[str, Tensor]) -> int:
    """A 63-bit checksum of masks (names, shapes and kept entries)."""
    h = hashlib.sha256()
    for name, m in masks.items():
        h.update(name.encode())
        h.update(str(tuple(m.shape)).encode())
        h.update(np.packbits(m.detach().to("cpu", torch.bool).numpy().reshape(-1)).tobytes())
    return int.from_bytes(h.digest()[:8], "little") >> 1


def _ranks_differing(digest: int) -> list[int]:
    """The ranks whose ``digest`` differs from rank 0's (gathered from every rank)."""
    import torch.distributed as dist

    mine = torch.tensor([digest], dtype=torch.int64, device=_comm_device())
    gathered = [torch.zeros_like(mine) for _ in range(world_size())]
    dist.all_gather(gathered, mine)
    values = [int(t.item()) for t in gathered]
    return [r for r, v in enumerate(values) if v != values[0]]


def check_agreement(masks: Mapping[str, Tensor], method: str) -> None:
    """Raise :class:`ScoreError` on every rank if any rank's masks differ from rank 0's."""

    size = world_size()
    if size == 1:
        return
    differ = _ranks_differing(mask_digest(masks))
    if differ:
        raise ScoreError(
            f"method {method!r}: the masks of rank(s) {', '.join(map(str, differ))} differ from rank 0's "
            f"(of {size} ranks): the ranks' models or options differ. Initialise every rank from the same seed "
            "(or broadcast rank 0's weights, as DistributedDataParallel does) before pruning, and pass the same options"
        )


# -- data-parallel training -------------------------------------------------------------------------
def rank() -> int:
    """This process's rank in the default process group (0 when there is none)."""
    import torch.distributed as dist

    return int(dist.get_rank()) if world_size() > 1 else 0


def decided_by_rank0(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a decision all ranks must share, e.g. "resume from the
    checkpoint"); ``value`` itself without a process group."""
    import torch.distributed as dist

    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_replicas(model: torch.nn.Module, what: str = "training") -> None:
    """Raise on every rank if the ranks' copies of ``model`` hold different weights (after DDP training
    they must be identical, bit for bit)."""
    if world_size() == 1:
        return
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    differ = _ranks_differing(int.from_bytes(h.digest()[:8], "little") >> 1)
    if differ:
        raise PrunekitError(f"after {what}, the weights of rank(s) {', '.join(map(str, differ))} differ from rank 0's")


def init_from_environment(device: torch.device) -> bool:
    """Join the process group a ``torchrun`` launch describes (``RANK``, ``WORLD_SIZE`` in the
    environment): NCCL on CUDA, gloo on the CPU. Returns whether this process is one of several."""
    import os

    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return world_size() > 1
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend)
    return True


def die_with_parent(sig: int | None = None) -> None:
    """Ask the kernel to send this process ``sig`` (default SIGKILL) when its parent dies (Linux
    ``prctl(PR_SET_PDEATHSIG)``; a no-op elsewhere), so that the processes of a ``--nproc`` launch
    never outlive the command that started them. Exits at once if the parent is already gone."""
    import ctypes
    import os
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL if sig is None else sig), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)

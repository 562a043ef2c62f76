"""Scoring data: a re-startable stream of ``(inputs, targets)`` batches on the model's device.

Every data-driven method draws its batches from a :class:`BatchStream` wrapped around what the caller
passed as ``data`` (a list of batches, a ``DataLoader``, any re-iterable). The stream starts from the
beginning for every :func:`prunekit.prune` call, so the same data and seed give the same masks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

from ..errors import ConfigError, DataError
from . import inputs as inp

Batch = tuple[inp.Inputs, Tensor]


class BatchStream:
    """Batches from ``data``, moved to ``device``; restarts ``data`` when it runs out.

    Inputs may be a tensor, a tuple or a mapping of tensors (:mod:`prunekit.core.inputs`). Floating-point
    input tensors are cast to ``dtype`` (the model's parameter dtype) so that a float64 model can be
    scored with float32 data; integer ones (token ids, attention masks) keep their dtype.
    """

    def __init__(self, data: Iterable, device: torch.device, dtype: torch.dtype | None = None):
        if isinstance(data, (Tensor, str, bytes)) or not isinstance(data, Iterable):
            raise ConfigError(
                f"data must be an iterable of (inputs, targets) batches (a list or a DataLoader), got {type(data).__name__}"
            )
        if isinstance(data, tuple) and len(data) == 2 and inp.is_inputs(data[0]) and isinstance(data[1], Tensor):
            data = [data]  # a single (inputs, targets) pair
        self._data = data
        self._iter: Iterator | None = None
        self._pending: list[Batch] = []
        self.device = device
        self.dtype = dtype
        self.drawn = 0

    def _convert(self, batch: object) -> Batch:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise DataError(f"each batch must be an (inputs, targets) pair, got {type(batch).__name__}")
        x, y = batch[0], batch[1]
        if not inp.is_inputs(x) or not isinstance(y, Tensor):
            raise DataError(
                "each batch must be (inputs, targets): inputs a tensor, a tuple or a dict of tensors, targets a tensor; "
                f"got ({type(x).__name__}, {type(y).__name__})"
            )
        n = inp.batch_size(x)
        if y.dim() == 0 or n != y.shape[0]:
            raise DataError(f"batch inputs and targets disagree in size: {inp.describe(x)} vs targets {tuple(y.shape)}")
        dtype = self.dtype

        def move(t: Tensor) -> Tensor:
            t = t.to(self.device, non_blocking=True)
            return t.to(dtype) if dtype is not None and t.is_floating_point() else t

        return inp.map_tensors(x, move), y.to(self.device, non_blocking=True)

    @property
    def source(self) -> Iterable:
        """The iterable the stream draws from (as the caller passed it)."""
        return self._data

    @property
    def length(self) -> int | None:
        """Number of batches in one pass over ``data``, if it has a length."""
        try:
            return len(self._data)  # type: ignore[arg-type]
        except TypeError:
            return None

    def next(self) -> Batch:
        """The next batch (restarting ``data`` from its beginning when it is exhausted)."""
        if self._pending:
            return self._pending.pop(0)
        if self._iter is None:
            self._iter = iter(self._data)
        try:
            batch = next(self._iter)
        except StopIteration:
            if self.drawn == 0:
                raise DataError("data yielded no batches") from None
            self._iter = iter(self._data)
            try:
                batch = next(self._iter)
            except StopIteration:
                raise DataError(
                    f"data ran out after {self.drawn} batches and cannot be restarted; "
                    "pass a re-iterable (a list of batches or a DataLoader), not a one-shot iterator"
                ) from None
        self.drawn += 1
        return self._convert(batch)

    def take(self, n: int) -> list[Batch]:
        """The next ``n`` batches."""
        return [self.next() for _ in range(n)]

    def peek(self) -> Batch:
        """The next batch, without consuming it."""
        if not self._pending:
            self._pending.append(self.next())
        return self._pending[0]


def class_balanced(stream: BatchStream, samples_per_class: int, num_classes: int, max_batches: int = 10_000) -> Batch:
    """Collect ``samples_per_class`` samples of each class from the stream (GraSP's sampling).

    Batches are drawn until every class is complete, the stream wraps around once, or
    ``max_batches`` were read; classes with too few samples keep what was found.

    Returns:
        ``(inputs, targets)`` ordered by class (every sample of class 0, then of class 1, ...), each
        class's samples in the order they were met: the order of the official GraSP code
        (``GraSP_fetch_data``), which matters when the samples are scored in chunks through BN in
        train mode.
    """
    if samples_per_class < 1:
        raise ConfigError(f"samples_per_class must be >= 1, got {samples_per_class}")
    counts = torch.zeros(num_classes, dtype=torch.long)
    xs, ys = [], []
    limit = max_batches if stream.length is None else min(max_batches, stream.length)
    for _ in range(limit):
        x, y = stream.next()
        labels = y.detach().long().cpu()
        if labels.dim() != 1 or (labels.numel() and (labels.min() < 0 or labels.max() >= num_classes)):
            raise DataError(
                f"class-balanced sampling needs one integer class label per sample in [0, {num_classes}), got targets of shape "
                f"{tuple(y.shape)} such as {labels.flatten()[:8].tolist()}; for other targets (tokens, regression) pass "
                "samples_per_class=None: the method then scores num_batches plain batches"
            )
        take = []
        for i, c in enumerate(labels.tolist()):
            if counts[c] < samples_per_class:
                counts[c] += 1
                take.append(i)
        if take:
            idx = torch.tensor(take, device=y.device)
            xs.append(inp.select(x, idx))
            ys.append(y.index_select(0, idx))
        if bool((counts >= samples_per_class).all()):
            break
    if not xs:
        raise DataError("class-balanced sampling found no samples")
    x, y = inp.concat(xs), torch.cat(ys)
    order = torch.sort(y.long(), stable=True).indices  # by class, met order within a class
    return inp.select(x, order), y.index_select(0, order)

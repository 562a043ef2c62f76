"""What a score function receives: the model (read-only), its prunable names, data, loss, RNG.

Score functions never touch the caller's model: they work on copies made by :meth:`ScoringContext.copy`.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import inputs as inp
from ..core.batches import Batch, BatchStream
from ..core.outputs import OutputFn, logits_of
from ..core.parametrized import weight_values, without_masks
from ..distributed import mean_across_ranks_
from ..errors import ConfigError, DataError, PrunekitError, PrunekitWarning, ScoreError

LossFn = Callable[[Tensor, Tensor], Tensor]


def default_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of logits ``(B, C, ...)`` against class indices ``(B, ...)``.

    Raises:
        DataError: targets that are not whole class indices (floats with fractions; pass loss_fn=
            for another kind of target).
    """
    if targets.is_floating_point() and not bool((targets == targets.round()).all()):
        raise DataError(
            f"the default loss is cross-entropy on class indices, got float targets such as {targets.flatten()[:4].tolist()}; "
            "pass loss_fn= for other targets"
        )
    return F.cross_entropy(logits, targets.long())


def nll_on_logits(logits: Tensor, targets: Tensor) -> Tensor:
    """``F.nll_loss`` applied to raw logits, i.e. ``-mean(z_y)``: the pruning loss of the official
    FORCE / Iter-SNIP code (inherited from a code base whose models returned log-probabilities)."""
    return F.nll_loss(logits, targets.long())


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


LOW_PRECISION = (torch.float16, torch.bfloat16)


def scoring_dtype(model: nn.Module) -> torch.dtype:
    """The dtype scores are computed in: the model's, but float32 for a float16/bfloat16 model, whose
    gradients and Hessian products underflow (GraSP's scores of a float16 LeNet are mostly exact zeros)."""
    dtype = model_dtype(model)
    return torch.float32 if dtype in LOW_PRECISION else dtype


def second_order_attention() -> contextlib.AbstractContextManager[None]:
    """Scaled-dot-product attention through its math kernel, the one with a double backward (the
    fused CPU/GPU kernels have none): for methods that differentiate gradients (GraSP, ProsPr)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


class ScoringContext:
    """Everything a score function may use.

    Attributes:
        model: the caller's model; read it, never modify it (use :meth:`copy`).
        names: prunable parameter names, in ``named_parameters()`` order.
        stream: the scoring batches (``None`` for data-free calls).
        loss_fn: ``loss_fn(logits, targets) -> mean loss``.
        output_fn: ``output_fn(outputs) -> logits`` (:func:`prunekit.core.outputs.logits_of` by default).
        generator: a CPU generator seeded from the call's seed (for random scores and re-inits,
            drawn on the CPU so that a seed gives the same masks on every device).
        input_shape: shape of one input sample, when the inputs are one tensor and it is known.
        example: one input sample in the model's input structure (a tensor, tuple or mapping with
            batch dimension 1, on the model's device), from ``example_inputs=`` or the first batch;
            what data-free methods build their input from.
        cache: per-call scratch space for iterative methods (e.g. a prepared copy).
    """

    def __init__(
        self,
        model: nn.Module,
        names: list[str],
        stream: BatchStream | None,
        loss_fn: LossFn,
        seed: int,
        input_shape: tuple[int, ...] | None,
        method: str,
        output_fn: OutputFn = logits_of,
        example: Any = None,
    ):
        self.model = model
        self.names = names
        self.stream = stream
        self.loss_fn = loss_fn
        self.output_fn = output_fn
        self.generator = torch.Generator().manual_seed(seed)
        self.input_shape = input_shape
        self.example = example
        self.method = method
        self.device = model_device(model)
        self.cache: dict[str, Any] = {}

    @property
    def data(self) -> BatchStream:
        if self.stream is None:
            raise ConfigError(f"method {self.method!r} needs data=: an iterable of (inputs, targets) batches")
        return self.stream

    def copy(self, mode: str, dtype: torch.dtype | None = None) -> nn.Module:
        """A private deep copy of the model in ``mode`` ("train" or "eval"), gradients cleared.

        Parameters keep the caller's ``requires_grad`` flags; every prunable weight requires grad.
        """
        net = without_masks(copy.deepcopy(self.model))  # a mask applied in the model: plain names, zeros kept
        dtype = dtype or (torch.float32 if model_dtype(self.model) in LOW_PRECISION else None)
        if dtype is not None:
            net = net.to(dtype)
        net.train(mode == "train")
        for name, p in net.named_parameters():
            p.grad = None
            if name in self.names:
                p.requires_grad_(True)
        return net

    def prunable(self, net: nn.Module) -> dict[str, nn.Parameter]:
        """The prunable parameters of a copy, by name."""
        params = dict(net.named_parameters())
        return {n: params[n] for n in self.names}

    def original(self) -> dict[str, Tensor]:
        """Detached views of the caller's prunable weights (read-only)."""
        return weight_values(self.model, self.names)

    def logits(self, outputs: Any) -> Tensor:
        """The logits in a model output (the one output contract of every method)."""
        return self.output_fn(outputs)

    def loss(self, net: nn.Module, batch: Batch, loss_fn: LossFn | None = None) -> Tensor:
        """``loss_fn(logits, targets)`` of ``net`` on ``batch`` (the call's ``loss_fn`` by default)."""
        x, y = batch
        outputs = inp.call(net, x)
        logits = self.logits(outputs)
        try:
            return (loss_fn or self.loss_fn)(logits, y)
        except (RuntimeError, IndexError, ValueError) as exc:
            if isinstance(exc, PrunekitError) or isinstance(outputs, Tensor) or self.output_fn is not logits_of:
                raise
            # the default output contract took one part of a structured output: say which, and the way out
            raise ScoreError(
                f"the loss failed on the logits the default output_fn took from the model's {type(outputs).__name__} output "
                f"(shape {tuple(logits.shape)}, targets {tuple(y.shape)}): {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; "
                "if the logits are another part of the output, pass output_fn= (e.g. output_fn=lambda out: out[1])"
            ) from exc

    def mean_gradients(
        self, net: nn.Module, params: list[Tensor], batches: list[Batch], loss_fn: LossFn | None = None
    ) -> list[Tensor]:
        """Gradients of the loss w.r.t. ``params``, averaged over ``batches``."""
        total = [torch.zeros_like(p) for p in params]
        unused = set(range(len(params)))
        for batch in batches:
            grads = torch.autograd.grad(self.loss(net, batch, loss_fn), params, allow_unused=True)
            for i, (t, g) in enumerate(zip(total, grads)):
                if g is not None:
                    t.add_(g, alpha=1.0 / len(batches))
                    unused.discard(i)
        self.warn_unused([self.names[i] for i in sorted(unused)] if len(params) == len(self.names) else [])
        mean_across_ranks_(total)  # under torch.distributed: the mean over every rank's batches
        return total

    def warn_unused(self, names: Sequence[str]) -> None:
        """Warn that prunable parameters do not reach what the method differentiates (scored 0)."""
        if names:
            shown = ", ".join(map(repr, names[:6])) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
            warnings.warn(
                f"{self.method}: {shown} do not affect the logits the scores are computed from, so they score 0 "
                "and are pruned first; if the model returns several outputs, pass output_fn= to select the logits",
                PrunekitWarning,
                stacklevel=4,
            )

    def xavier_normal_(self, weight: Tensor) -> None:
        """Re-initialise ``weight`` in place with Xavier-normal values drawn from :attr:`generator`."""
        fresh = torch.empty(weight.shape, dtype=torch.float32)
        nn.init.xavier_normal_(fresh, generator=self.generator)
        with torch.no_grad():
            weight.copy_(fresh)


def apply_masks_(params: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None) -> None:
    """Multiply parameters by masks in place (no-op when ``masks`` is None)."""
    if masks is None:
        return
    with torch.no_grad():
        for name, p in params.items():
            p.mul_(masks[name].to(device=p.device, dtype=p.dtype))

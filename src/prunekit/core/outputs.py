"""What a model's forward returns, and where prunekit finds the logits in it.

Every scoring method (and the effective-density report) reads a model's output through one function,
``output_fn(outputs) -> logits``; the loss is always ``loss_fn(logits, targets)``. The default rule,
:func:`logits_of`, covers the usual cases:

* a tensor is the logits;
* a mapping (a ``dict``, a Hugging Face ``ModelOutput``) gives its ``"logits"`` entry;
* an object with a ``logits`` attribute gives that attribute;
* a tuple or list gives its first element (Hugging Face models with ``return_dict=False``, models
  that return ``(logits, aux)``).

A model that returns its logits elsewhere (``(aux, logits)``, a custom key) needs
``output_fn=lambda out: out[1]`` (or similar) passed to :func:`prunekit.prune`: the same callable is
then used by every method, so SynFlow's path sum, GraSP's temperature and every loss see the same
tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from ..errors import ScoreError, UserCodeError

OutputFn = Callable[[Any], Tensor]


def logits_of(outputs: Any) -> Tensor:
    """The logits in a model's output, by the rule in this module's docstring.

    Raises:
        ScoreError: no tensor could be found (the message says what was returned and how to pass
            ``output_fn=``).
    """
    found: Any = outputs
    if isinstance(found, Tensor):
        return found
    if isinstance(found, Mapping):
        if "logits" not in found:
            raise ScoreError(
                f"the model returned a mapping with keys {sorted(map(str, found))} and no 'logits'; "
                "pass output_fn= (e.g. output_fn=lambda out: out['scores']) to say where the logits are"
            )
        found = found["logits"]
    elif hasattr(found, "logits"):
        found = found.logits
    elif isinstance(found, (tuple, list)) and found:
        found = found[0]
    if not isinstance(found, Tensor):
        raise ScoreError(
            f"cannot find the logits in the model's output of type {type(outputs).__name__}; "
            "pass output_fn= (a callable returning the logits tensor from the output)"
        )
    return found


def checked_output_fn(output_fn: OutputFn | None) -> OutputFn:
    """``output_fn`` wrapped so that a non-tensor result is one clear error (the default rule when None)."""
    if output_fn is None:
        return logits_of

    def wrapped(outputs: Any) -> Tensor:
        try:
            out = output_fn(outputs)
        except Exception as exc:
            raise UserCodeError(f"your output_fn raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(out, Tensor):
            raise ScoreError(f"output_fn must return the logits tensor, got {type(out).__name__}")
        return out

    wrapped.__name__ = getattr(output_fn, "__name__", type(output_fn).__name__)
    return wrapped


def checked_loss_fn(loss_fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """The caller's ``loss_fn``, an exception inside it reported as its own (:class:`UserCodeError`)."""

    def wrapped(logits: Tensor, targets: Tensor) -> Tensor:
        try:
            return loss_fn(logits, targets)
        except Exception as exc:
            raise UserCodeError(f"your loss_fn raised {type(exc).__name__}: {exc}") from exc

    wrapped.__name__ = getattr(loss_fn, "__name__", type(loss_fn).__name__)
    return wrapped

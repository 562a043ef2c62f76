"""prunekit in other training loops: a Lightning callback and a Hugging Face ``TrainerCallback``.

Both take masks (from :func:`prunekit.prune`, a mask file, or ``Masks.from_torch_prune``) or prune at
the start of training (``method=``, ``sparsity=``, ``data=``), apply them as parametrizations
(:meth:`prunekit.Masks.apply`: pruned weights stay exactly zero whatever the optimizer does), log the
sparsity the model really has, and at the end of training turn the weights back into plain
parameters (``bake=True``), so that the saved model loads anywhere. Lightning and transformers are
imported only when the callback is built; prunekit does not depend on them.

    trainer = lightning.Trainer(callbacks=[prunekit.integrations.lightning_callback(masks)])
    trainer = transformers.Trainer(..., callbacks=[prunekit.integrations.huggingface_callback(masks)])
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .core.masks import Masks
from .core.parametrized import owner
from .errors import ConfigError


class _Pruning:
    """What both callbacks do, whatever the framework: masks in, applied, measured, baked."""

    def __init__(
        self,
        masks: Masks | None,
        method: str | None,
        sparsity: float | None,
        data: Iterable | None,
        submodule: str | None,
        bake: bool,
        options: dict[str, Any],
    ):
        if (masks is None) == (method is None):
            raise ConfigError("give either masks= (prunekit.Masks) or method= and sparsity= to prune when training starts")
        if masks is not None and not isinstance(masks, Masks):
            raise ConfigError(f"masks must be prunekit.Masks, got {type(masks).__name__}")
        if method is not None and sparsity is None:
            raise ConfigError(f"method={method!r} needs sparsity=")
        self.masks = masks
        self.method = method
        self.sparsity = sparsity
        self.data = data
        self.submodule = submodule
        self.bake = bake
        self.options = options

    def target(self, model: nn.Module) -> nn.Module:
        return model.get_submodule(self.submodule) if self.submodule else model

    def start(self, model: nn.Module) -> Masks:
        target = self.target(model)
        if self.masks is None:
            from .core.pruning import prune

            assert self.method is not None
            self.masks = prune(target, self.method, self.sparsity, data=self.data, **self.options)
        self.masks.apply(target)
        return self.masks

    def measured_sparsity(self, model: nn.Module) -> float:
        """The fraction of the masked weights that are exactly zero, as the forward pass sees them."""
        assert self.masks is not None
        target = self.target(model)
        zeros = total = 0
        with torch.no_grad():
            for name in self.masks:
                w = getattr(*owner(target, name))
                zeros += int((w == 0).sum())
                total += w.numel()
        return zeros / total

    def end(self, model: nn.Module) -> None:
        if self.bake and self.masks is not None:
            self.masks.remove(self.target(model))


def _lightning_callback_class() -> Any:
    try:
        from lightning.pytorch import Callback

        return Callback
    except ImportError:
        pass
    try:  # the standalone package
        import pytorch_lightning

        return pytorch_lightning.Callback
    except ImportError:
        raise ConfigError("the Lightning callback needs Lightning: pip install 'prunekit[lightning]' (or lightning)") from None


def lightning_callback(
    masks: Masks | None = None,
    *,
    method: str | None = None,
    sparsity: float | None = None,
    data: Iterable | None = None,
    submodule: str | None = None,
    bake: bool = True,
    **options: Any,
) -> Any:
    """A ``lightning.pytorch.Callback`` that prunes (or applies ``masks``) when fit starts, keeps
    pruned weights at zero, logs ``sparsity`` every epoch and bakes the masks in when fit ends.

    Args:
        masks: the masks to apply, named as the LightningModule's parameters (or ``submodule``'s).
        method, sparsity, data, **options: instead, prune with :func:`prunekit.prune` at fit start.
        submodule: the attribute of the LightningModule holding the network (e.g. ``"model"``).
        bake: at fit end, make the weights plain parameters again (pruned entries 0).
    """
    base: Any = _lightning_callback_class()
    core = _Pruning(masks, method, sparsity, data, submodule, bake, options)

    class PrunekitLightningCallback(base):
        """Masks applied at fit start, sparsity logged each epoch, masks baked in at fit end."""

        pruning = core

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            core.start(pl_module)

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            pl_module.log("sparsity", core.measured_sparsity(pl_module))

        def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
            core.end(pl_module)

    return PrunekitLightningCallback()


def huggingface_callback(
    masks: Masks | None = None,
    *,
    method: str | None = None,
    sparsity: float | None = None,
    data: Iterable | None = None,
    submodule: str | None = None,
    bake: bool = True,
    **options: Any,
) -> Any:
    """A ``transformers.TrainerCallback`` that prunes (or applies ``masks``) when training begins,
    keeps pruned weights at zero, adds ``sparsity`` to every log and bakes the masks in at the end.

    The optimizer the Trainer built before training begins keeps working: a parametrization keeps
    the weight's Parameter object (now ``parametrizations.weight.original``). Arguments as
    :func:`lightning_callback`; ``data`` batches are ``(inputs, labels)`` with inputs a dict.
    """
    try:
        import transformers
    except ImportError:
        raise ConfigError("the Hugging Face callback needs transformers: pip install 'prunekit[huggingface]' (or transformers)") from None
    base: Any = transformers.TrainerCallback
    core = _Pruning(masks, method, sparsity, data, submodule, bake, options)

    class PrunekitTrainerCallback(base):
        """Masks applied when training begins, sparsity in every log, masks baked in at the end."""

        pruning = core

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            core.start(model)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, model: Any = None, **kwargs: Any) -> None:
            if logs is not None and model is not None and core.masks is not None:
                logs["sparsity"] = core.measured_sparsity(model)

        def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            core.end(model)

    return PrunekitTrainerCallback()

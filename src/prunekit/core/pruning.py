"""``prune`` and ``score``: the pipeline score -> allocate -> top-k (-> schedule) -> Masks."""

from __future__ import annotations

import math
import platform
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .. import __version__
from ..console import ProgressLines
from ..distributed import check_agreement, world_size
from ..errors import ConfigError, LayerCollapseError, PrunekitError, PrunekitWarning, ScoreError
from ..methods import Method, get_method
from ..methods.context import LossFn, ScoringContext, default_loss, model_device, scoring_dtype
from ..options import as_dict
from . import inputs as inp
from .allocation import Ranker, Selection, check_density, density_schedule, kept_count
from .batches import BatchStream
from .masks import Masks
from .outputs import OutputFn, checked_loss_fn, checked_output_fn
from .prunable import prunable_parameters


def resolve_density(sparsity: float | None, density: float | None) -> float:
    """The kept fraction from exactly one of ``sparsity`` (in [0, 1)) or ``density`` (in (0, 1])."""
    if (sparsity is None) == (density is None):
        raise ConfigError("give exactly one of sparsity= (fraction removed, in [0, 1)) or density= (fraction kept, in (0, 1])")
    if sparsity is not None:
        if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not math.isfinite(sparsity):
            raise ConfigError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
        if not 0.0 <= sparsity < 1.0:
            raise ConfigError(f"sparsity must be in [0, 1) (the fraction of weights removed), got {sparsity!r}")
        return 1.0 - float(sparsity)
    return check_density(density)  # type: ignore[arg-type]


MAX_SEED = 2**63 - 1


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed must be an integer in [0, 2**63 - 1], got {seed!r}")
    return seed


def check_keeps_some(total: int, density: float) -> None:
    """Refuse a density that keeps no weight of ``total``."""
    if kept_count(total, density) == 0:
        raise ConfigError(
            f"density {density:.3g} (sparsity {1 - density:.10g}) keeps 0 of the {total:,} prunable weights; "
            f"the lowest density that keeps one is {0.5 / total:.3g}"
        )


def _check_shapes(method: str, scores: Mapping[str, Tensor], params: Mapping[str, nn.Parameter]) -> None:
    for name, p in params.items():
        s = scores.get(name)
        if s is None or tuple(s.shape) != tuple(p.shape):
            got = None if s is None else tuple(s.shape)
            raise ScoreError(f"method {method!r} returned a score of shape {got} for {name!r} (expected {tuple(p.shape)})")


def _check_finite(method: str, scores: Mapping[str, Tensor]) -> None:
    bad = torch.stack([(~torch.isfinite(s)).sum() for s in scores.values()]).tolist()
    if any(bad):
        shown = _shown([f"{n!r} ({b})" for n, b in zip(scores, bad) if b])
        raise ScoreError(
            f"method {method!r} produced NaN/inf scores for {shown}; "
            "check the model and the data for NaN/inf values (and the loss for overflow)"
        )


def _setup(
    model: nn.Module,
    method: str,
    data: Iterable | None,
    seed: int,
    include: str | Sequence[str] | None,
    exclude: str | Sequence[str] | None,
    loss_fn: LossFn | None,
    output_fn: OutputFn | None,
    options: Any,
    values: Mapping[str, Any],
    example_inputs: Any = None,
) -> tuple[Method, Any, ScoringContext, dict[str, nn.Parameter]]:
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    spec = get_method(method)
    if options is None:
        opts = spec.build_options(values)
    elif values:
        raise ConfigError(f"method {method!r}: give options= or option keywords ({', '.join(values)}), not both")
    elif not isinstance(options, spec.options):
        raise ConfigError(f"options= of method {method!r} must be a {spec.options.__name__}, got {type(options).__name__}")
    else:
        opts = options
    seed = _check_seed(seed)
    params = prunable_parameters(model, include, exclude)
    if spec.needs_data and data is None:
        raise ConfigError(f"method {method!r} needs data=: an iterable of (inputs, targets) batches (a DataLoader works)")
    if loss_fn is not None and not callable(loss_fn):
        raise ConfigError(f"loss_fn must be callable(logits, targets) -> loss, got {type(loss_fn).__name__}")
    if output_fn is not None and not callable(output_fn):
        raise ConfigError(f"output_fn must be callable(outputs) -> logits, got {type(output_fn).__name__}")
    if loss_fn is not None and getattr(opts, "official_loss", False):
        raise ConfigError(f"method {method!r}: official_loss=True replaces the loss; do not pass loss_fn= as well")
    device = model_device(model)
    stream = None if data is None else BatchStream(data, device, scoring_dtype(model))
    example = None
    if example_inputs is not None:
        if not inp.is_inputs(example_inputs):
            raise ConfigError(
                f"example_inputs must be a batch of model inputs (a tensor, a tuple or a dict of tensors), got {type(example_inputs).__name__}"
            )
        example = BatchStream([(example_inputs, torch.zeros(inp.batch_size(example_inputs)))], device, scoring_dtype(model)).next()[0]
    elif stream is not None:
        example = stream.peek()[0]
    if example is not None:
        example = inp.select(example, slice(0, 1))
    input_shape = inp.sample_shape(example) if example is not None else None
    if getattr(opts, "input_shape", None):
        input_shape = tuple(opts.input_shape)
    ctx = ScoringContext(
        model, list(params), stream, default_loss if loss_fn is None else checked_loss_fn(loss_fn), seed, input_shape, method,
        checked_output_fn(output_fn), example,
    )
    return spec, opts, ctx, params


def _rng_devices(model: nn.Module) -> list[int]:
    device = model_device(model)
    return [device.index or 0] if device.type == "cuda" else []


def prune(
    model: nn.Module,
    method: str,
    sparsity: float | None = None,
    *,
    density: float | None = None,
    data: Iterable | None = None,
    seed: int = 0,
    allocation: str | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    loss_fn: LossFn | None = None,
    output_fn: OutputFn | None = None,
    progress: bool | None = None,
    callback: Callable[[int, float, dict[str, Tensor]], None] | None = None,
    invert: bool = False,
    example_inputs: Any = None,
    options: Any = None,
    ties: str | None = None,
    collapse: str = "warn",
    **values: Any,
) -> Masks:
    """Compute pruning masks for ``model`` with ``method``; the model is not modified.

    Args:
        model: any ``nn.Module``; scoring runs on its device, on private copies.
        method: a name from :func:`prunekit.list_methods`.
        sparsity: fraction of prunable weights to remove, in ``[0, 1)``.
        density: fraction to keep, in ``(0, 1]`` (instead of ``sparsity``).
        data: iterable of ``(inputs, targets)`` batches (a ``DataLoader`` works); ``inputs`` a
            tensor, a tuple (``model(*inputs)``) or a dict (``model(**inputs)``). Required by
            data-driven methods; SynFlow reads only the structure, shapes and dtypes of one batch.
        example_inputs: one batch of inputs for data-free methods called without ``data`` (SynFlow
            builds its all-ones input from it; integer inputs such as token ids are kept, and the
            all-ones input enters through the embedding layers' weights).
        seed: fixes random scores, re-initialisations and any randomness in the forward pass
            (dropout); the caller's global RNG state is left as it was.
        allocation: ``"global"`` (one ranking, the default of every method but ``random``),
            ``"layerwise"`` (same density in every layer), ``"erk"``, or ``"learned"`` (the per-layer
            counts a method predicts: ``autosparse_layerwise``'s default).
        include: glob patterns over parameter names replacing the default prunable set
            (weights of Conv*d and Linear layers).
        exclude: glob patterns removed from the prunable set.
        loss_fn: ``loss_fn(logits, targets) -> mean loss``; default cross-entropy. Every method
            calls it on the same tensor, ``output_fn(model(inputs))``.
        output_fn: ``output_fn(outputs) -> logits``: where the logits are in what the model returns;
            default :func:`prunekit.core.outputs.logits_of` (a tensor; a mapping's ``"logits"``; a tuple's
            first element). SynFlow sums these logits and GraSP divides them by its temperature.
        progress: show a progress bar for iterative methods (default: when stderr is a terminal).
        callback: called as ``callback(step, density, masks)`` after every step of the schedule
            (once for one-shot methods), e.g. to record how masks evolve.
        invert: keep the *lowest*-scoring weights instead (the score-inversion sanity check of
            Frankle et al., 2021), at every step of an iterative schedule.
        ties: how ties among *zero* scores that straddle the cut are broken: ``"random"`` (default:
            spread over the layers in proportion to their tied weights, at random within a layer,
            seeded) or ``"index"`` (parameter order, the default under ``official=True``); see
            :data:`prunekit.core.allocation.TIE_RULES`.
        collapse: ``"warn"`` (default) or ``"error"``: what a mask that leaves no path from input to
            output (layer collapse) does; either way it is named, and an empty layer is always said.
        options: the method's options as its dataclass (``get_method(name).options``), already
            built (e.g. by ``get_method(name).build_options(...)``); or give them as keywords:
        **values: method options (see ``prunekit methods`` or ``get_method(name).options``).
            ``official=True`` reproduces the method's official code where it differs from the
            paper (count and tie rule, loss, optimiser settings: see the method's docstring).

    Returns:
        :class:`Masks` holding exactly ``round(density * N)`` kept weights (the official code's
        count with ``count_rule="official"``), with metadata (method, resolved options, seed,
        allocation, input shape, versions, scoring time, and ``tie_steps``: the steps whose mask
        was decided by ties among zero scores).

    Raises:
        ConfigError: unknown method or option, bad sparsity/seed/allocation, missing data, no
            prunable parameter.
        ScoreError: the method produced NaN or infinite scores.
        LayerCollapseError: with ``collapse="error"``, a mask that disconnects the network.

    Warns:
        PrunekitWarning: at the first step whose mask was decided by ties among zero scores rather
            than by the scores (and once more at the end if later steps were too); prunable tensors
            that are exactly zero when scoring (a zero-initialised head) and zero BatchNorm scales;
            layers the mask empties; a mask that leaves no path from input to output.
    """
    keep = resolve_density(sparsity, density)
    spec, opts, ctx, params = _setup(model, method, data, seed, include, exclude, loss_fn, output_fn, options, values, example_inputs)
    check_keeps_some(sum(p.numel() for p in params.values()), keep)
    allocation = spec.check_allocation(allocation or spec.allocation)
    rule = spec.official_rule if getattr(opts, "count_rule", "exact") == "official" else None
    if collapse not in ("warn", "error"):
        raise ConfigError(f"collapse must be 'warn' or 'error', got {collapse!r}")
    ties = ties or ("index" if getattr(opts, "official", False) else "random")
    zero = _warn_zero_tensors(method, model, params)
    reserve = zero if ties == "random" and len(zero) < len(params) else []  # index ties: prunekit's rule before 0.3
    counts = None
    if allocation == "learned":
        assert spec.layer_counts is not None
        layer_counts = spec.layer_counts

        def counts(d: float) -> Sequence[int]:
            return layer_counts(ctx, opts, d)

    ranker = Ranker({n: p.shape for n, p in params.items()}, allocation, rule, nested=spec.monotone, ties=ties, seed=seed,
                    reserve=reserve, counts=counts)
    steps = density_schedule(keep, opts.num_steps, opts.schedule) if spec.iterative else [keep]
    start = time.perf_counter()
    masks: dict[str, Tensor] | None = None
    tie_steps: list[dict[str, Any]] = []
    with torch.random.fork_rng(devices=_rng_devices(model)):
        torch.manual_seed(seed)
        tty = _stderr_is_tty()
        show = spec.iterative and (tty if progress is None else progress)
        bar = tqdm(steps, desc=method, unit="step", leave=False, disable=not show)
        lines = ProgressLines(f"{method} scoring", len(steps), "steps") if progress is None and not tty else None
        for step, step_density in enumerate(bar, start=1):
            if lines is not None:
                lines.update(step - 1)
            scores = _run_score(spec, ctx, opts, masks)
            _check_shapes(method, scores, params)
            if invert:
                scores = {n: -s for n, s in scores.items()}
            try:
                selection = ranker.select(scores, step_density)
            except ScoreError as exc:
                raise ScoreError(f"method {method!r} produced {exc}") from None
            masks = selection.masks
            if selection.decided_by_ties:
                tie_steps.append(_tie_record(step, step_density, selection))
                if len(tie_steps) == 1:
                    _warn_ties(method, step, len(steps), step_density, selection, rule)
            if callback is not None:
                callback(step, step_density, {n: m.detach().cpu().clone() for n, m in masks.items()})
        bar.close()
    if len(tie_steps) > 1:
        warnings.warn(
            f"{method}: {len(tie_steps)} steps in all were decided by ties among zero scores "
            f"(steps {', '.join(str(t['step']) for t in tie_steps)}); see masks.meta['tie_steps']",
            PrunekitWarning,
            stacklevel=2,
        )
    if model_device(model).type == "cuda":
        torch.cuda.synchronize()
    assert masks is not None
    check_agreement(masks, method)  # under torch.distributed: every rank must hold the same mask
    empty, cut = _check_collapse(method, model, masks, ctx, collapse)
    meta = {
        "method": method,
        "sparsity": 1.0 - keep,
        "density": keep,
        "seed": seed,
        "allocation": allocation,
        "inverted": invert,
        "options": as_dict(opts),
        "include": include if include is None or isinstance(include, str) else list(include),
        "exclude": exclude if exclude is None or isinstance(exclude, str) else list(exclude),
        "loss": _loss_name(loss_fn, opts),
        "output_fn": None if output_fn is None else getattr(output_fn, "__name__", type(output_fn).__name__),
        "tie_steps": tie_steps,
        "ties": ties,
        "reserved": reserve,
        "empty_layers": empty,
        "disconnected": cut,
        "world_size": world_size(),
        "input_shape": None if ctx.input_shape is None else list(ctx.input_shape),
        "model": type(model).__name__,
        "scoring_seconds": time.perf_counter() - start,
        "device": str(model_device(model)),
        "prunekit_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return Masks(masks, meta)


def score(
    model: nn.Module,
    method: str,
    *,
    data: Iterable | None = None,
    seed: int = 0,
    masks: Mapping[str, Tensor] | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    loss_fn: LossFn | None = None,
    output_fn: OutputFn | None = None,
    example_inputs: Any = None,
    options: Any = None,
    **values: Any,
) -> dict[str, Tensor]:
    """Saliency scores of ``method`` for every prunable weight (higher = more important).

    For one-shot methods these are the scores :func:`prune` ranks. For iterative methods this is one
    scoring step at ``masks`` (all weights kept by default); :func:`prune` runs the whole schedule.
    The model is not modified.

    Returns:
        ``{param_name: float tensor}`` on the model's device.
    """
    spec, opts, ctx, params = _setup(model, method, data, seed, include, exclude, loss_fn, output_fn, options, values, example_inputs)
    if masks is not None:
        masks = Masks(masks)
        for name in params:
            if name not in masks:
                raise ConfigError(f"masks= has no entry for prunable parameter {name!r}")
    with torch.random.fork_rng(devices=_rng_devices(model)):
        torch.manual_seed(seed)
        scores = _run_score(spec, ctx, opts, masks)
    _check_shapes(method, scores, params)
    _check_finite(method, scores)
    return {n: s.detach() for n, s in scores.items()}


def _shown(items: list[str], limit: int = 6) -> str:
    """At most ``limit`` items of a list for a message, with how many more there are."""
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more tensors" if len(items) > limit else "")


def _run_score(spec: Method, ctx: ScoringContext, opts: Any, masks: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    """The method's scores; a model that cannot run on the data is one ScoreError naming the shapes."""
    try:
        return spec.score(ctx, opts, masks)
    except (RuntimeError, IndexError, TypeError) as exc:
        if isinstance(exc, (torch.cuda.OutOfMemoryError, PrunekitError)):
            raise  # out of memory, or already said at its origin (the caller's loss_fn / output_fn)
        shape = None if ctx.stream is None else inp.describe(ctx.stream.peek()[0])
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ScoreError(
            f"method {spec.name!r}: the model could not run on the scoring data (inputs {shape}): {first}; "
            "check that the data has the input shape the model expects"
        ) from exc


def _warn_zero_tensors(method: str, model: nn.Module, params: Mapping[str, Tensor]) -> list[str]:
    """Name the prunable tensors that are exactly zero (and zero BatchNorm scales): gradient scores
    vanish through them, and no score can rank a zero tensor's own weights; those are returned."""
    zero = [n for n, p in params.items() if not bool(p.detach().any())]
    names = list(params)
    gammas = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None
              and not bool(m.weight.detach().any())]
    if not zero and not gammas:
        return zero
    said = []
    if zero:
        head = " (the last prunable layer: a zero-initialised classifier head?)" if names and names[-1] in zero else ""
        said.append(f"prunable tensors exactly zero when scoring: {_shown(zero)}{head}")
    if gammas:
        said.append(f"BatchNorm scales exactly zero: {_shown(gammas)} (zero-initialised last BatchNorm of residual blocks?)")
    warnings.warn(
        f"{method}: " + "; ".join(said) + ". Gradient-based scores vanish through them (and, for a zero head, in every layer "
        "before it): ties among zero scores are then spread over the layers at random (ties='random'), not decided by "
        "the scores, and a zero tensor, which no score can rank, keeps the mask's density at random instead of being "
        "emptied by the global ranking. Score before zero-initialising, or with the initialisation the model trains from.",
        PrunekitWarning,
        stacklevel=3,
    )
    return zero


def _check_collapse(method: str, model: nn.Module, masks: Mapping[str, Tensor], ctx: ScoringContext, collapse: str) -> tuple[list[str], bool | None]:
    """Layers the mask empties (always said), and whether it leaves no input-to-output path (said
    loudly, or an error with ``collapse="error"``; None where the input is unknown)."""
    empty = [n for n, m in masks.items() if not bool(m.any())]
    cut: bool | None = None
    if ctx.example is not None or ctx.input_shape is not None:
        from .connectivity import effective_masks

        try:
            alive = effective_masks(model, masks, ctx.input_shape, example_inputs=ctx.example)
            cut = not any(bool(m.any()) for m in alive.values())
            starved = [n for n, m in alive.items() if not bool(m.any()) and n not in empty]
        except Exception:  # a forward that cannot take the all-ones probe: connectivity unknown
            cut, starved = None, []
    else:
        starved = []
    if cut:
        first = next((n for n in masks if n in empty), None) or next(iter(starved), None)
        message = (f"{method}: layer collapse: the mask leaves no path from input to output: the network is disconnected"
                   f"{f' (first cut at {first})' if first else ''}; it cannot learn. Empty layers: {_shown(empty) or 'none'}")
        if collapse == "error":
            raise LayerCollapseError(message + ". (collapse='error' asked for this error)")
        warnings.warn(message, PrunekitWarning, stacklevel=3)
    elif empty:
        warnings.warn(f"{method}: layers left without any weight: {_shown(empty)}", PrunekitWarning, stacklevel=3)
    return empty, cut


def _loss_name(loss_fn: LossFn | None, opts: Any) -> str:
    if getattr(opts, "official_loss", False):
        return "nll_on_logits"
    return "cross_entropy" if loss_fn is None else getattr(loss_fn, "__name__", type(loss_fn).__name__)


def _tie_record(step: int, density: float, selection: Selection) -> dict[str, Any]:
    return {
        "step": step, "density": density, "target": selection.target, "kept": selection.kept,
        "tie_chosen": selection.tie_chosen,
    }


def _warn_ties(method: str, step: int, total: int, density: float, selection: Selection, rule: str | None) -> None:
    how = (
        "parameter order (the earliest parameters, lowest indices first)"
        if rule is None
        else f"the official rule, which keeps all ties or none ({selection.kept} kept of {selection.target} asked)"
    )
    where = f"step {step} of {total}" if total > 1 else "the mask"
    warnings.warn(
        f"{method}, {where} (density {density:.4g}): only {selection.target - selection.tie_chosen} of the "
        f"{selection.target} weights to keep have a nonzero score; the other {selection.tie_chosen} were chosen among "
        f"zero-scored weights by {how}, not by their scores. The mask is decided by ties (vanished gradients?): "
        "more scoring data, fewer steps or another method may help; masks.meta['tie_steps'] records it.",
        PrunekitWarning,
        stacklevel=3,
    )


def _stderr_is_tty() -> bool:
    import sys

    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()

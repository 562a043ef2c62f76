"""AutoSparse: prune at initialisation with a score network taught by iterative rewind pruning
(Liu, Cheng et al., arXiv 2408.14757; official code ChengYaofeng/AutoSparse).

The score of a weight is the network's prediction ``f((theta0, g0))`` of how long it would survive
IRP, from its initial value ``theta0`` and ``g0``, the sum of the batch-mean-loss gradients over one
pass of the training data (BatchNorm in eval mode), as the official code computes its features.
``scorer`` names a scorer shipped with prunekit (``prunekit autosparse list``) or a scorer file
taught with ``prunekit autosparse teach``. Inference runs in chunks on the model's device, so a 25 M-weight
model fits.

Deviations from the official code, by choice: the teacher's held-out split is a random set of
*weights* (the official "test" split is the first 10 % of the training tensor, a leak used for
checkpoint selection), its ``pct`` schedule is ``d^(k/E)`` (the official ``sparse ** 1/E`` parses
as ``sparse / E``), and rewinding follows the configuration (officially always on, through a
positional-argument slip). See :mod:`prunekit.autosparse`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from ..options import option
from .context import ScoringContext
from .registry import Method, register_method


@dataclass(frozen=True)
class AutoSparseOptions:
    scorer: str = option("lenet300-snip-fmnist", "a shipped scorer's name (prunekit autosparse list) or a scorer file")
    scorer_sha256: str | None = option(None, "the scorer file's checksum, filled in when a run is resolved: a file taught again "
                                       "at the same path is another run; scoring refuses a file that changed since", since="0.3")
    gradient_batches: int | None = option(None, "batches of g0, their sum scaled to a full pass (None: one full pass over data, as the official code)", min=1)
    chunk: int | None = option(None, "weights scored per forward pass of the score network (None: 2,048 on the CPU, 65,536 on an accelerator)", min=1)
    precision: str = option("fp32", "the score network's arithmetic: fp32; bf16 (autocast: several times faster where the device "
                            "computes bf16 natively, predictions within 0.5 %, the mask nearly the same); auto (bf16 where native)",
                            choices=("fp32", "bf16", "auto"), since="0.3")


def autosparse_scores(ctx: ScoringContext, opts: AutoSparseOptions, masks: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    from ..autosparse import feature_matrix, full_pass_gradient, load_scorer
    from ..training.precision import native_bf16

    scorer = load_scorer(opts.scorer)
    if opts.scorer_sha256 is not None and scorer.sha256 != opts.scorer_sha256:
        from ..autosparse import ScorerFileError

        raise ScorerFileError(f"the scorer file {opts.scorer!r} changed since this run was resolved (checksum {scorer.sha256} "
                              f"instead of {opts.scorer_sha256}): it is another run; resolve it again")
    import sys

    from ..console import ProgressLines

    quiet = sys.stderr.isatty()  # a terminal has the step bar; a log gets a line every 10 s of work
    batches = ProgressLines("autosparse: g0", opts.gradient_batches or _length(ctx.data.source), "batches")
    g0 = full_pass_gradient(ctx.model, ctx.data.source, ctx.names, num_batches=opts.gradient_batches,
                            loss_fn=ctx.loss_fn, output_fn=ctx.output_fn, progress=None if quiet else batches.update)
    theta0 = ctx.original()
    features = feature_matrix(theta0, g0, ctx.names)
    rows = ProgressLines("autosparse: scoring", len(features), "weights")
    bf16 = opts.precision == "bf16" or (opts.precision == "auto" and native_bf16(ctx.device)[0])
    pred = scorer.predict(features, chunk=opts.chunk, device=ctx.device, progress=None if quiet else rows.update, bf16=bf16)
    out, i = {}, 0
    for name in ctx.names:
        n = theta0[name].numel()
        out[name] = pred[i : i + n].view(theta0[name].shape).to(ctx.device)
        i += n
    return out


def _length(data: object) -> int | None:
    try:
        return len(data)  # type: ignore[arg-type]
    except TypeError:
        return None


def complete_options(opts: AutoSparseOptions) -> AutoSparseOptions:
    """What a run records: a scorer file is read now (one clear error if it is missing or not a
    scorer) and its checksum becomes part of the run; a shipped scorer is its name."""
    from dataclasses import replace

    from ..autosparse import list_scorers, load_scorer

    scorer = load_scorer(opts.scorer)
    if opts.scorer in list_scorers():
        return opts
    return replace(opts, scorer_sha256=scorer.sha256)


register_method(
    Method(
        "autosparse",
        "AutoSparse: a score network taught by iterative rewind pruning scores (theta0, g0), one shot",
        AutoSparseOptions,
        autosparse_scores,
        needs_data=True,
        complete=complete_options,
        reference="Liu, Cheng et al., Learning effective pruning at initialization from iterative pruning, arXiv 2408.14757",
    )
)

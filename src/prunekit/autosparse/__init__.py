"""AutoSparse (Liu, Cheng et al., arXiv 2408.14757): a score network learned from iterative rewind
pruning predicts, from a weight's initial value and initial gradient, how long it would survive;
it then prunes other models at initialisation in one shot.

* teach: an IRP run (``prunekit run --method imp --opt schedule=num --opt prune_first=true --opt scorer=snip ...``,
  or ``prunekit autosparse teach --config FILE``) ->
  :func:`table_from_imp_run` -> :func:`teach` -> :meth:`Scorer.save`;
* prune: ``prunekit.prune(model, "autosparse", sparsity=0.98, data=loader, scorer="lenet300-snip-fmnist")``.

The layer-aware variant (:mod:`.layerwise`, method ``autosparse_layerwise``) learns from one or several
IRP teachers the per-layer densities of their tickets and a within-layer ranking.

Scorers shipped with prunekit are listed by :func:`list_scorers` and addressed by name.
"""

from __future__ import annotations

import functools
from pathlib import Path

from ..errors import ConfigError
from .features import TeachingTable, feature_matrix, full_pass_gradient, survival_targets, table_from_imp_run
from .layerwise import LayerwiseScorer, Teacher, TeachSettings, leave_one_teacher_out, teach_layerwise, teacher_from_imp_run
from .scorer import ARCHS, Scorer, ScorerFileError, build_network, spearman, teach

SHIPPED_DIR = Path(__file__).parent / "scorers"
LAYERWISE_DIR = SHIPPED_DIR / "layerwise"


def list_scorers() -> dict[str, Path]:
    """Scorers of ``autosparse`` shipped with prunekit: ``{name: file}``."""
    return {p.stem: p for p in sorted(SHIPPED_DIR.glob("*.pt"))}


def list_layerwise_scorers() -> dict[str, Path]:
    """Scorers of ``autosparse_layerwise`` shipped with prunekit: ``{name: file}``."""
    return {p.stem: p for p in sorted(LAYERWISE_DIR.glob("*.pt"))}


def _file(name_or_path: str | Path, shipped: dict[str, Path]) -> Path:
    key = str(name_or_path)
    path = shipped.get(key, Path(key))
    if not path.is_file():
        raise ConfigError(f"no scorer {key!r}: not a shipped scorer ({', '.join(shipped) or 'none'}) nor a file")
    return path


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime: int, layerwise: bool) -> Scorer | LayerwiseScorer:
    return LayerwiseScorer.load(path) if layerwise else Scorer.load(path)


def load_scorer(name_or_path: str | Path) -> Scorer:
    """A shipped scorer by name, or a scorer file by path (loaded once per process).

    Raises:
        ConfigError: neither a shipped name nor an existing file (the message lists the shipped ones).
        ScorerFileError: the file is corrupt or not a scorer.
    """
    path = _file(name_or_path, list_scorers())
    scorer = _load(str(path.resolve()), path.stat().st_mtime_ns, False)
    assert isinstance(scorer, Scorer)
    return scorer


def load_layerwise_scorer(name_or_path: str | Path) -> LayerwiseScorer:
    """A shipped layer-aware scorer by name, or its file by path (loaded once per process); errors as
    :func:`load_scorer`."""
    path = _file(name_or_path, list_layerwise_scorers())
    scorer = _load(str(path.resolve()), path.stat().st_mtime_ns, True)
    assert isinstance(scorer, LayerwiseScorer)
    return scorer


__all__ = [
    "ARCHS", "LayerwiseScorer", "Scorer", "ScorerFileError", "TeachSettings", "Teacher", "TeachingTable", "build_network",
    "feature_matrix", "full_pass_gradient", "leave_one_teacher_out", "list_layerwise_scorers", "list_scorers",
    "load_layerwise_scorer", "load_scorer", "spearman", "survival_targets", "table_from_imp_run", "teach", "teach_layerwise",
    "teacher_from_imp_run",
]

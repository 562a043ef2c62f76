"""Per-layer reports of masks: sizes, kept counts, densities, effective densities, tie flags, and the
comparison of two masks by their per-layer allocation.

Two masks of an iterative method run with one weight of difference early on can end up overlapping
only a third; what stays stable, and what decides accuracy, is *how many* weights each layer keeps.
:func:`compare_masks` compares exactly that.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn


@dataclass(frozen=True)
class LayerRow:
    """One line of a mask report."""

    name: str
    shape: tuple[int, ...]
    size: int
    kept: int
    density: float
    effective_kept: int | None = None
    effective_density: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "size": self.size,
            "kept": self.kept,
            "density": self.density,
            "effective_kept": self.effective_kept,
            "effective_density": self.effective_density,
        }


@dataclass(frozen=True)
class MaskReport:
    """Per-layer densities of a mask, with totals; ``str(report)`` is an aligned text table."""

    rows: list[LayerRow]
    collapsed: list[str] = field(default_factory=list)
    note: str | None = None
    tie_steps: list[int] = field(default_factory=list)

    @property
    def decided_by_ties(self) -> bool:
        """Whether some step of the pruning that made these masks was decided by ties among zero
        scores rather than by the scores (the steps are in :attr:`tie_steps`)."""
        return bool(self.tie_steps)

    def _tie_note(self) -> str | None:
        if not self.tie_steps:
            return None
        steps = ", ".join(map(str, self.tie_steps))
        return f"warning: the mask was decided by ties among zero scores, not by the scores, at step(s) {steps}"

    @property
    def size(self) -> int:
        return sum(r.size for r in self.rows)

    @property
    def kept(self) -> int:
        return sum(r.kept for r in self.rows)

    @property
    def density(self) -> float:
        return self.kept / self.size

    @property
    def effective_density(self) -> float | None:
        if any(r.effective_kept is None for r in self.rows):
            return None
        return sum(r.effective_kept for r in self.rows) / self.size  # type: ignore[misc]

    @property
    def empty(self) -> list[str]:
        """Layers left without any weight."""
        return [r.name for r in self.rows if r.kept == 0]

    @property
    def disconnected(self) -> bool | None:
        """Whether no path from input to output is left (None where connectivity is unknown)."""
        eff = self.effective_density
        return None if eff is None else eff == 0.0

    def as_dicts(self) -> list[dict[str, Any]]:
        return [r.as_dict() for r in self.rows]

    def to_markdown(self) -> str:
        """The report as a Markdown table."""
        lines = [
            "| layer | shape | size | kept | density | effective density |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for r in self._display_rows():
            lines.append("| " + " | ".join(r) + " |")
        if self._tie_note():
            lines += ["", f"**{self._tie_note()}**"]
        if self.disconnected:
            lines += ["", "**the mask leaves no path from input to output: the network is disconnected**"]
        return "\n".join(lines)

    def _display_rows(self) -> list[list[str]]:
        def eff(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.4%}"

        out = []
        for r in self.rows:
            flag = "  <- empty" if r.kept == 0 else ("  <- no path" if r.name in self.collapsed else "")
            out.append(
                [r.name, "x".join(map(str, r.shape)), str(r.size), str(r.kept), f"{r.density:.4%}", eff(r.effective_density) + flag]
            )
        out.append(["total", "", str(self.size), str(self.kept), f"{self.density:.4%}", eff(self.effective_density)])
        return out

    def __str__(self) -> str:
        header = ["layer", "shape", "size", "kept", "density", "effective"]
        rows = [header] + self._display_rows()
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        text = "\n".join(
            "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows
        )
        cut = "the mask leaves no path from input to output: the network is disconnected" if self.disconnected else None
        notes = [n for n in (self._tie_note(), cut, self.note) if n]
        return "\n".join([text, *notes])




@dataclass(frozen=True)
class LayerComparison:
    """Two masks of the same model compared layer by layer.

    Attributes:
        names: the layers, in order.
        sizes: weights per layer.
        kept_a, kept_b: weights each mask keeps per layer.
        labels: names of the two masks (for printing).
    """

    names: list[str]
    sizes: list[int]
    kept_a: list[int]
    kept_b: list[int]
    labels: tuple[str, str] = ("a", "b")

    @property
    def agreement(self) -> float:
        """Per-layer density agreement in [0, 1]: the fraction of kept weights that both masks put in
        the same layers, ``sum_l min(k_a, k_b) / max(K_a, K_b)``; 1 when every layer keeps as many
        weights in both, whichever weights they are."""
        total = max(sum(self.kept_a), sum(self.kept_b))
        return 1.0 if total == 0 else sum(min(a, b) for a, b in zip(self.kept_a, self.kept_b)) / total

    @property
    def max_density_gap(self) -> float:
        """The largest absolute difference of one layer's density between the two masks."""
        return max(abs(a - b) / n for a, b, n in zip(self.kept_a, self.kept_b, self.sizes))

    def to_markdown(self) -> str:
        a, b = self.labels
        lines = [f"| layer | size | kept ({a}) | kept ({b}) | density ({a}) | density ({b}) |", "|---|---:|---:|---:|---:|---:|"]
        for name, n, ka, kb in zip(self.names, self.sizes, self.kept_a, self.kept_b):
            lines.append(f"| {name} | {n} | {ka} | {kb} | {ka / n:.4%} | {kb / n:.4%} |")
        lines += ["", f"Per-layer density agreement: {self.agreement:.4f} (largest gap in one layer: {self.max_density_gap:.4%})"]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()


def compare_masks(a: Mapping[str, Tensor], b: Mapping[str, Tensor], labels: tuple[str, str] = ("a", "b")) -> LayerComparison:
    """Compare two masks of the same model by how many weights each layer keeps.

    This, not the overlap of the kept sets, is what to compare between two methods, two modes of
    one method (e.g. ``count_rule="exact"`` vs ``"official"``) or two seeds: iterative masks are
    chaotic in their last steps, their per-layer allocation is not.

    Raises:
        MaskError: the two masks do not cover the same tensors with the same shapes.
    """
    from ..errors import MaskError

    if list(a) != list(b) or any(tuple(a[n].shape) != tuple(b[n].shape) for n in a):
        raise MaskError("compare_masks needs two masks over the same parameters with the same shapes")
    names = list(a)
    return LayerComparison(
        names,
        [a[n].numel() for n in names],
        [int(a[n].sum()) for n in names],
        [int(b[n].sum()) for n in names],
        labels,
    )


def build_report(
    masks: Mapping[str, Tensor], meta: Mapping[str, Any], model: nn.Module | None = None, input_shape: Sequence[int] | None = None,
    example_inputs: Any = None,
) -> MaskReport:
    """The :class:`MaskReport` of ``masks`` (see :meth:`prunekit.Masks.report`)."""
    input_shape = input_shape if input_shape is not None else meta.get("input_shape")
    effective: dict[str, Tensor] | None = None
    note = None
    if model is None:
        note = "effective density needs the model: masks.report(model)"
    elif input_shape is None and example_inputs is None:
        note = "effective density needs the input: masks.report(model, input_shape=(C, H, W)) or example_inputs=one batch of inputs"
    else:
        from .connectivity import effective_masks

        try:
            effective = effective_masks(
                model, masks, None if input_shape is None else tuple(input_shape), example_inputs=example_inputs
            )
        except Exception as exc:  # a model whose forward cannot take an all-ones float input
            note = f"effective density could not be computed for this model ({type(exc).__name__}: {exc})"
    rows = []
    for name, m in masks.items():
        kept = int(m.sum())
        ek = None if effective is None else int(effective[name].sum())
        rows.append(LayerRow(name, tuple(m.shape), m.numel(), kept, kept / m.numel(), ek, None if ek is None else ek / m.numel()))
    collapsed = [r.name for r in rows if r.kept == 0 or r.effective_kept == 0]
    if collapsed:
        from ..errors import PrunekitWarning

        whole = effective is not None and not any(r.effective_kept for r in rows)
        warnings.warn(
            f"layer collapse: {', '.join(collapsed)} keep no weight on an input-to-output path; "
            + ("the network is disconnected: no path from input to output is left" if whole else
               "the network cannot carry signal through them"),
            PrunekitWarning,
            stacklevel=3,
        )
    tie_steps = [int(t["step"]) for t in meta.get("tie_steps", [])]
    return MaskReport(rows, collapsed, note, tie_steps)

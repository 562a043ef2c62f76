"""Registry of pruning methods: each method is a score function plus its option dataclass."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from ..core.allocation import ALLOCATIONS
from ..errors import ConfigError, unknown
from ..options import build, option
from ..registry import Registry

COUNT_RULES = ("exact", "official")


def official_option() -> Any:
    """The ``official`` option every method with an official mode declares."""
    return option(False, "reproduce the official code where it differs from the paper (see the method's docstring)", since="0.2")


def count_rule_option() -> Any:
    """The ``count_rule`` option of methods whose official code counts and breaks ties differently."""
    return option(
        "exact", "exact: keep round(d*N) by index top-k; official: the official code's count and tie rule",
        choices=COUNT_RULES, since="0.2",
    )

# (context, options, current masks or None) -> {param_name: score}; higher score = more important.
ScoreFn = Callable[[Any, Any, "Mapping[str, Tensor] | None"], "dict[str, Tensor]"]


@dataclass(frozen=True)
class Method:
    """A registered pruning method.

    Attributes:
        name: registry name (``prunekit.prune(model, name, ...)``).
        summary: one line for listings.
        options: dataclass of the method's options with their defaults.
        score: the score function.
        needs_data: whether scoring reads training batches.
        monotone: for iterative methods, whether a pruned weight stays pruned at later steps
            (Iter-SNIP, SynFlow) or can come back (FORCE).
        allocation: default allocation (``"global"``, ``"layerwise"`` or ``"erk"``).
        reference: the paper.
        official: option values that reproduce the authors' official code where it differs from
            the paper; ``official=True`` applies them to every option the caller did not set.
            Empty for methods whose official code is the paper's definition.
        official_rule: the official code's count and tie rule (a name in
            :data:`prunekit.core.allocation.OFFICIAL_RULES`), used when ``count_rule="official"``.
        complete: called on a run's options when the run is resolved: fills in what must be part
            of the run's identity (a scorer file's checksum) and refuses what cannot run, before
            anything runs.
        layer_counts: ``(context, options, density) -> kept count per prunable tensor``, for a
            method that predicts its own per-layer counts (``allocation="learned"``); its scores
            then rank weights within a layer only.
    """

    name: str
    summary: str
    options: type
    score: ScoreFn
    needs_data: bool
    monotone: bool = False
    allocation: str = "global"
    reference: str = ""
    official: Mapping[str, Any] = field(default_factory=dict)
    official_rule: str | None = None
    complete: Callable[[Any], Any] | None = None  # options -> what a run records (e.g. a file's checksum), checked now
    layer_counts: Callable[[Any, Any, float], Sequence[int]] | None = None

    def check_allocation(self, allocation: str) -> str:
        """``allocation`` if this method can run with it.

        Raises:
            ConfigError: an unknown allocation; ``"learned"`` for a method that predicts no counts;
                ``"global"`` for one whose scores are comparable only within a layer.
        """
        if allocation not in ALLOCATIONS:
            raise unknown("allocation", allocation, ALLOCATIONS)
        if allocation == "learned" and self.layer_counts is None:
            raise ConfigError(f"allocation 'learned' is the per-layer counts a method predicts (autosparse_layerwise); "
                              f"{self.name!r} predicts none: use global, layerwise or erk")
        if allocation == "global" and self.layer_counts is not None:
            raise ConfigError(f"{self.name!r} scores rank weights within a layer only, so they cannot be ranked globally: "
                              "use allocation 'learned' (its own per-layer counts, the default), 'layerwise' or 'erk'")
        return allocation

    def build_options(self, values: Mapping[str, Any]) -> Any:
        """The method's option dataclass from ``values``, validated, with the ``official=True`` preset applied.

        Raises:
            ConfigError: an unknown option or an invalid value.
        """
        values = dict(values)
        if values.get("official") is True:
            if not self.official:
                raise ConfigError(f"method {self.name!r} has no official mode: its official code follows the paper")
            for key, value in self.official.items():
                values.setdefault(key, value)
        return build(self.options, values, f"method {self.name!r}")

    def options_for_run(self, values: Mapping[str, Any]) -> Any:
        """:meth:`build_options`, completed as a run records them (:attr:`complete`)."""
        options = self.build_options(values)
        return options if self.complete is None else self.complete(options)

    @property
    def iterative(self) -> bool:
        """Whether the method runs a schedule of score -> top-k steps (its options have ``num_steps``)."""
        return "num_steps" in {f.name for f in dataclasses.fields(self.options)}


_METHODS: Registry[Method] = Registry("method")


def register_method(method: Method) -> Method:
    """Add a method to the registry (names are unique)."""
    return _METHODS.register(method)


def get_method(name: str) -> Method:
    """The registered method called ``name``.

    Raises:
        ConfigError: unknown name (the message lists the valid ones).
    """
    return _METHODS.get(name)


def list_methods() -> list[str]:
    """Names of all registered methods, in registration order."""
    return _METHODS.names()


def all_methods() -> list[Method]:
    """All registered methods, in registration order."""
    return _METHODS.items()

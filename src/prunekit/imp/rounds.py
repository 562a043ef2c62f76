"""Iterative magnitude pruning with rewinding: lottery tickets (Frankle & Carbin 2019; Frankle et al. 2020).

Round 0 trains the dense network. Each later round removes ``fraction`` (20 %) of the remaining
weights with the smallest trained magnitude (global ranking, as open_lth), rewinds the survivors to
their values at initialization (``rewind_epoch=0``) or after ``rewind_epoch`` epochs of round 0
(learning-rate rewinding with it: training restarts at that epoch of the schedule, with a fresh
optimizer), and trains again. The densities are ``(1 - fraction)^k``, the last round going exactly to
the target, so 90 % sparsity takes 11 rounds, 95 % 14, 98 % 18, 99 % 21 and 99.5 % 24.

Every round's mask is saved (``round_XX.pt``), so IMP serves both as an oracle row in tables and as a
source of masks (e.g. for score networks learned from IMP). The state after each round is on disk:
an interrupted IMP run continues from its last finished round and the checkpoint of the current one.

**Iterative rewind pruning (IRP), as AutoSparse's teacher runs it** (``shared/methods.md`` section 8):
``prune_first=True`` prunes round 1 on the *initial* weights before any training (AutoSparse's round
0; there is no dense training round), ``schedule="num"`` removes the same number of weights in each of
``rounds`` rounds (keep ``1 - (1-d)/(E - (1-d) i)`` of the remaining at round ``i``), ``"pct"`` the
same fraction (``d^(k/E)``; the official code's ``sparse ** 1/E`` parses as ``sparse / E``: fixed
here), and ``scorer="snip"`` ranks by ``|theta * g|`` on the current weights instead of magnitude. The
official code's ``rewind`` is always True (a positional-argument slip); here ``rewind_epoch`` is what
is used (0: to initialisation). Every round's mask is saved, which is what a score network learns from.

Runs that differ only in their target share their first rounds: 90 % and 99.5 % both go through
densities 0.8, 0.64, ..., 0.8^10. A run given ``donors`` (work directories of such runs, finished or
not) takes over the longest prefix of rounds whose masks a donor has already computed, retrains only
the last shared round (its trained weights decide the next mask) and goes on from there; a sweep of
IMP at 90/95/98/99/99.5 % then trains 33 rounds instead of 93. The masks and the trained tickets are
the ones the run would have reached alone (bit for bit on the CPU, where training is deterministic;
on a GPU, as reproducible as training itself). Shared rounds are listed with ``"shared_from"`` in the
per-round summaries; their per-epoch metrics stay with the donor.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.allocation import density_schedule, select
from ..core.masks import Masks
from ..data import Dataset
from ..files import atomic_write_json
from ..options import option
from ..training import Callback, TrainConfig, TrainResult, atomic_save, fit
from ..training.precision import Precision

# IRP's schedule names (AutoSparse's code) for the density schedules of prunekit.core.allocation
IRP_SCHEDULES = {"num": "linear", "pct": "exponential"}


@dataclass(frozen=True)
class ImpOptions:
    """Iterative magnitude pruning with rewinding (lottery tickets), and IRP (AutoSparse's teacher)."""

    fraction: float = option(0.2, "fraction of the remaining weights pruned per round (open_lth: 0.2)", min=0.0, max=0.99, min_exclusive=True)
    rewind_epoch: int = option(0, "rewind survivors to their value after this many epochs (0: to initialization)", min=0)
    allocation: str = option("global", "global magnitude ranking (open_lth) or layerwise", choices=("global", "layerwise"))
    schedule: str = option(
        "fraction", "fraction: (1 - fraction)^k, lottery tickets; num: the linear density schedule over `rounds` rounds; "
        "pct: the exponential one (AutoSparse's IRP names)", choices=("fraction", *IRP_SCHEDULES), since="0.2",
    )
    rounds: int = option(20, "pruning rounds of the num / pct schedules", min=1, since="0.2")
    scorer: str = option("magnitude", "per-round ranking: magnitude or snip (|theta * g| of the current weights)",
                         choices=("magnitude", "snip"), since="0.2")
    prune_first: bool = option(False, "prune round 1 on the initial weights, no dense round (AutoSparse's IRP)", since="0.2")

    def densities(self, target_density: float) -> list[float]:
        """Densities after each pruning round, the last one exactly the target."""
        return imp_densities(target_density, self.fraction, self.schedule, self.rounds)


def imp_densities(target_density: float, fraction: float, schedule: str = "fraction", rounds: int = 20) -> list[float]:
    """Densities after each pruning round, the last one exactly the target.

    ``"fraction"``: ``(1-fraction)^k``; ``"num"`` and ``"pct"``: the linear and exponential density
    schedules of :func:`prunekit.core.allocation.density_schedule` over ``rounds`` rounds.
    """
    if schedule in IRP_SCHEDULES:
        return density_schedule(target_density, rounds, IRP_SCHEDULES[schedule])
    count = max(1, math.ceil(math.log(target_density) / math.log(1.0 - fraction) - 1e-9))
    return [max(target_density, (1.0 - fraction) ** k) for k in range(1, count)] + [target_density]


def _shared_prefix(donor: Path, densities: list[float], settings: dict[str, Any]) -> int:
    """How many leading rounds' masks ``donor`` holds with exactly our densities and settings."""
    count = 0
    for rnd, density in enumerate(densities, start=1):
        path = donor / f"round_{rnd:02d}.pt"
        if not path.is_file():
            break
        meta = Masks.load(path).meta
        if meta.get("density") != density or any(meta.get(k, _DEFAULT_SETTINGS.get(k)) != v for k, v in settings.items()):
            break
        count = rnd
    return count


# settings recorded in every round's mask (absent in masks written before they existed: their defaults)
_DEFAULT_SETTINGS = {"scorer": "magnitude", "prune_first": False}


def _adopt_rounds(workdir: Path, donors: Iterable[Path], densities: list[float], settings: dict[str, Any]) -> dict[str, Any] | None:
    """Copy the longest shared prefix of a donor's rounds into the empty ``workdir``; the new state or None."""
    best, shared = None, 0
    for donor in donors:
        if donor.resolve() == workdir.resolve() or not (donor / "state.json").is_file():
            continue
        n = _shared_prefix(donor, densities, settings)
        if n > shared:
            best, shared = donor, n
    if best is None:
        return None
    if settings["rewind_epoch"] > 0:
        if not (best / "rewind.pt").is_file():
            return None
        shutil.copyfile(best / "rewind.pt", workdir / "rewind.pt")
    donor_state = json.loads((best / "state.json").read_text())
    rounds = [
        dict(r, shared_from=str(best), mask_file=str(workdir / f"round_{r['round']:02d}.pt") if r["round"] else None)
        for r in donor_state["rounds"] if r["round"] < shared
    ]
    if sorted(r["round"] for r in rounds) != list(range(shared)):
        return None  # a donor's mask of round k implies its round k-1 was recorded; be safe anyway
    for rnd in range(1, shared + 1):
        Masks.load(best / f"round_{rnd:02d}.pt").save(workdir / f"round_{rnd:02d}.pt")
    return {"rounds": rounds}


class _SaveRewindPoint(Callback):
    def __init__(self, epoch: int, path: Path):
        self.epoch, self.path = epoch, path

    def on_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, Any]) -> None:
        if epoch + 1 == self.epoch:
            atomic_save({k: v.detach().clone() for k, v in trainer.model.state_dict().items()}, self.path)


def run_imp(
    model: nn.Module,
    dataset: Dataset,
    config: TrainConfig,
    options: ImpOptions,
    *,
    sparsity: float,
    prunable: list[str],
    device: torch.device,
    seed: int,
    workdir: Path,
    epoch_callbacks: Callable[[int], list[Callback]] = lambda r: [],
    progress: bool | None = None,
    donors: Iterable[Path] = (),
    scoring_data: Callable[[], Any] | None = None,
    precision: Precision | None = None,
    before_write: Callable[[], None] = lambda: None,
) -> tuple[Masks, TrainResult, list[dict[str, Any]]]:
    """Run IMP on ``model`` (modified: it ends as the trained final ticket).

    Args:
        options: the rounds' schedule, rewinding, allocation and ranking (:class:`ImpOptions`).
        prunable: parameter names to prune.
        workdir: where rounds' masks, checkpoints and the rewind point are kept.
        epoch_callbacks: ``round -> callbacks`` added to every round's training (e.g. DB logging).
        donors: work directories of IMP runs identical but for the target sparsity, whose common
            rounds this run may take over (only when it starts from nothing).
        scoring_data: ``() -> batches`` for ``scorer="snip"`` (``|theta * g|`` on them).
        precision: every round's training precision (default: what ``config`` resolves to on ``device``).
        before_write: called before every file the rounds write (a run's claim check: it raises to stop).

    Returns:
        ``(final masks, final round's TrainResult, per-round summaries)``.
    """
    if not isinstance(options, ImpOptions):
        raise TypeError(f"options must be ImpOptions, got {type(options).__name__}")
    rewind_epoch, scorer, prune_first = options.rewind_epoch, options.scorer, options.prune_first
    before_write()
    workdir.mkdir(parents=True, exist_ok=True)
    state_path = workdir / "state.json"
    densities = options.densities(1.0 - sparsity)
    settings = {"fraction": options.fraction, "rewind_epoch": rewind_epoch, "seed": seed, "scorer": scorer, "prune_first": prune_first}
    if state_path.is_file():
        state = json.loads(state_path.read_text())
    else:
        state = _adopt_rounds(workdir, donors, densities, settings) or {"rounds": []}
        _write_state(state_path, state)
    rewind_path = workdir / "rewind.pt"
    if rewind_epoch == 0 and not rewind_path.is_file():
        atomic_save({k: v.detach().clone() for k, v in model.state_dict().items()}, rewind_path)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}

    trained_path = workdir / "trained_last.pt"
    if prune_first and not any(r["round"] == 0 for r in state["rounds"]):
        # IRP: round 1 is pruned on the initial weights; there is no dense round to train
        atomic_save({k: v.detach().cpu().clone() for k, v in initial.items()}, trained_path)
        state["rounds"].append({"round": 0, "density": 1.0, "final_acc": None, "best_acc": None, "train_seconds": 0.0,
                                "mask_file": None, "untrained": True})
        _write_state(state_path, state)
    masks: Masks | None = None
    result: TrainResult | None = None
    for rnd in range(len(densities) + 1):
        mask_file = workdir / f"round_{rnd:02d}.pt"
        if rnd > 0 and not mask_file.is_file():
            # prune the weights round rnd-1 trained (read from disk: they may come from an earlier invocation)
            trained = torch.load(trained_path, map_location="cpu", weights_only=True)
            previous = None if rnd == 1 else Masks.load(workdir / f"round_{rnd - 1:02d}.pt")
            if scorer == "snip":
                scores = _snip_scores(model, trained, prunable, previous, scoring_data, seed)
            else:
                scores = {n: trained[n].abs() for n in prunable}
            kept = select(scores, densities[rnd - 1], options.allocation, None if previous is None else dict(previous))
            meta = {"method": "imp", "round": rnd, "density": densities[rnd - 1], **settings}
            before_write()
            Masks(kept, meta).save(mask_file)
        masks = Masks.load(mask_file) if rnd > 0 else None
        finished = {r["round"] for r in state["rounds"]}
        if rnd in finished and rnd < len(densities):
            continue  # trained by an earlier, interrupted invocation
        if rnd == 0:
            model.load_state_dict(initial)
        else:
            model.load_state_dict(torch.load(rewind_path, map_location=device, weights_only=True))
        callbacks = list(epoch_callbacks(rnd))
        if rnd == 0 and rewind_epoch > 0:
            callbacks.append(_SaveRewindPoint(rewind_epoch, rewind_path))
        result = fit(
            model, dataset, config, masks=masks, device=device, seed=seed, checkpoint=workdir / f"round_{rnd:02d}.ckpt",
            callbacks=callbacks, progress=progress, desc=f"imp round {rnd}", start_epoch=0 if rnd == 0 else rewind_epoch,
            precision=precision,
        )
        # the trained weights first, then the record that the round is done
        before_write()
        atomic_save({k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, trained_path)
        summary = {
            "round": rnd,
            "density": 1.0 if rnd == 0 else densities[rnd - 1],
            "final_acc": result.final_test_acc,
            "best_acc": result.best_test_acc,
            "train_seconds": result.train_seconds,
            "mask_file": None if rnd == 0 else str(mask_file),
        }
        state["rounds"] = [r for r in state["rounds"] if r["round"] != rnd] + [summary]
        _write_state(state_path, state)
        if rnd < len(densities):  # a finished round's checkpoint is no longer needed (the last one's is kept)
            (workdir / f"round_{rnd:02d}.ckpt").unlink(missing_ok=True)
    assert masks is not None and result is not None
    return masks, result, sorted(state["rounds"], key=lambda r: r["round"])


def _write_state(path: Path, state: dict[str, Any]) -> None:
    atomic_write_json(path, state, indent=1)


def _snip_scores(
    model: nn.Module, weights: dict[str, torch.Tensor], prunable: list[str], previous: Masks | None,
    scoring_data: Callable[[], Any] | None, seed: int,
) -> dict[str, torch.Tensor]:
    """``|theta * g|`` of the pruned network at ``weights`` (IRP's SNIP scorer), on a copy."""
    import copy

    from ..core.pruning import score

    if scoring_data is None:
        raise ValueError("scorer='snip' needs scoring_data")
    work = copy.deepcopy(model)
    work.load_state_dict({k: v.to(next(work.parameters()).device) for k, v in weights.items()})
    scores = score(work, "snip", data=scoring_data(), seed=seed, masks=None if previous is None else dict(previous),
                   include=prunable)
    return {n: s.cpu() for n, s in scores.items()}

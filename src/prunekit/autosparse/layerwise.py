"""Layer-aware AutoSparse: learn from iterative rewind pruning *where* to keep weights, and *which*.

The paper's score network sees a weight's ``(theta0, g0)`` and nothing else, and one global
threshold over its predictions decides every layer's density: on LeNet-5 the 400,000 weights of fc1
outnumber the classifier's 5,000 and the classifier starves (``benchmarks/RESULTS.md``). This
variant learns two things from one or several IRP teachers (IMP runs rewound to initialisation):

* **the density model**: a layer's density at a target density ``d``, as ``log(d_l / d)``, a ridge
  regression on the layer's descriptors (:data:`DESCRIPTORS`: fan-in, fan-out, kernel size, size,
  share of all weights, the ERK ratio, relative depth, first/last, layer type) and their products
  with ``log d``, taught from every round of every teacher (each round's mask is one example at its
  own density). On a model, the predicted ratios are shifted by one constant so that the layers
  hold exactly ``round(d N)`` weights, none above its size and every layer at least one
  (:func:`calibrated_counts`, largest remainders as in :func:`prunekit.core.allocation.apportion`);
* **the ranking model**: a weight's place within its layer, a small MLP on features comparable
  across layers and models (:data:`WEIGHT_FEATURES`: within-layer ranks and scale-free sizes of
  ``|theta0|``, ``|g0|``, ``|theta0 g0|``, and ``theta0 g0`` with its sign), taught on the
  within-layer rank of the rounds each weight survived.

Both are small: scoring costs one pass of ``g0`` over a few batches, a sort per layer and about
1,300 multiply-adds per weight. :func:`leave_one_teacher_out` measures how a scorer taught without a
teacher predicts that teacher's tickets. A scorer file holds both models, the teachers' per-round
layer counts (a teacher's ticket profile can be used instead of the density model:
``profile=``), what it was taught on and a SHA-256 checksum.
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import __version__
from ..core.allocation import apportion, kept_count
from ..errors import ConfigError
from ..files import atomic_torch_save
from .features import read_irp_run
from .scorer import ScorerFileError, average_ranks, digest, read_scorer_file, spearman

FORMAT = "prunekit-autosparse-layerwise"
VERSION = 1
DESCRIPTORS = ("log_fan_in", "log_fan_out", "log_kernel", "log_size", "log_share", "log_erk", "depth", "first", "last",
               "conv", "depthwise", "linear")
WEIGHT_FEATURES = ("rank_abs_theta", "rank_abs_grad", "rank_abs_product", "size_abs_theta", "size_abs_grad",
                   "size_abs_product", "signed_product")
HIDDEN = 32


# -- what a layer and a weight look like to the models -------------------------------------------------------------------
def layer_kind(model: nn.Module, name: str) -> str:
    """``conv``, ``depthwise``, ``linear`` (including attention projections) or ``other``."""
    module_name = name.rpartition(".")[0]
    try:
        module = model.get_submodule(module_name) if module_name else model
    except AttributeError:
        return "other"
    if isinstance(module, nn.modules.conv._ConvNd):
        return "depthwise" if module.groups > 1 and module.groups == module.in_channels else "conv"
    if isinstance(module, (nn.Linear, nn.MultiheadAttention)):
        return "linear"
    return "other"


def layer_descriptors(model: nn.Module, names: Sequence[str], shapes: Sequence[Sequence[int]]) -> Tensor:
    """``[L, len(DESCRIPTORS)]`` float64: what the density model knows of each prunable tensor."""
    sizes = [math.prod(s) for s in shapes]
    total = sum(sizes)
    rows = []
    for i, (name, shape, size) in enumerate(zip(names, shapes, sizes)):
        fan_out = shape[0] if len(shape) else 1
        kernel = math.prod(shape[2:]) if len(shape) > 2 else 1
        kind = layer_kind(model, name)
        rows.append([
            math.log(size / fan_out), math.log(fan_out), math.log(kernel), math.log(size), math.log(size / total),
            math.log(sum(shape)) - math.log(size), i / max(1, len(names) - 1), float(i == 0), float(i == len(names) - 1),
            float(kind == "conv"), float(kind == "depthwise"), float(kind == "linear"),
        ])
    return torch.tensor(rows, dtype=torch.float64)


def weight_features(theta0: Tensor, g0: Tensor) -> Tensor:
    """``[n, len(WEIGHT_FEATURES)]`` float32 features of one layer's weights, comparable across layers:
    ranks in ``[0, 1]`` and sizes relative to the layer's mean (``log1p(x / mean x)``), so neither
    the layer's initialisation scale nor the gradient's scale (a full pass or a few batches) matters."""
    a = theta0.detach().double().flatten().cpu().abs()
    g = g0.detach().double().flatten().cpu()
    b = g.abs()
    product = theta0.detach().double().flatten().cpu() * g
    c = product.abs()
    n = a.numel()

    def rank(x: Tensor) -> Tensor:
        return average_ranks(x) / max(1, n - 1)

    def size(x: Tensor) -> Tensor:
        mean = x.mean()
        return torch.log1p(x / mean) if float(mean) > 0 else torch.zeros_like(x)

    mean_c = c.mean()
    signed = torch.sign(product) * torch.log1p(c / mean_c) if float(mean_c) > 0 else torch.zeros_like(c)
    return torch.stack([rank(a), rank(b), rank(c), size(a), size(b), size(c), signed], dim=1).float()


def density_inputs(descriptors: Tensor, density: float) -> Tensor:
    """The density model's input rows: descriptors, ``log d`` and their products with ``log d``."""
    log_d = torch.full((len(descriptors), 1), math.log(density), dtype=torch.float64)
    return torch.cat([descriptors, log_d, descriptors * log_d], dim=1)


def calibrated_counts(log_ratios: Sequence[float], sizes: Sequence[int], density: float) -> list[int]:
    """Kept counts: layer ``l`` at ``min(1, d * exp(r_l + c))`` of its weights, ``c`` the one shift
    that keeps ``round(d N)`` in all; every layer keeps at least one weight.

    Raises:
        ConfigError: ``round(d N)`` is smaller than the number of layers (some layer would be empty).
    """
    total = kept_count(sum(sizes), density)
    if total < len(sizes):
        raise ConfigError(f"density {density:g} keeps {total} weights, fewer than the {len(sizes)} prunable tensors: "
                          "a layer would be empty; keep more weights")
    ratios = torch.tensor(list(log_ratios), dtype=torch.float64)
    n = torch.tensor(list(sizes), dtype=torch.float64)

    def kept(shift: float) -> Tensor:
        return torch.minimum(n, n * density * torch.exp((ratios + shift).clamp(max=700.0)))

    lo, hi = -800.0, 800.0
    for _ in range(200):  # kept(shift) grows with the shift; bisection to float precision
        mid = (lo + hi) / 2
        if float(kept(mid).sum()) < total:
            lo = mid
        else:
            hi = mid
    ideal = kept(hi).tolist()
    rest = apportion([max(0.0, x - 1.0) for x in ideal], [s - 1 for s in sizes], total - len(sizes))
    return [1 + r for r in rest]


# -- teachers ---------------------------------------------------------------------------------------------------------------
@dataclass
class Teacher:
    """What one IRP run teaches: its layers, every round's kept counts, and per weight the features and
    the within-layer rank of the rounds it survived.

    Attributes:
        name: how reports name it (``model/dataset``).
        layers, shapes: the prunable tensors.
        descriptors: ``[L, len(DESCRIPTORS)]``.
        densities: each round's overall density.
        kept: ``[R, L]`` kept weights per round and layer.
        features: per layer ``[n_l, len(WEIGHT_FEATURES)]``.
        targets: per layer ``[n_l]``, the within-layer rank of rounds survived, in ``[0, 1]``.
        final: per layer, the last round's mask (the ticket), flattened.
        source: where it came from (run key, IRP options, ...).
    """

    name: str
    layers: list[str]
    shapes: list[tuple[int, ...]]
    descriptors: Tensor
    densities: list[float]
    kept: Tensor
    features: list[Tensor]
    targets: list[Tensor]
    final: list[Tensor]
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def sizes(self) -> list[int]:
        return [math.prod(s) for s in self.shapes]


def teacher_from_masks(name: str, model: nn.Module, theta0: Mapping[str, Tensor], g0: Mapping[str, Tensor],
                       round_masks: Sequence[Mapping[str, Tensor]], source: Mapping[str, Any] | None = None) -> Teacher:
    """A :class:`Teacher` from the initial weights, ``g0`` and every round's mask (in round order)."""
    if not round_masks:
        raise ConfigError(f"teacher {name!r} has no round masks")
    layers = list(round_masks[0])
    shapes = [tuple(int(d) for d in round_masks[0][n].shape) for n in layers]
    sizes = [math.prod(s) for s in shapes]
    kept = torch.tensor([[int(m[n].sum()) for n in layers] for m in round_masks], dtype=torch.long)
    densities = [float(k.sum()) / sum(sizes) for k in kept]
    features, targets, final = [], [], []
    for n in layers:
        survived = sum(m[n].flatten().double().cpu() for m in round_masks)
        assert isinstance(survived, Tensor)
        size = survived.numel()
        targets.append((average_ranks(survived) / max(1, size - 1)).float())
        features.append(weight_features(theta0[n], g0[n]))
        final.append(round_masks[-1][n].flatten().bool().cpu())
    return Teacher(name, layers, shapes, layer_descriptors(model, layers, shapes), densities, kept, features, targets, final,
                   dict(source or {}))


def teacher_from_imp_run(run_dir: str | Path, model: nn.Module, data: Iterable, name: str, *, num_batches: int | None,
                         source: Mapping[str, Any] | None = None) -> Teacher:
    """The :class:`Teacher` of an IMP/IRP run folder (``imp/rewind.pt`` and ``imp/round_XX.pt``, rewound
    to initialisation); ``g0`` from ``num_batches`` batches of ``data`` (all of them with ``None``)."""
    run = read_irp_run(run_dir, model, data, num_batches=num_batches)
    return teacher_from_masks(name, run.model, run.theta0, run.g0, run.masks,
                              {**dict(source or {}), "run_dir": str(run_dir), "rounds": len(run.masks), "g0_batches": num_batches})


# -- the two models ---------------------------------------------------------------------------------------------------------
def ranking_network() -> nn.Module:
    """The within-layer ranking model: ``[n, 7] -> [n]``."""
    return nn.Sequential(nn.Linear(len(WEIGHT_FEATURES), HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                         nn.Linear(HIDDEN, 1), nn.Flatten(0))


@dataclass(frozen=True)
class TeachSettings:
    """How a layer-aware scorer is taught (fixed before any target is scored; see ``docs/autosparse.md``)."""

    ridge: float = 1.0  # L2 penalty of the density model, on standardised inputs
    per_layer: int = 20000  # weights sampled per teacher layer for the ranking model (all where fewer)
    epochs: int = 6
    lr: float = 3e-3
    batch_size: int = 2048
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def fit_density(teachers: Sequence[Teacher], ridge: float) -> dict[str, Tensor]:
    """The ridge regression of ``log(d_l / d)`` on :func:`density_inputs`, every teacher weighing the same.

    Only the differences between the layers of one round matter (the calibration sets the common
    level), so inputs and targets are centred within each round of each teacher before fitting:
    what is learnt is how layers differ, not how one model's rounds differ from another's. A layer
    the round left whole (kept at 100 %) is left out of its round: its ratio is only a lower bound.
    """
    xs, ys, ws = [], [], []
    for t in teachers:
        sizes = torch.tensor(t.sizes, dtype=torch.float64)
        rounds = []
        for r, d in enumerate(t.densities):
            partial = t.kept[r] < sizes.long()
            if int(partial.sum()) < 2:
                continue
            x = density_inputs(t.descriptors, d)[partial]
            y = torch.log(t.kept[r].double().clamp_min(0.5)[partial] / sizes[partial] / d)
            rounds.append((x - x.mean(0), y - y.mean()))
        for x, y in rounds:
            xs.append(x)
            ys.append(y)
            ws.append(torch.full((len(y),), 1.0 / (len(rounds) * len(y)), dtype=torch.float64))
    if not xs:
        raise ConfigError("no teacher round thins two layers or more: there is no per-layer density to learn")
    x, y, w = torch.cat(xs), torch.cat(ys), torch.cat(ws)
    w = w / w.sum()
    std = (w[:, None] * x**2).sum(0).sqrt()
    std = torch.where(std > 1e-9, std, torch.ones_like(std))  # constant within every round: carries nothing
    z = x / std
    a = z.T @ (w[:, None] * z) + ridge / len(y) * torch.eye(z.shape[1], dtype=torch.float64)
    coef = torch.linalg.solve(a, z.T @ (w * y))
    return {"std": std, "coef": coef}


def fit_ranking(teachers: Sequence[Teacher], settings: TeachSettings) -> nn.Module:
    """The ranking MLP, MSE on the within-layer survival ranks of (at most ``per_layer``) sampled weights
    of every teacher layer whose weights did not all survive alike."""
    g = torch.Generator().manual_seed(settings.seed)
    xs, ys = [], []
    for t in teachers:
        for f, y in zip(t.features, t.targets):
            if float(y.max() - y.min()) == 0.0:
                continue
            idx = torch.randperm(len(y), generator=g)[: settings.per_layer]
            xs.append(f[idx])
            ys.append(y[idx])
    if not xs:
        raise ConfigError("no teacher layer has weights that survived different numbers of rounds: there is nothing to rank")
    x, y = torch.cat(xs), torch.cat(ys)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small network: one thread is fastest, and the result is the same on every machine
    try:
        return _fit(x, y, settings, g)
    finally:
        torch.set_num_threads(threads)


def _fit(x: Tensor, y: Tensor, settings: TeachSettings, g: torch.Generator) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        net = ranking_network()
        opt = torch.optim.Adam(net.parameters(), lr=settings.lr)
        for _ in range(settings.epochs):
            order = torch.randperm(len(y), generator=g)
            for i in range(0, len(order), settings.batch_size):
                idx = order[i : i + settings.batch_size]
                opt.zero_grad(set_to_none=True)
                nn.functional.mse_loss(net(x[idx]), y[idx]).backward()
                opt.step()
    return net.eval()


@dataclass
class LayerwiseScorer:
    """A taught layer-aware scorer: the density model, the ranking model and the teachers' profiles."""

    density: dict[str, Tensor]
    ranking: nn.Module
    meta: dict[str, Any]
    sha256: str | None = None

    # -- prediction -------------------------------------------------------------------------------------------------------
    def log_ratios(self, descriptors: Tensor, density: float) -> Tensor:
        """``log(d_l / d)`` per layer, up to the constant the calibration sets."""
        return (density_inputs(descriptors, density) / self.density["std"]) @ self.density["coef"]

    def counts(self, descriptors: Tensor, sizes: Sequence[int], density: float) -> list[int]:
        """Kept weights per layer at ``density``: exactly ``round(d N)``, each layer at least one."""
        return calibrated_counts(self.log_ratios(descriptors, density).tolist(), sizes, density)

    def profile_counts(self, teacher: str, shapes: Sequence[Sequence[int]], density: float) -> list[int]:
        """Kept weights per layer from a teacher's tickets: its layer densities at ``density``,
        interpolated in ``log d`` between its rounds (the nearest two rounds outside them), made exact.

        Raises:
            ConfigError: no such teacher in the file, or its layers have other shapes.
        """
        profiles = {p["name"]: p for p in self.meta.get("teachers", [])}
        if teacher not in profiles:
            raise ConfigError(f"profile {teacher!r}: the scorer was taught on {', '.join(map(repr, profiles)) or 'no teacher'}")
        p = profiles[teacher]
        if [list(s) for s in shapes] != p["shapes"]:
            raise ConfigError(f"profile {teacher!r}: the teacher's layers {p['shapes']} are not this model's {[list(s) for s in shapes]}")
        sizes = torch.tensor([math.prod(s) for s in p["shapes"]], dtype=torch.float64)
        log_d = torch.log(torch.tensor(p["densities"], dtype=torch.float64))
        log_layer = torch.log(torch.tensor(p["kept"], dtype=torch.float64).clamp_min(0.5) / sizes)
        order = torch.argsort(log_d)
        log_d, log_layer = log_d[order], log_layer[order]
        x = math.log(density)
        j = int(torch.searchsorted(log_d, torch.tensor(x, dtype=torch.float64)).clamp(1, len(log_d) - 1)) if len(log_d) > 1 else 0
        if len(log_d) == 1:
            est = log_layer[0]
        else:
            t = (x - float(log_d[j - 1])) / float(log_d[j] - log_d[j - 1])
            est = log_layer[j - 1] + t * (log_layer[j] - log_layer[j - 1])
        return calibrated_counts((est - x).tolist(), sizes.long().tolist(), density)

    @torch.inference_mode()
    def rank(self, features: Tensor, chunk: int = 65536) -> Tensor:
        """Within-layer scores of ``features`` ``[n, 7]`` (higher: keep)."""
        return torch.cat([self.ranking(part) for part in features.float().split(chunk)]) if len(features) else torch.zeros(0)

    # -- files ------------------------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        payload = self._payload()
        payload["sha256"] = digest(_header(payload), payload["tensors"])
        return atomic_torch_save(payload, path)

    def _payload(self) -> dict[str, Any]:
        tensors = {f"density.{k}": v.double().reshape(-1).cpu() for k, v in self.density.items()}
        tensors.update({f"ranking.{k}": v.float().cpu() for k, v in self.ranking.state_dict().items()})
        return {"format": FORMAT, "version": VERSION, "tensors": tensors, "meta": json.dumps(self.meta, sort_keys=True)}

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LayerwiseScorer:
        path = Path(path)
        payload = read_scorer_file(path)
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            kind = "the paper's AutoSparse (method autosparse)" if isinstance(payload, dict) and "arch" in payload else "no"
            raise ScorerFileError(f"{str(path)!r} is not a layer-aware AutoSparse scorer file (it is {kind} scorer file)")
        if payload.get("version") != VERSION:
            raise ScorerFileError(f"{str(path)!r} has layer-aware scorer version {payload.get('version')!r}; this prunekit reads {VERSION}")
        try:
            if digest(_header(payload), payload["tensors"]) != payload["sha256"]:
                raise ValueError("checksum mismatch")
            tensors = payload["tensors"]
            density = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("density.")}
            width = len(DESCRIPTORS) * 2 + 1
            if any(density[k].shape != (width,) for k in ("std", "coef")):
                raise ValueError(f"the density model has {tuple(density['coef'].shape)} coefficients, not ({width},)")
            net = ranking_network()
            net.load_state_dict({k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("ranking.")})
            return cls(density, net.eval(), json.loads(payload["meta"]), payload["sha256"])
        except Exception as exc:
            raise ScorerFileError(f"{str(path)!r} is corrupt ({type(exc).__name__}: {exc})") from None


def _header(payload: Mapping[str, Any]) -> list[Any]:
    return [payload["format"], payload["version"], payload["meta"]]


def _profile(t: Teacher) -> dict[str, Any]:
    return {"name": t.name, "layers": t.layers, "shapes": [list(s) for s in t.shapes], "densities": t.densities,
            "kept": t.kept.tolist(), "source": t.source}


def teach_layerwise(teachers: Sequence[Teacher], settings: TeachSettings = TeachSettings(),
                    meta: Mapping[str, Any] | None = None) -> LayerwiseScorer:
    """A :class:`LayerwiseScorer` taught on every teacher (deterministic: the same file on every machine
    and thread count, the ranking model being fitted on one thread)."""
    if not teachers:
        raise ConfigError("a layer-aware scorer needs at least one teacher")
    names = [t.name for t in teachers]
    if len(set(names)) != len(names):
        raise ConfigError(f"teachers need distinct names; got {names}")
    density = fit_density(teachers, settings.ridge)
    ranking = fit_ranking(teachers, settings)
    return LayerwiseScorer(density, ranking, {
        **dict(meta or {}), "teachers": [_profile(t) for t in teachers], "teaching": settings.as_dict(),
        "descriptors": list(DESCRIPTORS), "weight_features": list(WEIGHT_FEATURES),
        "versions": {"prunekit": __version__, "torch": torch.__version__, "python": platform.python_version()},
    })


# -- how well a scorer predicts a teacher it never saw ------------------------------------------------------------------------
def evaluate(scorer: LayerwiseScorer, teacher: Teacher) -> dict[str, Any]:
    """How ``scorer`` predicts ``teacher``'s tickets.

    * ``density_error``: mean over rounds and layers of ``|log(d_hat_l / d_l)|`` (0: every layer's
      density as the ticket's), beside the same for ERK and uniform (``layerwise``) densities;
    * ``ranking_spearman``: the size-weighted mean over layers of the within-layer rank correlation of
      the predicted scores with the rounds survived, beside ``|theta0|``'s;
    * ``ticket_iou``: at the last round's density, the intersection over union of the predicted mask
      with the ticket, beside the expected IoU of random placement at the predicted counts;
    * ``kept_final``: the predicted and the ticket's kept weights per layer at the last round.
    """
    from ..core.allocation import layer_budgets

    sizes = teacher.sizes
    errors: dict[str, list[float]] = {"learned": [], "erk": [], "layerwise": []}
    for r, d in enumerate(teacher.densities):
        truth = teacher.kept[r].double().clamp_min(0.5)
        for kind in errors:
            counts = scorer.counts(teacher.descriptors, sizes, d) if kind == "learned" else layer_budgets(teacher.shapes, d, kind)
            assert counts is not None
            errors[kind] += torch.log(torch.tensor(counts, dtype=torch.float64).clamp_min(0.5) / truth).abs().tolist()
    rho_learned, rho_theta, weights = [], [], []
    for f, y in zip(teacher.features, teacher.targets):
        if float(y.max() - y.min()) == 0.0:
            continue
        rho_learned.append(spearman(scorer.rank(f), y))
        rho_theta.append(spearman(f[:, 0], y))
        weights.append(len(y))
    counts = scorer.counts(teacher.descriptors, sizes, teacher.densities[-1])
    inter = union = 0
    random_inter = 0.0
    for f, ticket, k in zip(teacher.features, teacher.final, counts):
        keep = torch.zeros(len(ticket), dtype=torch.bool)
        keep[torch.topk(scorer.rank(f), k).indices] = True
        inter += int((keep & ticket).sum())
        union += int((keep | ticket).sum())
        random_inter += k * int(ticket.sum()) / len(ticket)
    kept_total = sum(counts) + int(sum(int(t.sum()) for t in teacher.final))

    def mean(xs: Sequence[float], w: Sequence[float] | None = None) -> float:
        w = w or [1.0] * len(xs)
        return sum(x * v for x, v in zip(xs, w)) / sum(w) if xs else float("nan")

    return {
        "teacher": teacher.name,
        "density_error": mean(errors["learned"]), "density_error_erk": mean(errors["erk"]),
        "density_error_layerwise": mean(errors["layerwise"]),
        "ranking_spearman": mean(rho_learned, weights), "ranking_spearman_abs_theta": mean(rho_theta, weights),
        "ticket_iou": inter / union if union else float("nan"),
        "ticket_iou_random_placement": random_inter / (kept_total - random_inter) if kept_total else float("nan"),
        "final_density": teacher.densities[-1], "kept_final": counts, "kept_final_ticket": teacher.kept[-1].tolist(),
    }


def leave_one_teacher_out(teachers: Sequence[Teacher], settings: TeachSettings = TeachSettings(),
                          progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """For every teacher, :func:`evaluate` of the scorer taught on all the *other* teachers (nothing of
    the teacher it is scored on enters its teaching). Needs at least two teachers."""
    if len(teachers) < 2:
        raise ConfigError("leave-one-teacher-out needs at least two teachers")
    out = []
    for i, held in enumerate(teachers):
        if progress is not None:
            progress(f"leave-one-teacher-out: teaching without {held.name}")
        rest = [t for j, t in enumerate(teachers) if j != i]
        out.append(evaluate(teach_layerwise(rest, settings), held))
    return out

"""Any model, any loop: tuple and dict inputs, dict outputs, token-id models, attention weights,
torch.nn.utils.prune models, foreign loaders and losses in the Trainer, one version source."""

from __future__ import annotations

import importlib.metadata
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import prunekit
from prunekit import ConfigError, Masks
from prunekit.core.connectivity import effective_masks
from prunekit.training import TrainConfig, Trainer

VOCAB, SEQ, CLASSES = 20, 6, 3


class TokenClassifier(nn.Module):
    """A tiny transformer text classifier called as ``model(input_ids=..., attention_mask=...)`` and
    returning a dict, like a Hugging Face model."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, 8)
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True), num_layers=1,
            enable_nested_tensor=False,
        )
        self.head = nn.Linear(8, CLASSES)

    def forward(self, input_ids, attention_mask):
        h = self.encoder(self.embed(input_ids), src_key_padding_mask=attention_mask == 0)
        pooled = (h * attention_mask.unsqueeze(-1)).sum(1) / attention_mask.sum(1, keepdim=True)
        return {"logits": self.head(pooled), "hidden": h}


class TwoInputs(nn.Module):
    """Called as ``model(image, extra)``: a tuple of inputs."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.a = nn.Linear(6, 8)
        self.b = nn.Linear(2, 8)
        self.out = nn.Linear(8, CLASSES)

    def forward(self, image, extra):
        return self.out(F.relu(self.a(image) + self.b(extra)))


def token_batches(n: int = 4, size: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, VOCAB, (size, SEQ), generator=g)
        mask = torch.ones(size, SEQ, dtype=torch.long)
        mask[: size // 2, -2:] = 0  # some padding
        out.append(({"input_ids": ids, "attention_mask": mask}, torch.randint(0, CLASSES, (size,), generator=g)))
    return out


def tuple_batches(n: int = 4, size: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [((torch.randn(size, 6, generator=g), torch.randn(size, 2, generator=g)), torch.randint(0, CLASSES, (size,), generator=g))
            for _ in range(n)]


FAST = {"force": {"num_steps": 3}, "iter_snip": {"num_steps": 3}, "synflow": {"num_steps": 3}, "grasp": {"samples_per_class": 2},
        "grasp_abs": {"samples_per_class": 2}}


@pytest.mark.parametrize("method", prunekit.list_methods())
def test_every_method_prunes_a_dict_input_dict_output_transformer(method):
    model = TokenClassifier()
    masks = prunekit.prune(model, method, 0.8, data=token_batches(), **FAST.get(method, {}))
    names = list(masks)
    assert "encoder.layers.0.self_attn.in_proj_weight" in names  # attention is pruned by default
    assert "embed.weight" not in names  # embeddings are not
    assert masks.kept == round(0.2 * masks.size)


@pytest.mark.parametrize("method", prunekit.list_methods())
def test_every_method_prunes_a_tuple_input_model(method):
    masks = prunekit.prune(TwoInputs(), method, 0.7, data=tuple_batches(), **FAST.get(method, {}))
    assert set(masks) == {"a.weight", "b.weight", "out.weight"}
    assert masks.kept == round(0.3 * masks.size)


def test_tuple_inputs_give_the_scores_of_the_same_model_called_by_hand():
    model = TwoInputs(seed=3)
    batches = tuple_batches(seed=4)
    got = prunekit.score(model, "snip", data=batches)
    (x1, x2), y = batches[0]
    loss = F.cross_entropy(model(x1, x2), y)
    grads = torch.autograd.grad(loss, [model.a.weight, model.b.weight, model.out.weight])
    for (name, p), g in zip([("a.weight", model.a.weight), ("b.weight", model.b.weight), ("out.weight", model.out.weight)], grads):
        torch.testing.assert_close(got[name], (p.detach() * g).abs())


def test_synflow_on_token_ids_sends_the_all_ones_signal_through_the_embedding():
    class Bag(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(5)
            self.embed = nn.Embedding(7, 3)
            self.fc = nn.Linear(3, 2, bias=False)

        def forward(self, ids):
            return self.fc(self.embed(ids)).sum(1)

    model = Bag()
    ids = torch.randint(0, 7, (4, 5))
    scores = prunekit.score(model, "synflow", example_inputs=ids)
    # R = sum_i sum_t (|W| s)_i with s = column sums of |E| (the all-ones one-hot): dR/dW_ij = T s_j
    s = model.embed.weight.detach().double().abs().sum(0)
    expected = (model.fc.weight.detach().double().abs() * 5 * s).float()
    torch.testing.assert_close(scores["fc.weight"].float(), expected, rtol=1e-6, atol=0)
    assert model.embed.weight.dtype == torch.float32 and len(model.embed._forward_hooks) == 0  # the caller's model untouched


def test_synflow_and_effective_density_on_a_token_model_without_data():
    model = TokenClassifier(seed=2)
    example = token_batches(n=1)[0][0]
    masks = prunekit.prune(model, "synflow", 0.5, example_inputs=example, num_steps=5)
    assert masks.kept == round(0.5 * masks.size)
    report = masks.report(model, example_inputs=example)
    assert all(r.effective_kept is not None and r.effective_kept <= r.kept for r in report.rows)
    alive = effective_masks(model, masks, example_inputs=example)
    assert set(alive) == set(masks)


def test_synflow_without_any_input_is_one_clear_error():
    with pytest.raises(ConfigError, match="example_inputs"):
        prunekit.score(TwoInputs(), "synflow")


def test_grasp_counts_classes_on_a_dict_output_token_model():
    scores = prunekit.score(TokenClassifier(seed=1), "grasp", data=token_batches(n=6), samples_per_class=2)
    assert all(torch.isfinite(s).all() for s in scores.values())


def test_a_model_that_cannot_take_the_inputs_is_one_prunekit_error():
    with pytest.raises(prunekit.ScoreError, match="input_ids"):
        prunekit.score(TwoInputs(), "snip", data=token_batches())


def test_masks_are_read_from_torch_nn_utils_prune():
    from torch.nn.utils import prune as torch_prune

    model = TwoInputs(seed=6)
    torch_prune.l1_unstructured(model.a, "weight", amount=0.5)
    torch_prune.random_unstructured(model.out, "weight", amount=0.3)
    masks = Masks.from_torch_prune(model)
    assert set(masks) == {"a.weight", "out.weight"}
    assert torch.equal(masks["a.weight"], model.a.weight_mask.bool())
    with pytest.raises(prunekit.MaskError, match="no torch.nn.utils.prune"):
        Masks.from_torch_prune(TwoInputs())
    with pytest.raises(ConfigError, match="from_torch_prune"):
        prunekit.prune(model, "snip", 0.5, data=tuple_batches(), include=["*_orig"], exclude=["*_orig"])  # nothing left


def test_the_hint_for_a_fully_torch_pruned_model():
    from torch.nn.utils import prune as torch_prune

    model = nn.Sequential(nn.Linear(4, 3))
    torch_prune.l1_unstructured(model[0], "weight", amount=0.5)
    with pytest.raises(ConfigError, match="from_torch_prune"):
        prunekit.prune(model, "magnitude", 0.5)
    torch_prune.remove(model[0], "weight")
    prunekit.prune(model, "magnitude", 0.5)


def test_attention_can_be_kept_dense_with_one_pattern():
    masks = prunekit.prune(TokenClassifier(), "magnitude", 0.5, exclude="*in_proj_weight")
    assert not any(n.endswith("in_proj_weight") for n in masks)


def test_trainer_takes_a_dataloader_a_loss_and_dict_outputs_and_keeps_masks():
    model = TokenClassifier(seed=3)
    batches = token_batches(n=6, seed=7)
    masks = prunekit.prune(model, "snip", 0.9, data=batches)
    ids = torch.cat([b[0]["input_ids"] for b in batches])
    att = torch.cat([b[0]["attention_mask"] for b in batches])
    y = torch.cat([b[1] for b in batches])

    class Dicts(TensorDataset):
        def __getitem__(self, i):
            a, m, t = super().__getitem__(i)
            return {"input_ids": a, "attention_mask": m}, t

    loader = DataLoader(Dicts(ids, att, y), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))
    calls = []

    def loss_fn(logits, targets):
        calls.append(logits.shape)
        return F.cross_entropy(logits, targets, label_smoothing=0.1)

    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.01, optimizer="adamw", weight_decay=0.1, schedule="constant", val_size=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = Trainer(model, loader, cfg, masks=masks, loss_fn=loss_fn).fit()
    assert len(calls) == 2 * len(loader) and all(c == (8, CLASSES) for c in calls)
    assert len(result.history) == 2 and result.history[-1]["train_acc"] >= 0
    assert masks.is_applied(model)  # pruned weights stayed exactly zero through AdamW's decay
    kept = masks["head.weight"]
    assert not torch.equal(model.head.weight.detach()[kept], before["head.weight"][kept])  # the kept ones trained


def test_trainer_rejects_a_one_shot_iterator():
    model = TwoInputs()
    cfg = TrainConfig(epochs=1, batch_size=8, val_size=0)
    with pytest.raises(ConfigError, match="re-iterable"):
        Trainer(model, iter(tuple_batches()), cfg)


def test_one_version_source():
    assert prunekit.__version__ == importlib.metadata.version("prunekit")


def test_tensorboard_log_callback_writes_each_epoch(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from prunekit.training import TensorBoardLog

    model = TwoInputs(seed=8)
    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.05, val_size=0, schedule="constant")
    result = Trainer(model, tuple_batches(n=3), cfg, callbacks=[TensorBoardLog(tmp_path / "tb")]).fit()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    losses = events.Scalars("train_loss")
    assert [e.step for e in losses] == [1, 2]
    assert [e.value for e in losses] == pytest.approx([h["train_loss"] for h in result.history])


def test_mlflow_log_callback_logs_params_and_each_epoch(monkeypatch):
    import types

    from prunekit.training import MLflowLog

    calls: dict[str, list] = {"params": [], "metrics": [], "runs": []}
    fake = types.SimpleNamespace(
        active_run=lambda: None if not calls["runs"] else "run",
        start_run=lambda: calls["runs"].append("started"),
        log_params=lambda params: calls["params"].append(params),
        log_metrics=lambda metrics, step: calls["metrics"].append((step, metrics)),
    )
    monkeypatch.setitem(sys.modules, "mlflow", fake)  # MLflow's API, recorded (MLflow itself is not a test dependency)
    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.05, val_size=0, schedule="constant")
    result = Trainer(TwoInputs(seed=9), tuple_batches(n=3), cfg, callbacks=[MLflowLog()]).fit()
    assert calls["runs"] == ["started"] and calls["params"][0]["lr"] == "0.05"
    assert [s for s, _ in calls["metrics"]] == [1, 2]
    assert calls["metrics"][1][1]["train_loss"] == pytest.approx(result.history[1]["train_loss"])
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(ConfigError, match=r"pip install 'prunekit\[mlflow\]'"):
        MLflowLog()


def test_a_model_partly_pruned_with_torch_nn_utils_prune_is_refused_not_half_pruned():
    from torch.nn.utils import prune as torch_prune

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    torch_prune.l1_unstructured(model[2], "weight", amount=0.5)  # one of two layers
    with pytest.raises(ConfigError, match=r"2\.weight .*torch\.nn\.utils\.prune.*from_torch_prune"):
        prunekit.prune(model, "magnitude", 0.5)


def test_errors_are_reported_at_their_real_origin():
    from prunekit.errors import DataError, ScoreError, UserCodeError

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    data = [(torch.randn(8, 1, 4, 4), torch.randint(0, 4, (8,)))]

    def broken_loss(logits, targets):
        raise KeyError("my_metric")

    with pytest.raises(UserCodeError, match="your loss_fn raised KeyError: 'my_metric'") as info:
        prunekit.prune(model, "snip", 0.5, data=data, loss_fn=broken_loss)
    assert isinstance(info.value.__cause__, KeyError)

    def broken_output(out):
        raise IndexError("no such head")

    with pytest.raises(UserCodeError, match="your output_fn raised IndexError: no such head"):
        prunekit.prune(model, "snip", 0.5, data=data, output_fn=broken_output)

    class AuxFirst(nn.Module):  # returns (aux features, logits): the default contract takes the first
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU())
            self.head = nn.Linear(8, 4)

        def forward(self, x):
            h = self.body(x)
            return h.unsqueeze(1).expand(-1, 3, -1), self.head(h)

    with pytest.raises(ScoreError, match="output_fn=") as info:
        prunekit.prune(AuxFirst(), "snip", 0.5, data=data)
    assert "check that the data has the input shape" not in str(info.value)
    tokens = [(torch.randn(8, 1, 4, 4), torch.randint(0, 4, (8, 5)))]  # one target per position, not per sample
    with pytest.raises(DataError, match="samples_per_class=None"):
        prunekit.prune(model, "grasp", 0.5, data=tokens, loss_fn=lambda out, y: out.sum() * 0 + y.float().mean())


def test_prospr_names_weights_that_never_reach_the_logits_like_the_other_methods():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(6, 3)
            self.spare = nn.Linear(6, 3)  # never called

        def forward(self, x):
            return self.used(x)

    data = [(torch.randn(8, 6), torch.randint(0, 3, (8,))) for _ in range(4)]
    for method in ("snip", "prospr"):
        with pytest.warns(prunekit.PrunekitWarning, match="'spare.weight' do not affect the logits"):
            prunekit.prune(Unused(), method, 0.5, data=data)


# any model (and any map-style dataset) on the command line ---------------------------------------------
BUILDERS = '''
import torch
from torch import nn

def small_cnn(num_classes, width=8):
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(4 * width, num_classes))

class Pairs(torch.utils.data.Dataset):
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % 3
        self.images = torch.rand(n, 1, 8, 8, generator=g) * 0.2
        for c in range(3):
            self.images[self.labels == c, 0, 2 * c, :] = 1.0  # a bright row per class
    def __len__(self):
        return len(self.labels)
    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])

def pairs():
    return Pairs(120, 0), Pairs(30, 1)
'''


def test_any_importable_model_and_dataset_builder_runs_from_the_command_line(tmp_path, monkeypatch, capsys):
    from prunekit.cli import main
    from prunekit.experiments import ResultsDB

    (tmp_path / "my_models.py").write_text(BUILDERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "o"
    argv = ["run", "--model", "my_models:small_cnn", "--model-args", "width=6", "--dataset", "my_models:pairs", "--method", "snip",
            "--sparsity", "0.5", "--recipe", "lenet-fmnist", "--epochs", "2", "--train", "val_size=0", "--train", "batch_size=20",
            "--out", str(out), "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    with ResultsDB(out / "results.db") as db:
        (row,) = db.runs()
    assert row.status == "done" and row.config["model"] == "my_models:small_cnn" and row.config["init"] == "builder"
    assert row.config["model_kwargs"] == {"width": 6} and row.final_acc > 0.5  # the rows it learns to tell apart
    assert main([*argv[:2], "my_models:no_such", *argv[3:]]) == 2
    assert "has no callable 'no_such'" in capsys.readouterr().err


def test_timm_and_torchvision_names_build_through_their_packages(monkeypatch):
    import sys
    import types

    from prunekit import models
    from prunekit.errors import ConfigError

    calls = []
    fake_timm = types.ModuleType("timm")
    fake_timm.create_model = lambda name, pretrained, num_classes, in_chans, **kw: (
        calls.append((name, pretrained, num_classes, in_chans)) or nn.Sequential(nn.Flatten(), nn.Linear(in_chans * 16, num_classes)))
    fake_vision = types.ModuleType("torchvision.models")
    fake_vision.get_model = lambda name, weights, num_classes, **kw: (calls.append((name, weights, num_classes)) or nn.Linear(3, num_classes))
    monkeypatch.setitem(sys.modules, "timm", fake_timm)
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision.models", fake_vision)
    net = models.create("timm:resnet18", 7, (2, 4, 4), seed=0)
    assert calls[-1] == ("resnet18", False, 7, 2) and net(torch.randn(1, 2, 4, 4)).shape == (1, 7)
    models.create("torchvision:mobilenet_v2", 5, (3, 4, 4), seed=0)
    assert calls[-1] == ("mobilenet_v2", None, 5)
    monkeypatch.setitem(sys.modules, "timm", None)  # not installed
    with pytest.raises(ConfigError, match="pip install timm"):
        models.create("timm:resnet18", 7, (2, 4, 4))

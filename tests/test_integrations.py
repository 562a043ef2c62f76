"""Hugging Face and Lightning: every method on a tiny BERT and GPT-2 built from a config (no hub),
the two callbacks through real training steps, and the README's examples run word for word."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import prunekit
from prunekit import ConfigError, Masks
from prunekit.integrations import huggingface_callback, lightning_callback

transformers = pytest.importorskip("transformers")  # a test dependency ([test] extra); skipped only outside it
lightning = pytest.importorskip("lightning")

FAST = {"force": {"num_steps": 3}, "iter_snip": {"num_steps": 3}, "synflow": {"num_steps": 3}, "grasp": {"samples_per_class": 2},
        "grasp_abs": {"samples_per_class": 2}}


def tiny(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "bert":
        cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=32, max_position_embeddings=32, num_labels=3)
        return transformers.BertForSequenceClassification(cfg)
    cfg = transformers.GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=32, num_labels=3, pad_token_id=0,
                                  bos_token_id=1, eos_token_id=1)
    return transformers.GPT2ForSequenceClassification(cfg)


def text_batches(n: int = 4, size: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [({"input_ids": torch.randint(1, 50, (size, 10), generator=g), "attention_mask": torch.ones(size, 10, dtype=torch.long)},
             torch.randint(0, 3, (size,), generator=g)) for _ in range(n)]


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
@pytest.mark.parametrize("method", prunekit.list_methods())
def test_every_method_on_a_tiny_hugging_face_model(kind, method):
    model = tiny(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", prunekit.PrunekitWarning)
        masks = prunekit.prune(model, method, 0.8, data=text_batches(), **FAST.get(method, {}))
    assert masks.kept == round(0.2 * masks.size)
    names = list(masks)
    if kind == "gpt2":  # GPT-2's attention and MLP are transformers' Conv1D, pruned like Linear
        assert "transformer.h.0.attn.c_attn.weight" in names and "transformer.h.1.mlp.c_fc.weight" in names
    else:
        assert "bert.encoder.layer.0.attention.self.query.weight" in names
    assert not any("embeddings" in n or "wte" in n or "wpe" in n for n in names)


def test_the_hugging_face_callback_keeps_masks_through_adamw_and_logs_sparsity(tmp_path):
    model = tiny("bert")
    masks = prunekit.prune(model, "snip", 0.9, data=text_batches())
    g = torch.Generator().manual_seed(1)
    rows = [{"input_ids": torch.randint(1, 50, (10,), generator=g), "attention_mask": torch.ones(10, dtype=torch.long),
             "labels": torch.tensor(i % 3)} for i in range(64)]
    callback = huggingface_callback(masks)
    args = transformers.TrainingArguments(str(tmp_path), max_steps=6, per_device_train_batch_size=16, learning_rate=5e-3,
                                          weight_decay=0.1, logging_steps=2, save_strategy="no", report_to=[], use_cpu=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    logged: list[float] = []

    class Record(transformers.TrainerCallback):  # a logger after ours (TensorBoard, W&B, ...) sees the sparsity
        def on_log(self, args, state, control, logs=None, **kwargs):
            logged.append(logs["sparsity"])

    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows, callbacks=[callback, Record()])
    trainer.train()
    assert masks.is_applied(model)
    assert not any("parametrizations" in n for n, _ in model.named_parameters())  # baked: plain weights again
    name = max(masks, key=lambda n: int(masks[n].sum()))
    w = dict(model.named_parameters())[name].detach()
    assert not torch.equal(w[masks[name]], before[name][masks[name]])  # kept weights trained
    assert len(logged) == 4 and all(s >= 0.9 for s in logged)


def test_the_lightning_callback_prunes_at_fit_start_and_keeps_the_masks():
    class Module(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(2)
            self.net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))
            self.seen = []

        def training_step(self, batch, index):
            x, y = batch
            self.seen.append(float((self.net[0].weight == 0).float().mean()))
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.05)

    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(96, 6, generator=g), torch.randint(0, 3, (96,), generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    module = Module()
    callback = lightning_callback(method="magnitude", sparsity=0.75, submodule="net")
    trainer = lightning.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False, callbacks=[callback],
                                enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, loader)
    masks = callback.pruning.masks
    assert masks.is_applied(module.net) and masks.sparsity == pytest.approx(0.75, abs=1e-3)
    assert len(module.seen) == 6 and min(module.seen) > 0.5  # every step saw the pruned network
    assert trainer.callback_metrics["sparsity"] >= 0.75


def test_callbacks_refuse_ambiguous_or_missing_arguments():
    with pytest.raises(ConfigError, match="either masks"):
        huggingface_callback()
    with pytest.raises(ConfigError, match="either masks"):
        lightning_callback(Masks({"w": torch.ones(2)}), method="snip", sparsity=0.5)
    with pytest.raises(ConfigError, match="sparsity"):
        lightning_callback(method="snip")



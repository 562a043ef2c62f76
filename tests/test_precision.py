"""Training precision: bf16 autocast and channels-last where the device runs them natively, fp32 masks,
exact resume, fp32 BatchNorm statistics, and run keys that tell the precisions apart."""

import logging
from dataclasses import replace

import pytest
import torch
from torch import nn

import prunekit
from conftest import TINY_TRAIN
from prunekit import models, training
from prunekit.core.masks import Masks
from prunekit.errors import ConfigError
from prunekit.experiments import DatasetCache, RunSpec, resolve, run_one
from prunekit.training import precision as prec
from resume_worker import toy_dataset


@pytest.fixture
def cpu_without_bf16(monkeypatch):
    monkeypatch.delenv(prec.ENV, raising=False)
    monkeypatch.setattr(prec, "cpu_native_bf16", lambda: (False, "no AVX-512 BF16 or AMX on this CPU"))


@pytest.fixture
def cpu_with_bf16(monkeypatch):
    monkeypatch.delenv(prec.ENV, raising=False)
    monkeypatch.setattr(prec, "cpu_native_bf16", lambda: (True, "AVX-512 BF16"))


def test_bf16_on_a_cpu_that_runs_it_natively(cpu_with_bf16):
    p = prec.resolve_precision(True, True, "cpu")
    assert p == prec.Precision("bf16", channels_last=True) and p.as_dict() == {"precision": "bf16", "memory_format": "channels_last"}
    assert prec.resolve_precision(False, True, "cpu").dtype == "fp32"  # amp=False asks for fp32
    assert not prec.resolve_precision(True, False, "cpu").channels_last


def test_fp32_with_one_notice_where_bf16_would_be_emulated(cpu_without_bf16, caplog):
    prec._notice_once.cache_clear()
    with caplog.at_level(logging.INFO, logger="prunekit"):
        for _ in range(3):
            assert prec.resolve_precision(True, True, "cpu") == prec.Precision("fp32", channels_last=True)
    notices = [r.getMessage() for r in caplog.records if "bf16" in r.getMessage()]
    assert len(notices) == 1 and "no AVX-512 BF16" in notices[0] and prec.ENV in notices[0]


def test_the_environment_forces_either_way(cpu_without_bf16, monkeypatch):
    monkeypatch.setenv(prec.ENV, "1")
    assert prec.resolve_precision(True, True, "cpu").dtype == "bf16"
    monkeypatch.setenv(prec.ENV, "0")
    assert prec.resolve_precision(True, True, "cuda").dtype == "fp32"
    monkeypatch.setenv(prec.ENV, "sometimes")
    with pytest.raises(ConfigError, match="PRUNEKIT_BF16 must be 1"):
        prec.resolve_precision(True, True, "cpu")


def test_cpu_detection_reads_the_processor_flags(monkeypatch):
    monkeypatch.setattr(prec.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    for flags, native in [({"avx512f", "avx2"}, False), ({"avx512f", "avx512_bf16"}, True), ({"amx_tile", "amx_bf16"}, True)]:
        monkeypatch.setattr(prec, "_cpu_flags", lambda flags=flags: frozenset(flags))
        assert prec.cpu_native_bf16()[0] is native, flags
    monkeypatch.setattr(prec.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(prec, "_cpu_flags", lambda: frozenset({"asimd", "bf16"}))
    assert prec.cpu_native_bf16() == (True, "Arm BF16")


def test_run_keys_tell_bf16_from_fp32_and_the_row_says_what_ran(tmp_path, tiny_mnist, monkeypatch):
    datasets = DatasetCache(str(tiny_mnist))
    spec = RunSpec("lenet5", "mnist", "snip", 0.9, 0, recipe="lenet-fmnist", epochs=1, train=TINY_TRAIN)
    monkeypatch.setenv(prec.ENV, "1")
    bf16 = run_one(spec, tmp_path / "out", datasets=datasets, device=torch.device("cpu"))
    monkeypatch.setenv(prec.ENV, "0")
    fp32 = run_one(spec, tmp_path / "out", datasets=datasets, device=torch.device("cpu"))
    assert bf16.status == fp32.status == "done" and bf16.key != fp32.key
    assert fp32.key == resolve(RunSpec("lenet5", "mnist", "snip", 0.9, 0, recipe="lenet-fmnist", epochs=1, train={**TINY_TRAIN, "amp": False})).key
    assert bf16.record.extra["precision"] == "bf16" and bf16.record.config["precision"] == "bf16"
    assert fp32.record.extra["precision"] == "fp32" and "precision" not in fp32.record.config
    assert bf16.record.extra["memory_format"] == "channels_last"
    # scoring never runs under the training precision: the two runs prune the same weights
    a, b = Masks.load(bf16.record.mask_path), Masks.load(fp32.record.mask_path)
    assert all(torch.equal(a[n], b[n]) for n in a)


def _bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def test_bf16_training_keeps_weights_optimizer_state_and_batchnorm_statistics_in_fp32():
    model = _bn_net()
    cfg = training.TrainConfig(epochs=1, batch_size=50, lr=0.05, schedule="constant")
    before = model[1].running_mean.clone()
    result = training.fit(model, toy_dataset(), cfg, device="cpu", progress=False, precision=prec.Precision("bf16", True))
    assert result.extra["precision"] == "bf16"
    bn = model[1]
    assert bn.running_mean.dtype == bn.running_var.dtype == torch.float32 and not torch.equal(bn.running_mean, before)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)


class _Interrupt(training.Callback):
    def on_batch_end(self, trainer, step):
        if trainer.epoch == 2 and step == 2:
            raise KeyboardInterrupt


class _StepFunction(training.Callback):
    def __init__(self, seen: list[str]):
        self.seen = seen

    def on_batch_end(self, trainer, step):
        self.seen.append(type(trainer.forward_model).__name__)


def _compiler_or_skip() -> None:
    try:
        prec.check_compile("cpu")
    except ConfigError as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("dtype,compile_", [("bf16", False), ("fp32", False), ("bf16", True)])
def test_resume_under_bf16_is_bit_exact(tmp_path, dtype, compile_):
    if compile_:
        _compiler_or_skip()
    ds = toy_dataset()
    cfg = training.TrainConfig(epochs=3, batch_size=50, lr=0.05, weight_decay=5e-4, schedule="cosine", val_size=50, compile=compile_)
    precision = prec.Precision(dtype, True)

    def train(ckpt, callbacks=()):
        model = models.create("lenet5", 10, (1, 28, 28), seed=0)
        masks = prunekit.prune(model, "random", 0.8, seed=0)
        result = training.fit(model, ds, cfg, masks=masks, seed=1, checkpoint=ckpt, callbacks=callbacks, device="cpu",
                              progress=False, precision=precision)
        return model, result

    ref, ref_result = train(tmp_path / "ref.ckpt")
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "run.ckpt", [_Interrupt()])
    assert training.load_checkpoint(tmp_path / "run.ckpt")["epoch"] == 2
    run, result = train(tmp_path / "run.ckpt")
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), run.state_dict().values()))
    assert [h["test_acc"] for h in ref_result.history] == [h["test_acc"] for h in result.history]
    assert result.extra.get("compiled", False) is compile_
    steps: list[str] = []
    train(tmp_path / "again.ckpt", [_StepFunction(steps)])
    assert set(steps) == {"OptimizedModule" if compile_ else "Classifier"}  # what the training step called
    # a checkpoint of one precision is not resumed in the other
    other = prec.Precision("fp32" if dtype == "bf16" else "bf16", True)
    model = models.create("lenet5", 10, (1, 28, 28), seed=0)
    with pytest.raises(training.CheckpointError, match=f"trained in {dtype}"):
        training.fit(model, ds, cfg, seed=1, checkpoint=tmp_path / "run.ckpt", device="cpu", progress=False, precision=other)
    if compile_:  # nor a compiled run's checkpoint in an eager run: another config
        with pytest.raises(training.CheckpointError, match="different config"):
            training.fit(model, ds, replace(cfg, compile=False), seed=1, checkpoint=tmp_path / "run.ckpt", device="cpu", progress=False,
                         precision=precision)


def test_a_compiled_run_is_another_run_and_trains_alone():
    spec = RunSpec("resnet20", "cifar10-jpg", "snip", 0.9, 0, recipe="cifar-cpu")
    eager, compiled = resolve(spec, "cpu"), resolve(replace(spec, train={"compile": True}), "cpu")
    assert "compile" not in eager.config["train"] and compiled.config["train"]["compile"] is True
    assert eager.key != compiled.key
    assert eager.group is not None and compiled.group is None  # the stacked engine trains eagerly: never grouped


def test_compile_without_a_cpp_compiler_is_refused_before_training(monkeypatch):
    from torch._inductor import cpp_builder

    def missing() -> str:
        raise RuntimeError("Failed to find a working C++ compiler")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", missing)
    model = _bn_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = training.TrainConfig(epochs=1, batch_size=50, lr=0.05, schedule="constant", compile=True)
    with pytest.raises(ConfigError, match=r"compile=True on the CPU needs a C\+\+ compiler .*compile=false"):
        training.fit(model, toy_dataset(), cfg, device="cpu", progress=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    # a run or sweep asking for it is refused when resolved, before anything is claimed or written
    with pytest.raises(ConfigError, match="needs a C\\+\\+ compiler"):
        resolve(RunSpec("lenet5", "mnist", "snip", 0.9, 0, recipe="lenet-fmnist", train={"compile": True}), "cpu")


def test_the_stacked_engine_refuses_compile():
    from prunekit.stacked import StackedTrainer

    cfg = training.TrainConfig(epochs=1, batch_size=50, compile=True)
    with pytest.raises(ConfigError, match="stacked engine trains eagerly"):
        StackedTrainer([], toy_dataset(), cfg, torch.device("cpu"))

"""Bad input: one clear error, nothing changed."""

import math

import pytest
import torch
from torch import nn

import prunekit
from conftest import SmallCNN, make_batches


@pytest.fixture
def model():
    torch.manual_seed(0)
    return SmallCNN()


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, math.nan, math.inf, "0.5", True, None])
def test_sparsity_outside_range(model, bad):
    with pytest.raises(prunekit.ConfigError, match="sparsity|density"):
        prunekit.prune(model, "random", bad)


def test_density_is_the_complement_and_not_both(model):
    a = prunekit.prune(model, "magnitude", density=0.25)
    b = prunekit.prune(model, "magnitude", 0.75)
    assert a == b and a.meta["density"] == pytest.approx(0.25)
    with pytest.raises(prunekit.ConfigError, match="exactly one"):
        prunekit.prune(model, "magnitude", 0.75, density=0.25)
    with pytest.raises(prunekit.ConfigError, match="density"):
        prunekit.prune(model, "magnitude", density=0.0)


def test_sparsity_zero_keeps_everything(model):
    assert prunekit.prune(model, "random", 0.0).sparsity == 0.0


def test_unknown_method_lists_the_valid_names(model):
    with pytest.raises(prunekit.ConfigError) as err:
        prunekit.prune(model, "snipp", 0.9)
    msg = str(err.value)
    assert "'snipp'" in msg and all(name in msg for name in prunekit.list_methods())


def test_unknown_option_names_it_and_lists_valid_ones(model):
    with pytest.raises(prunekit.ConfigError) as err:
        prunekit.prune(model, "force", 0.9, data=make_batches((1, 16, 16), 10), num_step=5)
    assert "'num_step'" in str(err.value) and "num_steps" in str(err.value)
    with pytest.raises(prunekit.ConfigError, match="valid options: none"):
        prunekit.prune(model, "random", 0.9, num_steps=3)


@pytest.mark.parametrize(
    "opts", [{"num_steps": 0}, {"num_steps": 2.5}, {"schedule": "cosine"}, {"bn_mode": "frozen"}, {"num_batches": True}]
)
def test_bad_option_values(model, opts):
    with pytest.raises(prunekit.ConfigError, match=next(iter(opts))):
        prunekit.prune(model, "force", 0.9, data=make_batches((1, 16, 16), 10), **opts)


@pytest.mark.parametrize("method", ["snip", "grasp", "grasp_abs", "iter_snip", "force", "prospr"])
def test_data_driven_method_without_data(model, method):
    with pytest.raises(prunekit.ConfigError, match="needs data"):
        prunekit.prune(model, method, 0.9)


def test_nan_scores_are_an_error_and_change_nothing(model):
    with torch.no_grad():
        model.conv2.weight[0, 0, 0, 0] = math.nan
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(prunekit.ScoreError, match="NaN/inf"):
        prunekit.prune(model, "snip", 0.9, data=make_batches((1, 16, 16), 10))
    with pytest.raises(prunekit.ScoreError, match="conv2.weight"):
        prunekit.prune(model, "magnitude", 0.9)
    after = model.state_dict()
    for k in before:
        assert torch.equal(before[k], after[k]) or (before[k].isnan() == after[k].isnan()).all()


def test_model_without_prunable_parameters():
    with pytest.raises(prunekit.ConfigError, match="no prunable parameters"):
        prunekit.prune(nn.Sequential(nn.BatchNorm1d(3), nn.ReLU()), "random", 0.5)


def test_prunable_patterns(model):
    names = list(prunekit.prunable_parameters(model, exclude="fc.weight"))
    assert names == ["conv1.weight", "conv2.weight"]
    names = list(prunekit.prunable_parameters(model, include=["*.weight"], exclude=["bn*"]))
    assert names == ["conv1.weight", "conv2.weight", "fc.weight"]
    with pytest.raises(prunekit.ConfigError, match="matches no parameter"):
        prunekit.prunable_parameters(model, exclude="fc.weigth")
    masks = prunekit.prune(model, "magnitude", 0.9, exclude="fc.weight")
    assert list(masks) == ["conv1.weight", "conv2.weight"]


def test_unknown_allocation(model):
    with pytest.raises(prunekit.ConfigError, match="allocation.*erk"):
        prunekit.prune(model, "random", 0.5, allocation="uniform")


@pytest.mark.parametrize("data", [torch.randn(3, 1, 16, 16), 5, [torch.randn(2, 1, 16, 16)], [(torch.randn(2, 1, 16, 16), torch.zeros(3))], []])
def test_malformed_data(model, data):
    with pytest.raises((prunekit.ConfigError, prunekit.DataError)):
        prunekit.prune(model, "snip", 0.5, data=data)


def test_one_shot_iterator_that_runs_out(model):
    batches = iter(make_batches((1, 16, 16), 10, n=2))
    with pytest.raises(prunekit.DataError, match="re-iterable"):
        prunekit.prune(model, "force", 0.9, data=batches, num_steps=5)


def test_bad_seed(model):
    with pytest.raises(prunekit.ConfigError, match="seed"):
        prunekit.prune(model, "random", 0.5, seed=-1)

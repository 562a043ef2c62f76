import math

import pytest
import torch

import prunekit
from prunekit import models
from prunekit.errors import ConfigError

SMALL = ["lenet_300_100", "lenet5", "conv2", "conv4", "conv6", "resnet20", "resnet32", "vgg11", "vgg11_bn", "vgg16_bn"]


@pytest.mark.parametrize("name", models.list_models())
def test_every_model_builds_and_runs(name):
    shape = (1, 28, 28) if name.startswith(("lenet", "conv")) else (3, 32, 32)
    model = models.create(name, num_classes=7, input_shape=shape, seed=0).eval()
    with torch.no_grad():
        assert model(torch.randn(2, *shape)).shape == (2, 7)


@pytest.mark.parametrize("name", SMALL)
def test_models_take_the_input_shape_of_the_dataset(name):
    for shape in [(1, 28, 28), (3, 32, 32), (3, 64, 64)]:
        model = models.create(name, num_classes=200, input_shape=shape).eval()
        with torch.no_grad():
            assert model(torch.randn(2, *shape)).shape == (2, 200)


def _prunable(model):
    return sum(p.numel() for p in prunekit.prunable_parameters(model).values())


def test_published_sizes():
    assert _prunable(models.create("lenet_300_100", 10, (1, 28, 28))) == 266_200
    assert _prunable(models.create("lenet5", 10, (1, 28, 28))) == 430_500
    assert _prunable(models.create("vgg19_bn", 10)) == 20_024_000  # 16 convs + Linear(512, 10)
    # GraSP's ResNet32-2x: widths 32/64/128, projection shortcuts
    r = models.create("resnet32", 10, width=2)
    assert r.conv1.out_channels == 32 and r.fc.in_features == 128
    a = models.create("resnet20", 10, shortcut="A")
    b = models.create("resnet20", 10)
    assert _prunable(b) - _prunable(a) == 16 * 32 + 32 * 64  # the two 1x1 projections


def test_lenet5_is_the_caffe_variant():
    m = models.create("lenet5", 10, (1, 28, 28))
    convs = [l for l in m.modules() if isinstance(l, torch.nn.Conv2d)]
    linears = [l for l in m.modules() if isinstance(l, torch.nn.Linear)]
    assert [c.out_channels for c in convs] == [20, 50] and [l.out_features for l in linears] == [500, 10]
    assert linears[0].in_features == 800


@torch.no_grad()
def test_initialisations():
    torch.manual_seed(0)
    m = models.create("vgg11_bn", 10, init="grasp", seed=1)
    assert abs(float(m.classifier.weight.std()) - 0.01) < 0.002
    conv = m.features[0]
    fan_out = conv.out_channels * 9
    assert abs(float(conv.weight.std()) - math.sqrt(2 / fan_out)) < 0.1 * math.sqrt(2 / fan_out)
    k = models.create("lenet_300_100", 10, (1, 28, 28), seed=1)
    w = k.classifier[0].weight
    assert abs(float(w.std()) - math.sqrt(2 / 784)) < 0.05 * math.sqrt(2 / 784)
    assert float(k.classifier[0].bias.abs().sum()) == 0
    u = models.create("resnet20", 10, bn_gamma="uniform", seed=1)
    assert float(u.bn1.weight.min()) >= 0 and float(u.bn1.weight.max()) <= 1 and float(u.bn1.weight.std()) > 0.1


def test_seeded_creation_is_reproducible_and_leaves_global_rng():
    state = torch.get_rng_state()
    a = models.create("resnet20", 10, seed=3)
    b = models.create("resnet20", 10, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_bad_model_arguments():
    with pytest.raises(ConfigError, match="resnet20"):
        models.create("resnet21")
    with pytest.raises(ConfigError, match="init"):
        models.create("resnet20", init="xavier")
    with pytest.raises(ConfigError, match="shortcut"):
        models.create("resnet20", shortcut="C")
    with pytest.raises(ConfigError, match="bad arguments"):
        models.create("lenet5", 10, (1, 28, 28), width=2)
    with pytest.raises(ConfigError, match="num_classes"):
        models.create("lenet5", 0)

"""Every method on models as users bring them (tests/real_models.py): at 90 % and 99 % sparsity the mask
leaves a path from input to output, whatever the initialisation (a zero head, zero BatchNorm scales,
saturating ReLU6, a causal decoder over tokens)."""

import warnings

import pytest

import prunekit
from prunekit.core.pruning import score
from prunekit.errors import LayerCollapseError
from real_models import FAST, MODELS, NEEDS, build


@pytest.mark.parametrize("model_name", MODELS)
def test_every_method_keeps_a_path_from_input_to_output_or_says_it_cut_the_network(model_name):
    """A mask either leaves a path from input to output, or the collapse is the documented error
    (``collapse="error"``; by default a warning, and the run is marked) naming where it cut. An
    artefact of the model's initialisation (a zero head, zero BatchNorm scales) never cuts it."""
    cut = []
    for method in prunekit.list_methods():
        for sparsity in (0.9, 0.99):
            model, data, kwargs = build(model_name)
            options = {**FAST.get(method, {}), **NEEDS.get((model_name, method), {})}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    masks = prunekit.prune(model, method, sparsity, data=data, seed=0, collapse="error", **kwargs, **options)
                except LayerCollapseError as exc:
                    assert "no path from input to output" in str(exc) and "first cut at" in str(exc)
                    cut.append(method)
                    continue
            assert masks.meta["disconnected"] is False, (method, sparsity)  # connectivity known, and a path left
            assert abs(masks.density - (1 - sparsity)) < 1e-3
    assert len(cut) < 2 * len(prunekit.list_methods())  # most masks keep the network connected


@pytest.mark.parametrize("model_name", ["vit-zero-head", "resnet-zero-gamma"])
def test_an_initialisation_artefact_no_longer_cuts_the_network_at_90_percent(model_name):
    """Parameter order gave the zero-scored places to the first tensors and emptied the later ones
    (ties="index", prunekit's rule before); spread at random and with zero tensors reserved, the
    gradient methods keep every layer of the path."""
    for method in ("snip", "iter_snip", "force", "synflow"):
        model, data, kwargs = build(model_name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            masks = prunekit.prune(model, method, 0.9, data=data, **kwargs, **FAST.get(method, {}))
        assert masks.meta["disconnected"] is False and not masks.meta["empty_layers"], (method, masks.meta["empty_layers"])


def test_a_zero_initialised_head_is_named_and_its_ties_are_spread_not_given_to_the_first_layers():
    model, data, _ = build("vit-zero-head")
    with pytest.warns(prunekit.PrunekitWarning, match=r"head\.weight \(the last prunable layer: a zero-initialised classifier head\?\)"):
        masks = prunekit.prune(model, "snip", 0.9, data=data)
    assert all(v == 0 for v in score(model, "snip", data=data).values() for v in [float(v.abs().max())])  # every score 0
    # parameter order kept the first tensors whole and emptied the rest; spread, every layer keeps about 10 %
    densities = {n: float(m.float().mean()) for n, m in masks.items()}
    assert all(0.05 < d < 0.15 for d in densities.values()), densities
    index = prunekit.prune(model, "snip", 0.9, data=data, ties="index")
    assert index.meta["empty_layers"] and not masks.meta["empty_layers"]  # the old rule's collapse, and not the new one's


def test_zero_batchnorm_scales_are_named():
    model, data, _ = build("resnet-zero-gamma")
    with pytest.warns(prunekit.PrunekitWarning, match=r"BatchNorm scales exactly zero: .*bn2"):
        prunekit.prune(model, "snip", 0.9, data=data)


def test_collapse_can_be_made_an_error():
    model, data, _ = build("mobilenet-relu6")
    empty = prunekit.Masks({n: m & False if i == 2 else m for i, (n, m) in enumerate(prunekit.prune(model, "magnitude", 0.5).items())})
    assert empty.report(model, input_shape=(3, 16, 16)).disconnected
    with pytest.raises(prunekit.ConfigError, match="collapse must be"):
        prunekit.prune(model, "magnitude", 0.5, collapse="maybe")

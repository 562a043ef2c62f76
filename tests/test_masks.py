"""The Masks object: report, effective density, files, export, validation."""

import os
import warnings

import pytest
import torch
from torch import nn

import prunekit
from conftest import SmallCNN, make_batches
from prunekit import Masks


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 2, bias=False))


# hidden unit 0 gets no input, hidden unit 3 sends no output
M1 = torch.tensor([[0, 0, 0], [1, 0, 1], [0, 1, 0], [1, 1, 0]], dtype=torch.bool)
M2 = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0]], dtype=torch.bool)


def test_report_nominal_and_effective_density_by_hand():
    model = _mlp()
    masks = Masks({"0.weight": M1, "2.weight": M2})
    report = masks.report(model, input_shape=(3,))
    first, second = report.rows
    assert (first.size, first.kept, first.effective_kept) == (12, 5, 3)  # row 3 of W1 feeds a unit with no output
    assert (second.size, second.kept, second.effective_kept) == (8, 4, 2)  # column 0 of W2 reads a unit with no input
    assert first.density == pytest.approx(5 / 12) and first.effective_density == pytest.approx(3 / 12)
    assert report.density == pytest.approx(9 / 20) and report.effective_density == pytest.approx(5 / 20)
    text = str(report)
    assert "0.weight" in text and "effective" in text and "total" in text
    assert "| 2.weight | 2x4 | 8 | 4 |" in report.to_markdown()


def test_effective_density_through_bn_maxpool_and_residual():
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(1, 2, 3, padding=1)
            self.bn = nn.BatchNorm2d(2)
            self.b = nn.Conv2d(2, 2, 3, padding=1)
            self.fc = nn.Linear(2 * 4 * 4, 3)

        def forward(self, x):
            h = torch.relu(self.bn(self.a(x)))
            h = h + self.b(h)
            return self.fc(torch.max_pool2d(h, 2).flatten(1))

    model = Res()
    dense = Masks.ones(model)
    report = dense.report(model, input_shape=(1, 8, 8))
    assert all(r.effective_kept == r.kept for r in report.rows)  # nothing dead in a dense net
    # prune every input of channel 1 of conv a; the residual branch b still reads channel 0
    ma = torch.ones(2, 1, 3, 3, dtype=torch.bool)
    ma[1] = False
    masks = Masks({"a.weight": ma, "b.weight": torch.ones(2, 2, 3, 3, dtype=torch.bool), "fc.weight": torch.ones(3, 32, dtype=torch.bool)})
    rows = {r.name: r for r in masks.report(model, input_shape=(1, 8, 8)).rows}
    assert rows["a.weight"].effective_kept == 9
    assert rows["b.weight"].effective_kept == 18  # b's weights reading dead channel 1 are dead
    assert rows["fc.weight"].effective_kept == 96  # channel 1 is revived by b's output through the residual sum


def test_layer_collapse_is_flagged_with_a_warning():
    model = _mlp()
    masks = Masks({"0.weight": M1, "2.weight": torch.zeros(2, 4, dtype=torch.bool)})
    with pytest.warns(UserWarning, match="layer collapse"):
        report = masks.report(model, input_shape=(3,))
    assert report.collapsed == ["0.weight", "2.weight"]  # W1 has kept weights, but none reaches the output
    assert report.empty == ["2.weight"] and report.disconnected is True
    assert "<- no path" in str(report) and "<- empty" in str(report) and "disconnected" in report.to_markdown()


def test_report_without_input_shape_says_why():
    masks = Masks({"0.weight": M1, "2.weight": M2})
    report = masks.report(_mlp())
    assert report.rows[0].effective_density is None and "input_shape=" in report.note


def test_prune_records_input_shape_so_report_has_effective_density():
    model = SmallCNN()
    masks = prunekit.prune(model, "snip", 0.99, data=make_batches((1, 16, 16), 10))
    assert masks.meta["input_shape"] == [1, 16, 16]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = masks.report(model)
    assert report.effective_density is not None and report.effective_density <= report.density


def test_save_load_roundtrip(tmp_path):
    model = SmallCNN()
    masks = prunekit.prune(model, "random", 0.9, seed=4)
    path = masks.save(tmp_path / "sub" / "m.pt")
    loaded = Masks.load(path, model=model)
    assert loaded == masks and loaded.meta == masks.meta and loaded.meta["method"] == "random"
    raw = torch.load(path, weights_only=True)  # plain tensors, no pickled classes
    assert raw["format"] == "prunekit-masks"
    assert os.path.getsize(path) < 3500  # bit-packed (the metadata is most of it)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["m.pt"]  # no temporary files left


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    masks = Masks({"w": torch.ones(3, dtype=torch.bool)})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        masks.save(tmp_path / "m.pt")
    assert list(tmp_path.iterdir()) == []


def test_mask_file_that_does_not_match_the_model(tmp_path):
    path = prunekit.prune(SmallCNN(), "random", 0.5).save(tmp_path / "m.pt")
    with pytest.raises(prunekit.MaskError, match="conv1.weight.*not a parameter|not a parameter"):
        Masks.load(path, model=nn.Sequential(nn.Linear(2, 2)))
    other = SmallCNN(classes=3)  # same names, different fc shape
    with pytest.raises(prunekit.MaskError, match="fc.weight.*shape"):
        Masks.load(path, model=other)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(prunekit.MaskError):
        Masks.load(path).apply(other)  # conv1/conv2 match, fc does not: nothing may be half-applied
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())


@pytest.mark.parametrize("damage", ["truncate", "garbage", "foreign", "bitflip", "empty"])
def test_corrupt_mask_files_give_one_clear_error(tmp_path, damage):
    path = prunekit.prune(SmallCNN(), "random", 0.5).save(tmp_path / "m.pt")
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(500))
    elif damage == "foreign":
        torch.save({"weights": torch.ones(3)}, path)
    elif damage == "bitflip":
        payload = torch.load(path, weights_only=True)
        payload["bits"][0][0] ^= 1
        torch.save(payload, path)
    else:
        path.write_bytes(b"")
    with pytest.raises(prunekit.MaskFileError):
        Masks.load(path)


def test_missing_mask_file(tmp_path):
    with pytest.raises(prunekit.MaskFileError, match="does not exist"):
        Masks.load(tmp_path / "nope.pt")


def test_to_torch_prune_layout_and_equivalence():
    torch.manual_seed(0)
    model = SmallCNN().eval()
    masks = prunekit.prune(model, "magnitude", 0.8)
    reference = SmallCNN().eval()
    reference.load_state_dict(model.state_dict())
    masks.apply(reference)
    masks.to_torch_prune(model)
    names = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    assert "conv1.weight_orig" in names and "fc.weight_orig" in names and "conv1.weight" not in names
    assert torch.equal(buffers["fc.weight_mask"].bool(), masks["fc.weight"])
    x = torch.randn(4, 1, 16, 16)
    torch.testing.assert_close(model(x), reference(x))


def test_masks_validate_their_values():
    with pytest.raises(prunekit.MaskError, match="only 0 and 1"):
        Masks({"w": torch.tensor([0.0, 0.5])})
    with pytest.raises(prunekit.MaskError):
        Masks({})
    m = Masks({"w": torch.tensor([1, 0, 1])})
    assert m["w"].dtype == torch.bool and m.sparsity == pytest.approx(1 / 3)


def test_masks_are_a_read_only_mapping():
    m = Masks({"a": torch.ones(2, dtype=torch.bool), "b": torch.zeros(2, dtype=torch.bool)})
    assert list(m.keys()) == ["a", "b"] and len(m) == 2 and dict(m.items()).keys() == {"a", "b"}
    with pytest.raises(TypeError):
        m["a"] = torch.ones(2)  # type: ignore[index]
    assert m.density == 0.5


def test_apply_twice_and_remove():
    model = nn.Linear(4, 3)
    masks = Masks({"weight": torch.tensor([[1, 0, 1, 0]] * 3)})
    masks.apply(model)
    masks.apply(model)  # replaces the mask rather than stacking
    assert len(model.parametrizations.weight) == 1
    original = model.parametrizations.weight.original
    model(torch.randn(2, 4)).sum().backward()
    assert (original.grad[:, 1] == 0).all() and (original.grad[:, 0] != 0).all()
    Masks({"weight": torch.tensor([[0, 1, 1, 1]] * 3)}).apply(model)  # a new mask replaces the old one
    assert (model.weight[:, 0] == 0).all() and (model.weight[:, 1] == 0).all()  # column 1 was zeroed before
    masks.remove(model)
    assert isinstance(model.weight, nn.Parameter) and model.weight is original  # a plain parameter again, same object
    model.weight.grad = None
    model(torch.randn(2, 4)).sum().backward()
    assert (model.weight.grad[:, 1] != 0).all()


def test_outside_changes_cannot_revive_an_applied_mask_and_enforce_rezeros_plain_weights():
    model = nn.Linear(4, 3)
    masks = Masks({"weight": torch.tensor([[1, 0, 1, 0]] * 3)})
    masks.apply(model)
    with torch.no_grad():
        model.parametrizations.weight.original.add_(1.0)  # e.g. stale momentum from dense training
    assert masks.is_applied(model)  # the forward pass multiplies by the mask
    plain = nn.Linear(4, 3)
    masks.enforce(plain)
    assert masks.is_applied(plain)
    with torch.no_grad():
        plain.weight.add_(1.0)
    assert not masks.is_applied(plain)
    masks.enforce(plain)
    assert masks.is_applied(plain)


def test_applied_masks_travel_with_the_model_through_deepcopy_and_state_dict(tmp_path):
    import copy

    torch.manual_seed(1)
    model = SmallCNN()
    masks = prunekit.prune(model, "magnitude", 0.8)
    masks.apply(model)
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(twin.parameters(), lr=0.01, momentum=0.9, weight_decay=0.1)
    x = torch.randn(8, 1, 16, 16)
    for _ in range(3):
        opt.zero_grad()
        twin(x).square().sum().backward()
        opt.step()
    assert masks.is_applied(twin)  # the copy trains, its pruned weights stay exactly zero
    torch.save(twin.state_dict(), tmp_path / "sd.pt")
    assert any(k.endswith("parametrizations.weight.0.mask") for k in twin.state_dict())
    fresh = SmallCNN()
    Masks.ones(fresh).apply(fresh)  # the same structure, no pruning
    fresh.load_state_dict(torch.load(tmp_path / "sd.pt", weights_only=True))
    assert masks.is_applied(fresh)  # the mask came back with the weights
    torch.testing.assert_close(fresh.eval()(x), twin.eval()(x))


def test_from_model_recovers_the_masks_of_a_pruned_model():
    model = SmallCNN()
    masks = prunekit.prune(model, "magnitude", 0.7)
    masks.apply(model)
    assert Masks.from_model(model) == masks
    assert list(Masks.from_model(model, ["fc.weight"])) == ["fc.weight"]


def test_applied_masks_hold_under_torch_compile_and_ddp(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.manual_seed(3)
    model = SmallCNN().eval()
    masks = prunekit.prune(model, "magnitude", 0.8)
    masks.apply(model)
    x = torch.randn(4, 1, 16, 16)
    compiled = torch.compile(model, backend="aot_eager")  # graph capture through the parametrization
    torch.testing.assert_close(compiled(x), model(x))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(model.train())
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        for _ in range(3):
            opt.zero_grad()
            ddp(x).square().mean().backward()
            opt.step()
    finally:
        dist.destroy_process_group()
    assert masks.is_applied(model)

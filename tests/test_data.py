"""Dataset readers on small files in the official formats, loaders, splits and scoring data."""

import gzip
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prunekit import data
from prunekit.errors import ConfigError, DataError

FMNIST = Path("/usr/share/datasets/fashion-mnist")
REQUIRE_DATA = os.environ.get("PRUNEKIT_REQUIRE_DATA") == "1"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx_set(root: Path, n_train=6, n_test=4, compress=True):
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) * 3) % 10,
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        raw = _idx_bytes(arr)
        if compress:
            (root / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (root / name).write_bytes(raw)
    return arrays


@pytest.mark.parametrize("compress", [True, False])
def test_idx_reader_shapes_labels_order(tmp_path, compress):
    arrays = _write_idx_set(tmp_path / "mnist", compress=compress)
    ds = data.load_dataset("mnist", tmp_path / "mnist")
    assert ds.train.images.shape == (6, 1, 28, 28) and ds.test.images.shape == (4, 1, 28, 28)
    assert ds.train.images.dtype == torch.uint8
    assert np.array_equal(ds.train.images[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert ds.test.labels.tolist() == [0, 3, 6, 9]
    assert ds.num_classes == 10 and ds.input_shape == (1, 28, 28)


def test_idx_truncated_and_bad_magic(tmp_path):
    _write_idx_set(tmp_path / "m", compress=False)
    f = tmp_path / "m" / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated"):
        data.load_dataset("mnist", tmp_path / "m")
    f.write_bytes(b"\x01\x02\x03\x04" + b"\x00" * 100)
    with pytest.raises(DataError, match="magic"):
        data.load_dataset("mnist", tmp_path / "m")


def test_missing_dataset_says_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(DataError) as err:
        data.load_dataset("cifar10", tmp_path / "nowhere")
    assert "nowhere" in str(err.value) and "cifar-10" in str(err.value)
    with pytest.raises(DataError, match="nowhere|PRUNEKIT_DATA"):
        data.load_dataset("mnist")
    with pytest.raises(ConfigError, match="cifar10-jpg"):
        data.load_dataset("imagenet")


@pytest.mark.skipif(not FMNIST.exists() and not REQUIRE_DATA, reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    ds = data.load_dataset("fashion-mnist")
    assert len(ds.train) == 60_000 and len(ds.test) == 10_000
    assert ds.train.images.shape[1:] == (1, 28, 28)
    assert ds.train.labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]  # the official first labels
    assert torch.bincount(ds.train.labels).tolist() == [6000] * 10
    assert torch.bincount(ds.test.labels).tolist() == [1000] * 10
    mean = ds.train.images.float().mean() / 255
    assert abs(float(mean) - ds.info.mean[0]) < 1e-3


def _cifar_batch(n, label_key, seed):
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"batch",
        label_key: [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
        b"filenames": [b"f%d.png" % i for i in range(n)],
    }


def _write_cifar10(root: Path) -> dict:
    root.mkdir(parents=True)
    batches = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        batches[name] = _cifar_batch(3, b"labels", i)
        (root / name).write_bytes(pickle.dumps(batches[name], protocol=2))
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane"] * 10}))
    return batches


@pytest.mark.parametrize("as_tar", [False, True])
def test_cifar10_pickles(tmp_path, as_tar):
    batches = _write_cifar10(tmp_path / "cifar-10-batches-py")
    where = tmp_path
    if as_tar:
        where = tmp_path / "cifar-10-python.tar.gz"
        with tarfile.open(where, "w:gz") as tar:
            tar.add(tmp_path / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    ds = data.load_dataset("cifar10", where)
    assert ds.train.images.shape == (15, 3, 32, 32) and ds.test.images.shape == (3, 3, 32, 32)
    first = batches["data_batch_1"][b"data"][0]
    # official layout: 1024 red, then 1024 green, then 1024 blue values, row-major
    assert np.array_equal(ds.train.images[0, 0].numpy().ravel(), first[:1024])
    assert np.array_equal(ds.train.images[0, 2].numpy().ravel(), first[2048:])
    expected = sum((batches[f"data_batch_{k}"][b"labels"] for k in range(1, 6)), [])
    assert ds.train.labels.tolist() == expected  # batches concatenated in order
    assert ds.test.labels.tolist() == batches["test_batch"][b"labels"]


def test_cifar100_fine_and_coarse(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    for split in ("train", "test"):
        b = _cifar_batch(4, b"fine_labels", 1)
        b[b"fine_labels"] = [99, 0, 50, 7]
        b[b"coarse_labels"] = [19, 0, 10, 1]
        (root / split).write_bytes(pickle.dumps(b))
    assert data.load_dataset("cifar100", tmp_path).train.labels.tolist() == [99, 0, 50, 7]
    ds = data.load_dataset("cifar100", tmp_path, cifar100_labels="coarse")
    assert ds.test.labels.tolist() == [19, 0, 10, 1] and ds.num_classes == 20


def test_cifar_pickle_with_code_is_refused(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo hacked",))

    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        (root / name).write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DataError, match="not allowed|not a CIFAR"):
        data.load_dataset("cifar10", tmp_path)


def _png(color, size=(32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _write_tree(root: Path, layout: dict[str, dict[str, list[tuple]]], size=(32, 32)):
    for split, classes in layout.items():
        for cls, colors in classes.items():
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i, c in enumerate(colors):
                (root / split / cls / f"{i:04d}.png").write_bytes(_png(c, size))


LAYOUT = {
    "train": {"cat": [(255, 0, 0), (0, 255, 0)], "airplane": [(0, 0, 255)], "truck": [(1, 2, 3)]},
    "test": {"cat": [(10, 20, 30)], "truck": [(40, 50, 60)]},
}


@pytest.mark.parametrize("as_tar", [False, True])
def test_cifar10_jpg_tree_uses_cifar_label_order(tmp_path, as_tar):
    _write_tree(tmp_path / "cifar10-jpg", LAYOUT)
    where = tmp_path / "cifar10-jpg"
    if as_tar:
        where = tmp_path / "c.tar.gz"
        with tarfile.open(where, "w:gz") as tar:
            tar.add(tmp_path / "cifar10-jpg", arcname=".")
    ds = data.load_dataset("cifar10-jpg", where)
    # airplane=0, cat=3, truck=9 (CIFAR-10 order); sorted by label then file name
    assert ds.train.labels.tolist() == [0, 3, 3, 9]
    assert ds.train.images[1, :, 0, 0].tolist() == [255, 0, 0] and ds.train.images[2, :, 0, 0].tolist() == [0, 255, 0]
    assert ds.test.labels.tolist() == [3, 9] and ds.test.images[1, :, 5, 5].tolist() == [40, 50, 60]
    assert ds.train.images.shape == (4, 3, 32, 32)


def test_image_folder_resizes_and_reads_tiny_imagenet_val(tmp_path):
    root = tmp_path / "tiny"
    _write_tree(root, {"train": {"n01": [(255, 0, 0)], "n02": [(0, 255, 0), (0, 0, 255)]}}, size=(40, 30))
    (root / "val" / "images").mkdir(parents=True)
    (root / "val" / "images" / "val_0.png").write_bytes(_png((9, 9, 9), (64, 64)))
    (root / "val" / "images" / "val_1.png").write_bytes(_png((7, 7, 7), (64, 64)))
    (root / "val" / "val_annotations.txt").write_text("val_0.png\tn02\t0\t0\t1\t1\nval_1.png\tn01\t0\t0\t1\t1\n")
    (root / "test" / "images").mkdir(parents=True)  # unlabelled, must be ignored
    (root / "test" / "images" / "t.png").write_bytes(_png((1, 1, 1)))
    ds = data.load_dataset("image-folder", root, image_size=16)
    assert ds.train.images.shape == (3, 3, 16, 16) and ds.train.labels.tolist() == [0, 1, 1]
    # sorted by class, then path: val_1 (n01) before val_0 (n02)
    assert ds.test.labels.tolist() == [0, 1] and ds.test.images.shape == (2, 3, 16, 16)
    assert ds.test.images[0, :, 3, 3].tolist() == [7, 7, 7] and ds.test.images[1, :, 3, 3].tolist() == [9, 9, 9]
    assert ds.num_classes == 2 and ds.info.num_classes == 2
    (root / "train" / "n01" / "big.png").write_bytes(_png((3, 3, 3), (50, 50)))
    with pytest.raises(DataError, match="image_size"):
        data.load_dataset("image-folder", root)  # 40x30 and 50x50 in one split cannot be stacked


def test_decoded_trees_are_cached(tmp_path):
    _write_tree(tmp_path / "t", LAYOUT)
    a = data.load_dataset("cifar10-jpg", tmp_path / "t")
    entries = list((tmp_path / "cache").iterdir())
    assert len(entries) == 1 and (entries[0] / "train_x.npy").is_file()
    b = data.load_dataset("cifar10-jpg", tmp_path / "t")
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    (tmp_path / "t" / "train" / "cat" / "0002.png").write_bytes(_png((5, 5, 5)))  # content changed: new entry
    c = data.load_dataset("cifar10-jpg", tmp_path / "t")
    assert len(c.train) == 5


SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared/datasets/cifar10-jpg/cifar10-jpg.tar.gz"


@pytest.mark.skipif(not SHARED_CIFAR.exists(), reason="CIFAR-10-jpg tarball not present")
def test_real_cifar10_jpg_and_cached_load(monkeypatch):
    data.load_dataset("cifar10-jpg", SHARED_CIFAR)
    import PIL.Image

    def no_decoding(*args, **kwargs):
        raise AssertionError("the second load decoded JPEGs instead of reading the cache")

    monkeypatch.setattr(PIL.Image, "open", no_decoding)
    ds = data.load_dataset("cifar10-jpg", SHARED_CIFAR)
    assert len(ds.train) == 50_000 and len(ds.test) == 10_000
    assert torch.bincount(ds.train.labels).tolist() == [5000] * 10


def _toy(n=100, classes=4):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
    return data.ArrayDataset(images, torch.arange(n) % classes, [str(i) for i in range(classes)])


def _loader(ds, **kw):
    return data.DeviceLoader(ds, 16, mean=(0.5,) * 3, std=(0.25,) * 3, **kw)


def test_loader_is_seeded_and_covers_every_sample_once():
    ds = _toy()
    a = [y for _, y in _loader(ds, seed=1)]
    b = [y for _, y in _loader(ds, seed=1)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    labels = torch.cat(a)
    assert len(labels) == 100 and len(a) == 7
    loader = _loader(ds, seed=1)
    loader.set_epoch(1)
    assert not all(torch.equal(x, y) for x, (_, y) in zip(a, loader))


def test_loader_normalises_and_augments():
    ds = _toy()
    x, _ = next(iter(_loader(ds, shuffle=False)))
    expected = (ds.images[:16].float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(x, expected)
    aug = _loader(ds, shuffle=False, augment=True, crop_padding=2, seed=3)
    xa, _ = next(iter(aug))
    assert xa.shape == x.shape and not torch.equal(xa, x)
    # every augmented image is a shifted (and maybe flipped) crop of the zero-padded original
    padded = torch.nn.functional.pad(ds.images[:16].float(), (2, 2, 2, 2))
    raw = (xa * 0.25 + 0.5) * 255
    for i in range(16):
        found = False
        for dy in range(5):
            for dx in range(5):
                crop = padded[i, :, dy : dy + 8, dx : dx + 8]
                if torch.allclose(raw[i], crop, atol=1e-3) or torch.allclose(raw[i], crop.flip(2), atol=1e-3):
                    found = True
        assert found, i


def test_validation_split_is_seeded_and_disjoint():
    ds = _toy()
    train, val = data.split_validation(ds, 20, seed=5)
    assert len(train) == 80 and len(val) == 20
    rows = {tuple(r.flatten()[:12].tolist()) for r in torch.cat([train.images, val.images])}
    assert len(rows) == 100
    train2, val2 = data.split_validation(ds, 0.2, seed=5)
    assert torch.equal(val.images, val2.images)
    with pytest.raises(ConfigError):
        data.split_validation(ds, 100)


def test_scoring_batches_class_balanced_and_repeatable():
    ds = _toy(n=200, classes=4)
    (x, y), = data.scoring_batches(ds, batch_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, samples_per_class=5, seed=0)
    assert torch.bincount(y).tolist() == [5, 5, 5, 5] and x.shape == (20, 3, 8, 8)
    batches = data.scoring_batches(ds, batch_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, num_batches=3, seed=0)
    assert len(batches) == 3 and batches[0][0].shape == (32, 3, 8, 8)
    loader = data.scoring_batches(ds, batch_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, seed=0)
    first = [y for _, y in loader]
    again = [y for _, y in loader]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert torch.equal(first[0], batches[0][1])

"""Datasets by name: where they live, how to read them, their statistics.

``load_dataset(name, data_dir=None)`` returns a :class:`Dataset` with uint8 train and test images
``[N, C, H, W]``. Decoded JPEG trees are cached as ``.npy`` arrays (``$PRUNEKIT_CACHE`` or
``~/.cache/prunekit``) so that a second load takes well under two seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, DataError, unknown
from . import formats

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@dataclass
class ArrayDataset:
    """Images ``[N, C, H, W]`` (uint8) and labels ``[N]`` (int64), on any device."""

    images: Tensor
    labels: Tensor
    classes: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(f"images must be uint8 [N, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dim() != 1 or len(self.labels) != len(self.images):
            raise DataError(f"{len(self.images)} images but labels of shape {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def subset(self, indices: Tensor) -> ArrayDataset:
        idx = indices.to(self.images.device)
        return ArrayDataset(self.images.index_select(0, idx), self.labels.index_select(0, idx.to(self.labels.device)), self.classes)

    def to(self, device: torch.device | str) -> ArrayDataset:
        device = torch.device(device)
        if self.images.device == device:
            return self
        return ArrayDataset(self.images.to(device), self.labels.to(device), self.classes)


@dataclass(frozen=True)
class DatasetInfo:
    """What prunekit knows about a dataset before reading it."""

    name: str
    summary: str
    num_classes: int | None  # None: read from the data (image-folder)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool  # random crop (padding) + horizontal flip by default
    crop_padding: int
    candidates: tuple[str, ...]  # where to look when no data_dir is given
    how_to_get: str
    reader: Callable[[Path, dict[str, Any]], tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]]
    cache: bool = False


@dataclass
class Dataset:
    """A loaded dataset: info, train and test splits, and where it came from."""

    info: DatasetInfo
    train: ArrayDataset
    test: ArrayDataset
    source: Path

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]


def _idx_reader(root: Path, _: dict[str, Any], classes: list[str]) -> tuple[dict, list[str]]:
    return {"train": formats.read_idx_split(root, "train"), "test": formats.read_idx_split(root, "t10k")}, classes


def _cifar10_reader(root: Path, _: dict[str, Any]) -> tuple[dict, list[str]]:
    return formats.read_cifar10(root), CIFAR10_CLASSES


def _cifar100_reader(root: Path, options: dict[str, Any]) -> tuple[dict, list[str]]:
    label = options.get("cifar100_labels", "fine")
    n = 100 if label == "fine" else 20
    return formats.read_cifar100(root, label), [str(i) for i in range(n)]


def _cifar10_jpg_reader(root: Path, options: dict[str, Any]) -> tuple[dict, list[str]]:
    return formats.read_image_tree(root, classes=CIFAR10_CLASSES, workers=options.get("workers"))


def _image_folder_reader(root: Path, options: dict[str, Any]) -> tuple[dict, list[str]]:
    return formats.read_image_tree(root, image_size=options.get("image_size"), workers=options.get("workers"))


DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in [
        DatasetInfo(
            "fashion-mnist",
            "Fashion-MNIST: 60,000/10,000 28x28 grey images of clothing, 10 classes (IDX files)",
            10,
            (0.2860,),
            (0.3530,),
            False,
            0,
            ("/usr/share/datasets/fashion-mnist",),
            "install the Debian package: apt-get install dataset-fashion-mnist "
            "(or download the four IDX .gz files from github.com/zalandoresearch/fashion-mnist)",
            lambda root, o: _idx_reader(root, o, FASHION_CLASSES),
        ),
        DatasetInfo(
            "mnist",
            "MNIST: 60,000/10,000 28x28 grey digits, 10 classes (IDX files)",
            10,
            (0.1307,),
            (0.3081,),
            False,
            0,
            (),
            "put train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz] and "
            "t10k-labels-idx1-ubyte[.gz] in one directory and pass it as --data-dir",
            lambda root, o: _idx_reader(root, o, [str(i) for i in range(10)]),
        ),
        DatasetInfo(
            "cifar10",
            "CIFAR-10: 50,000/10,000 32x32 colour images, 10 classes (official python pickles)",
            10,
            (0.4914, 0.4822, 0.4465),
            (0.2470, 0.2435, 0.2616),
            True,
            4,
            (),
            "pass --data-dir: the cifar-10-batches-py directory, its parent, or cifar-10-python.tar.gz "
            "(from www.cs.toronto.edu/~kriz/cifar.html)",
            _cifar10_reader,
        ),
        DatasetInfo(
            "cifar100",
            "CIFAR-100: 50,000/10,000 32x32 colour images, 100 fine classes (official python pickles)",
            100,
            (0.5071, 0.4865, 0.4409),
            (0.2673, 0.2564, 0.2762),
            True,
            4,
            (),
            "pass --data-dir: the cifar-100-python directory, its parent, or cifar-100-python.tar.gz "
            "(from www.cs.toronto.edu/~kriz/cifar.html)",
            _cifar100_reader,
        ),
        DatasetInfo(
            "cifar10-jpg",
            "CIFAR-10 re-encoded as JPEG files (train/<class>/NNNN.jpg), a tarball or a folder",
            10,
            (0.4913, 0.4821, 0.4465),
            (0.2452, 0.2428, 0.2606),
            True,
            4,
            (".data/cifar10-jpg.tar.gz", ".data/cifar10-jpg"),
            "pass --data-dir: cifar10-jpg.tar.gz or the folder it unpacks to",
            _cifar10_jpg_reader,
            cache=True,
        ),
        DatasetInfo(
            "image-folder",
            "any <split>/<class>/<image> tree or tarball (Tiny-ImageNet, ImageNet subsets), resized by --image-size",
            None,
            (0.485, 0.456, 0.406),
            (0.229, 0.224, 0.225),
            True,
            4,
            (),
            "pass --data-dir: a folder or tarball holding train/<class>/... and val/ or test/<class>/...",
            _image_folder_reader,
            cache=True,
        ),
    ]
}


def list_datasets() -> list[str]:
    """Names of the datasets prunekit can load."""
    return list(DATASETS)


def get_info(name: str) -> DatasetInfo:
    """A dataset prunekit reads by name, or ``package.module:builder``: a callable returning the
    ``(train, test)`` pair of map-style datasets of ``(image tensor [C, H, W], label)``."""
    if isinstance(name, str) and ":" in name:
        return _builder_info(name)
    if name not in DATASETS:
        raise unknown("dataset", name, DATASETS)
    return DATASETS[name]


def _builder_info(name: str) -> DatasetInfo:
    module, _, target = name.partition(":")
    if not module or not target:
        raise ConfigError(f"dataset {name!r}: a dataset from outside prunekit is package.module:builder")
    return DatasetInfo(
        name, f"{module}.{target}(): (train, test) map-style datasets of (image, label)", None, (), (), False, 0, (),
        "make the builder importable (PYTHONPATH) and return (train, test)", _read_builder, cache=False,
    )


def _read_builder(source: Path, options: dict[str, Any]) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """The builder's ``(train, test)`` pair as uint8 arrays (float images in [0, 1] quantised to 8 bits,
    as every dataset is held on the device)."""
    import importlib

    name = str(source)
    module, _, target = name.partition(":")
    try:
        fn = getattr(importlib.import_module(module), target)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"dataset {name!r}: cannot import {target!r} from {module!r} ({type(exc).__name__}: {exc})") from None
    pair = fn()
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise DataError(f"dataset builder {name!r} must return (train, test) map-style datasets, got {type(pair).__name__}")
    out = {}
    for split, dataset in zip(("train", "test"), pair):
        images, labels = [], []
        try:
            for i in range(len(dataset)):
                x, y = dataset[i][0], dataset[i][1]
                images.append(torch.as_tensor(x))
                labels.append(int(y))
        except (TypeError, IndexError, ValueError) as exc:
            raise DataError(f"dataset builder {name!r}: the {split} dataset must give (image tensor, integer label) pairs ({exc})") from None
        if not images:
            raise DataError(f"dataset builder {name!r}: the {split} dataset is empty")
        stacked = torch.stack(images)
        if stacked.dim() == 3:
            stacked = stacked.unsqueeze(1)  # [N, H, W] grey images
        if stacked.dtype != torch.uint8:
            if stacked.is_floating_point() and (stacked.min() < 0 or stacked.max() > 1):
                raise DataError(f"dataset builder {name!r}: float images must lie in [0, 1] (they are held as 8-bit images)")
            stacked = (stacked.float() * 255).round().clamp(0, 255).to(torch.uint8)
        out[split] = (stacked.numpy(), np.asarray(labels, dtype=np.int64))
    classes = [str(i) for i in range(int(max(out["train"][1].max(), out["test"][1].max())) + 1)]
    return out, classes


def _locate(info: DatasetInfo, data_dir: str | os.PathLike[str] | None) -> Path:
    looked: list[str] = []
    if data_dir is not None:
        given = Path(data_dir)
        # a folder that holds the dataset's own archive or folder (e.g. the one cifar10-jpg.tar.gz lies in)
        inner = [given / Path(c).name for c in info.candidates] if given.is_dir() else []
        candidates = [*(p for p in inner if p.exists()), given]
    else:
        candidates = []
        env = os.environ.get("PRUNEKIT_DATA")
        if env:
            candidates.append(Path(env) / info.name)
        candidates += [Path(c) for c in info.candidates]
    for c in candidates:
        looked.append(str(c))
        if c.exists():
            return c
    where = ", ".join(looked) if looked else "nowhere (no default location; set PRUNEKIT_DATA or pass data_dir)"
    raise DataError(f"dataset {info.name!r} not found; looked in: {where}. To get it: {info.how_to_get}")


def cache_dir() -> Path:
    """Where decoded arrays are cached: ``$PRUNEKIT_CACHE`` or ``~/.cache/prunekit``."""
    return Path(os.environ.get("PRUNEKIT_CACHE", Path.home() / ".cache" / "prunekit"))


def _cache_key(info: DatasetInfo, source: Path, options: dict[str, Any]) -> str:
    st = source.stat()
    parts = {"name": info.name, "path": str(source.resolve()), "size": st.st_size, "mtime": st.st_mtime_ns, "options": options}
    if source.is_dir():  # a folder: its listing stands for its content
        parts["listing"] = hashlib.sha256("\n".join(sorted(str(p.relative_to(source)) for p in source.rglob("*"))).encode()).hexdigest()
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def _read_cached(info: DatasetInfo, source: Path, options: dict[str, Any]) -> tuple[dict, list[str]]:
    relevant = {k: v for k, v in options.items() if k != "workers"}
    folder = cache_dir() / f"{info.name}-{_cache_key(info, source, relevant)}"
    meta_path = folder / "meta.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            splits = {s: (np.load(folder / f"{s}_x.npy"), np.load(folder / f"{s}_y.npy")) for s in meta["splits"]}
            return splits, meta["classes"]
        except (OSError, ValueError, KeyError):
            shutil.rmtree(folder, ignore_errors=True)  # a damaged cache entry is rebuilt
    splits, classes = info.reader(source, options)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        for s, (x, y) in splits.items():
            np.save(tmp / f"{s}_x.npy", x)
            np.save(tmp / f"{s}_y.npy", y)
        (tmp / "meta.json").write_text(json.dumps({"splits": list(splits), "classes": classes, "source": str(source)}))
        try:
            tmp.rename(folder)
        except OSError:  # another process cached it first
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        pass  # caching is an optimisation; a read-only home is not an error
    return splits, classes


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    image_size: int | None = None,
    cache: bool = True,
    workers: int | None = None,
    **options: Any,
) -> Dataset:
    """Load a dataset by name.

    Args:
        name: one of :func:`list_datasets`.
        data_dir: where the files are (a directory, or an archive where the format allows); default:
            ``$PRUNEKIT_DATA/<name>``, then the dataset's usual location.
        image_size: resize images to this square side (``image-folder`` only).
        cache: cache decoded JPEG trees as ``.npy`` arrays.
        workers: processes for JPEG decoding (default: all CPUs).
        **options: dataset-specific (``cifar100_labels="coarse"``).

    Raises:
        DataError: the files are missing (the message says where it looked and how to get them) or malformed.
    """
    info = get_info(name)
    if image_size is not None and name != "image-folder":
        raise DataError(f"image_size applies to image-folder only, not {name!r}")
    source = Path(name) if info.reader is _read_builder else _locate(info, data_dir)
    opts = {**options, "image_size": image_size, "workers": workers}
    splits, classes = _read_cached(info, source, opts) if (cache and info.cache) else info.reader(source, opts)
    parts = {}
    for split in ("train", "test"):
        x, y = splits[split]
        parts[split] = ArrayDataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y)).long(), classes)
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(classes)):
            raise DataError(f"{split} labels of {name} fall outside [0, {len(classes)})")
    if info.num_classes is None:
        info = replace(info, num_classes=len(classes))
    if not info.mean:  # a builder's images: normalised by their own per-channel statistics
        pixels = parts["train"].images.float().div_(255).transpose(0, 1).flatten(1)
        info = replace(info, mean=tuple(pixels.mean(1).tolist()), std=tuple(max(v, 1e-6) for v in pixels.std(1).tolist()))
    return Dataset(info, parts["train"], parts["test"], source)

"""Readers for the official on-disk formats: IDX (MNIST family), CIFAR python pickles, image trees.

Every reader returns uint8 images as a numpy array ``[N, C, H, W]`` and int64 labels ``[N]``.
"""

from __future__ import annotations

import functools
import gzip
import io
import os
import pickle
import tarfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")

# ---------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST, KMNIST, EMNIST): http://yann.lecun.com/exdb/mnist/ file format
# ---------------------------------------------------------------------------------------------
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def find_file(directory: Path, stem: str) -> Path:
    """``directory/stem`` or ``directory/stem.gz``, whichever exists."""
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"{stem}[.gz] not found in {directory}")


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:  # zlib.error: a corrupt compressed stream
        raise DataError(f"cannot read IDX file {path} (corrupt or truncated: {exc}); download it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype: np.dtype[Any] = np.dtype(_IDX_DTYPES[raw[2]])  # type: ignore[call-overload]
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{path} is truncated or corrupt: {len(raw)} bytes, header says {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def read_idx_split(directory: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """``{prefix}-images-idx3-ubyte`` and ``{prefix}-labels-idx1-ubyte`` -> (``[N,1,H,W]`` uint8, labels)."""
    images = read_idx(find_file(directory, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(find_file(directory, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"IDX files in {directory} disagree: images {images.shape}, labels {labels.shape}")
    return np.ascontiguousarray(images[:, None]).astype(np.uint8), labels.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 "python version" pickles
# ---------------------------------------------------------------------------------------------
class _CifarUnpickler(pickle.Unpickler):
    """Only what the official CIFAR pickles contain: builtins and numpy arrays."""

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch file")


def _load_pickle(data: bytes, where: str) -> dict:
    try:
        obj = _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:
        raise DataError(f"{where} is not a CIFAR python batch file ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where} is not a CIFAR python batch file")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_arrays(batch: dict, label_key: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except KeyError as exc:
        raise DataError(f"{where} has no {exc.args[0]!r} entry") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise DataError(f"{where}: expected data [N, 3072] and N labels, got {data.shape} and {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


class _CifarSource:
    """Files of a CIFAR python directory, or of the official .tar.gz archive."""

    def __init__(self, root: Path, folder: str):
        self.root = root
        self.folder = folder
        if root.is_file():
            self._tar: tarfile.TarFile | None = tarfile.open(root)  # noqa: SIM115  (closed by __exit__)
            self._members = {Path(m.name).name: m for m in self._tar.getmembers() if m.isfile()}
        else:
            sub = root / folder
            self.dir = sub if sub.is_dir() else root
            self._tar = None

    def __enter__(self) -> _CifarSource:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._tar is not None:
            self._tar.close()

    def read(self, name: str) -> bytes:
        if self._tar is not None:
            if name not in self._members:
                raise DataError(f"{self.root} has no member {name!r}")
            f = self._tar.extractfile(self._members[name])
            assert f is not None
            return f.read()
        path = self.dir / name
        if not path.is_file():
            raise DataError(f"{path} not found")
        return path.read_bytes()


def read_cifar10(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """CIFAR-10 python batches (``data_batch_1..5``, ``test_batch``) from a directory or the archive."""
    with _CifarSource(root, "cifar-10-batches-py") as src:
        train = [_cifar_arrays(_load_pickle(src.read(f"data_batch_{i}"), f"data_batch_{i}"), "labels", f"data_batch_{i}") for i in range(1, 6)]
        test = _cifar_arrays(_load_pickle(src.read("test_batch"), "test_batch"), "labels", "test_batch")
    return {
        "train": (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])),
        "test": test,
    }


def read_cifar100(root: Path, label: str = "fine") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """CIFAR-100 python files (``train``, ``test``) with fine (100) or coarse (20) labels."""
    key = f"{label}_labels"
    with _CifarSource(root, "cifar-100-python") as src:
        return {split: _cifar_arrays(_load_pickle(src.read(split), split), key, split) for split in ("train", "test")}


# ---------------------------------------------------------------------------------------------
# Image trees: <root>/<split>/<class>/**/<image>, as a directory or a tar archive
# ---------------------------------------------------------------------------------------------
def _decode(args: tuple[bytes, int | None]) -> np.ndarray:
    data, size = args
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")
        if size is not None and im.size != (size, size):
            w, h = im.size
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
        return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


def _decode_all(blobs: Sequence[bytes], size: int | None, workers: int) -> np.ndarray:
    if not blobs:
        return np.zeros((0, 3, size or 1, size or 1), dtype=np.uint8)
    items = [(b, size) for b in blobs]
    if workers > 1 and len(items) > 2000:
        with ProcessPoolExecutor(workers) as pool:
            arrays = list(pool.map(_decode, items, chunksize=512))
    else:
        arrays = [_decode(it) for it in items]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise DataError(f"images have different sizes {sorted(shapes)[:3]}...; pass image_size= to resize them")
    return np.stack(arrays)


def _class_of(parts: Sequence[str]) -> str:
    return parts[0]


def _iter_tree(root: Path) -> Iterator[tuple[tuple[str, ...], Callable[[], bytes]]]:
    """(path parts relative to the tree's top, reader) for every image file, directory or tarball."""
    if root.is_file():
        try:
            with tarfile.open(root) as tar:
                for m in sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name):
                    if m.name.lower().endswith(IMAGE_SUFFIXES) or m.name.endswith("val_annotations.txt"):
                        f = tar.extractfile(m)
                        assert f is not None
                        data = f.read()
                        yield tuple(p for p in Path(m.name).parts if p not in (".", "")), functools.partial(bytes, data)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise DataError(f"{root} is truncated or corrupt ({type(exc).__name__}: {exc}); copy or download it again") from None
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in sorted(filenames):
            if fn.lower().endswith(IMAGE_SUFFIXES) or fn == "val_annotations.txt":
                path = Path(dirpath) / fn
                yield path.relative_to(root).parts, path.read_bytes


def read_image_tree(
    root: Path,
    splits: Sequence[str] = ("train", "test"),
    classes: Sequence[str] | None = None,
    image_size: int | None = None,
    workers: int | None = None,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """Decode ``<split>/<class>/**/<image>`` trees (a directory or a tar archive) into arrays.

    The tree may sit below one top folder (``cifar10-jpg/train/...``). Tiny-ImageNet's validation
    layout (``val/images`` + ``val/val_annotations.txt``) is understood. Images are sorted by class
    (in ``classes`` order, else alphabetical) then by path.

    Args:
        root: directory or ``.tar[.gz]`` file.
        splits: split folder names to read; the first found of each alias group is used
            (``test`` falls back to ``val``).
        classes: class names in label order (default: sorted folder names of the first split).
        image_size: resize every image to a square of this side (centre crop, bicubic).
        workers: decoding processes (default: CPU count).

    Returns:
        ``({split: (images [N,3,H,W] uint8, labels [N] int64)}, classes)``.
    """
    if not root.exists():
        raise DataError(f"{root} does not exist")
    by_split: dict[str, list[tuple[tuple[str, ...], Callable[[], bytes]]]] = {}
    annotations: dict[str, dict[str, str]] = {}
    for parts, reader in _iter_tree(root):
        for i, part in enumerate(parts[:-1]):
            if part in splits or part in ("val",):
                rest = parts[i + 1 :]
                if parts[-1] == "val_annotations.txt":
                    text = reader().decode()
                    annotations[part] = {ln.split("\t")[0]: ln.split("\t")[1] for ln in text.splitlines() if "\t" in ln}
                elif len(rest) >= 2:
                    by_split.setdefault(part, []).append((rest, reader))
                break
    def labelled(name: str) -> bool:  # Tiny-ImageNet's test/images has no labels
        return name in by_split and (name in annotations or any(p[0] != "images" for p, _ in by_split[name]))

    found = {}
    for split in splits:
        name = split if labelled(split) else ("val" if split == "test" and labelled("val") else None)
        if name is None:
            raise DataError(f"no '{split}/' image folder found under {root}")
        found[split] = name
    first = by_split[found[splits[0]]]
    if classes is None:
        classes = sorted({_class_of(p) for p, _ in first})
    index = {c: i for i, c in enumerate(classes)}
    result = {}
    for split, name in found.items():
        ann = annotations.get(name)
        entries = []
        for parts, reader in by_split[name]:
            cls = ann.get(parts[-1]) if ann is not None and parts[0] == "images" else _class_of(parts)
            if cls not in index:
                raise DataError(f"image {'/'.join(parts)} in split {name!r} has unknown class {cls!r}")
            entries.append((index[cls], parts, reader))
        entries.sort(key=lambda e: (e[0], e[1]))
        blobs = [reader() for _, _, reader in entries]
        images = _decode_all(blobs, image_size, workers or os.cpu_count() or 1)
        labels = np.array([c for c, _, _ in entries], dtype=np.int64)
        result[split] = (images, labels)
    return result, list(classes)

"""Shared fixtures: tiny models of several kinds and synthetic batches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

torch.set_num_threads(2)


class SmallCNN(nn.Module):
    """Conv-BN-ReLU x2, dropout, linear head: exercises BN statistics, dropout and the default rule."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(8 * 4 * 4, classes)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = torch.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
        return self.fc(self.drop(x.flatten(1)))


class DepthwiseNet(nn.Module):
    """A MobileNet-style block: depthwise + pointwise + grouped convolutions."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 16, 1)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.bn = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.pw(torch.relu(self.dw(x))))
        x = torch.relu(self.bn(self.grouped(x)))
        return self.head(x.mean((2, 3)))


class Conv1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(2, 8, 5, padding=2)
        self.c2 = nn.Conv1d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(x.amax(-1))


class TinyTransformer(nn.Module):
    """Two nn.TransformerEncoderLayers over a sequence of feature vectors, mean-pooled."""

    def __init__(self, d_model: int = 16, classes: int = 3):
        super().__init__()
        self.inp = nn.Linear(5, d_model)
        layer = nn.TransformerEncoderLayer(d_model, nhead=2, dim_feedforward=32, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, classes)

    def forward(self, x):
        return self.head(self.encoder(self.inp(x)).mean(1))


def make_batches(shape, classes, n=4, batch=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, *shape, generator=g), torch.randint(0, classes, (batch,), generator=g)) for _ in range(n)]


# (model factory, input shape, classes)
ZOO = {
    "cnn": (SmallCNN, (1, 16, 16), 10),
    "depthwise": (DepthwiseNet, (3, 8, 8), 10),
    "conv1d": (Conv1dNet, (2, 20), 4),
    "transformer": (TinyTransformer, (6, 5), 3),
}

# Options that keep iterative methods fast in tests.
FAST = {"iter_snip": {"num_steps": 4}, "force": {"num_steps": 4}, "synflow": {"num_steps": 4}, "prospr": {"inner_steps": 2}}


@pytest.fixture
def cnn_and_data():
    torch.manual_seed(0)
    return SmallCNN(), make_batches((1, 16, 16), 10)


def write_tiny_mnist(root, n_train=400, n_test=100, seed=0):
    """A learnable dataset in the official MNIST IDX format (gzip): class c has a bright bar at row 2c+3."""
    import gzip

    import numpy as np

    rng = np.random.default_rng(seed)

    def make(n):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        images = rng.integers(0, 60, (n, 28, 28))
        for i, c in enumerate(labels):
            images[i, 2 * c + 3, 4:24] = 250
        return images, labels

    def idx(array):
        header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
        return gzip.compress(header + array.astype(np.uint8).tobytes())

    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = make(n)
        (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(idx(images))
        (root / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(idx(labels))
    return root


@pytest.fixture
def tiny_mnist(tmp_path):
    return write_tiny_mnist(tmp_path / "mnist")


# Training overrides that make the lenet-fmnist recipe fit the tiny dataset.
TINY_TRAIN = {"val_size": 40.0, "batch_size": 50}


# -- subprocesses on a loaded machine -------------------------------------------------------------
# A test never fails because the machine is slow: it waits as long as the child makes progress and
# fails only when nothing has changed for STALL_SECONDS (a hang, not a slow day).
STALL_SECONDS = 900.0


def wait_while_progressing(proc, progress, until=None, stall=STALL_SECONDS, poll=0.05):
    """Wait until ``until()`` is true (or, without ``until``, until ``proc`` ends) while
    ``progress()`` keeps changing; return ``proc.poll()``.

    Raises:
        AssertionError: nothing changed for ``stall`` seconds, or ``proc`` ended before ``until()``.
    """
    import time

    last, since = progress(), time.monotonic()
    while True:
        if until is not None and until():
            return proc.poll()
        code = proc.poll()
        if code is not None:
            assert until is None, f"the process ended (exit code {code}) before the awaited state"
            return code
        now = progress()
        if now != last:
            last, since = now, time.monotonic()
        assert time.monotonic() - since < stall, f"no progress for {stall:.0f} s (last state: {last!r})"
        time.sleep(poll)


def file_state(*paths):
    """A progress probe: existence, size and modification time of files."""
    from pathlib import Path

    def probe():
        out = []
        for p in map(Path, paths):
            try:
                st = p.stat()
                out.append((st.st_size, st.st_mtime_ns))
            except OSError:
                out.append(None)
        return tuple(out)

    return probe

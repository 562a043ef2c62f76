"""The experiment layer's architecture, checked on a real ``prunekit run``: a run flows down through
the layers (command line -> request -> lifecycle -> backend -> run kind -> record -> database) and
never re-enters a layer it came from."""

import importlib
import pkgutil
import sys

import prunekit.experiments
from conftest import write_tiny_mnist
from prunekit.cli import main


def _layer(module: str) -> str | None:
    """The experiment-layer module a frame's module belongs to (a run kind's files are one layer, the
    kinds package; every backend is its own), or None outside the layer."""
    if module == "prunekit.cli":
        return module
    if not module.startswith("prunekit.experiments."):
        return None
    parts = module.split(".")
    return ".".join(parts[:3]) if parts[2] == "kinds" else module


def test_prunekit_run_enters_each_experiment_module_once_on_every_path(tmp_path):
    for info in pkgutil.walk_packages(prunekit.experiments.__path__, "prunekit.experiments."):
        if not info.name.endswith(".ray"):  # Ray is an optional dependency
            importlib.import_module(info.name)  # imported first: only the run's own calls are traced
    data = write_tiny_mnist(tmp_path / "mnist")
    revisits: list[list[str]] = []
    entered: set[str] = set()

    def profile(frame, event, arg):
        if event != "call":
            return
        layer = _layer(frame.f_globals.get("__name__", ""))
        if layer is None:
            return
        entered.add(layer)
        chain: list[str] = []  # the layers on the stack, innermost first, consecutive repeats collapsed
        f = frame
        while f is not None:
            name = _layer(f.f_globals.get("__name__", ""))
            if name is not None and (not chain or chain[-1] != name):
                chain.append(name)
            f = f.f_back
        if len(chain) != len(set(chain)):
            revisits.append(list(reversed(chain)))

    sys.setprofile(profile)
    try:
        code = main(["run", "--model", "lenet_300_100", "--dataset", "mnist", "--data-dir", str(data), "--method", "snip",
                     "--epochs", "1", "--recipe", "lenet-fmnist", "--train", "val_size=40", "--train", "batch_size=50",
                     "--out", str(tmp_path / "o"), "--no-progress"])
    finally:
        sys.setprofile(None)
    assert code == 0
    assert not revisits, revisits[:3]
    for layer in ("prunekit.cli", "prunekit.experiments.spec", "prunekit.experiments.run", "prunekit.experiments.lifecycle",
                  "prunekit.experiments.backends.local", "prunekit.experiments.kinds", "prunekit.experiments.record",
                  "prunekit.experiments.db"):
        assert layer in entered, layer

"""Weight initialisation schemes used by the papers.

* ``kaiming_normal``: He-normal (fan-in, ReLU gain) on every conv and linear weight, biases 0
  (open_lth, FORCE, ProsPr).
* ``grasp``: conv He-normal with fan-out, linear N(0, 0.01), biases 0 (GraSP's models).
* ``torch``: PyTorch's default initialisation, untouched.

BatchNorm: weight 1 and bias 0 (``bn_gamma="ones"``), or weight ~ U[0, 1] (``"uniform"``, open_lth).
"""

from __future__ import annotations

from torch import nn

INITS = {
    "kaiming_normal": "He-normal (fan-in) conv and linear weights, zero biases (open_lth, FORCE, ProsPr)",
    "grasp": "conv He-normal (fan-out), linear N(0, 0.01), zero biases (GraSP)",
    "torch": "PyTorch defaults",
    "builder": "the model's own, as its builder made it (models from outside the zoo; BatchNorm untouched too)",
}
BN_GAMMA_INITS = {"ones": "BN weight 1, bias 0", "uniform": "BN weight ~ U[0, 1], bias 0 (open_lth)"}

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def initialize(model: nn.Module, scheme: str = "kaiming_normal", bn_gamma: str = "ones") -> nn.Module:
    """Initialise ``model`` in place with ``scheme`` and the BN-scale rule ``bn_gamma``."""
    if scheme == "builder":
        return model
    for m in model.modules():
        if isinstance(m, _NORM) and getattr(m, "weight", None) is not None:
            if bn_gamma == "uniform":
                nn.init.uniform_(m.weight)
            else:
                nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        if scheme == "torch":
            continue
        if isinstance(m, _CONV):
            if scheme == "grasp":
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            else:
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            if scheme == "grasp":
                nn.init.normal_(m.weight, 0.0, 0.01)
            else:
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        else:
            continue
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    return model

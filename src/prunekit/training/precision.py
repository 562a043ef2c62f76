"""Training precision and memory format: what ``TrainConfig.amp`` and ``channels_last`` resolve to.

``amp`` asks for bf16 autocast and ``channels_last`` for the channels-last memory format, each
*where it helps*:

* **bf16** runs where the device computes bf16 natively: CUDA (bf16 tensor cores), and CPUs with
  AVX-512 BF16 or AMX (x86-64), or the BF16 extension (aarch64). Elsewhere bf16 would be emulated
  and slower than fp32, so the run stays in fp32 with a one-line notice.
* **channels-last** is used on CUDA and on the CPU (oneDNN's convolutions are faster in NHWC, in
  fp32 as in bf16); it changes no result beyond floating-point summation order.

Only the forward and backward pass of training (and evaluation) run under autocast: weights,
gradients, optimizer state and BatchNorm running statistics stay fp32, and every pruning score is
computed outside it, in fp32 or fp64, so the masks of a run never depend on its training precision.

``TrainConfig.compile`` (off by default) runs the training step's forward and backward pass through
``torch.compile`` (:func:`compiled`): one compile per input shape (the training batch, and the last
incomplete one), after which the fused kernels run faster, most with bf16 on the CPU, where half of
an eager bf16 step is elementwise work (BatchNorm, ReLU, additions) that the compiler fuses.
Evaluation stays eager. A compiled run computes in another order than an eager one, so it is another
run (``compile`` is keyed); it resumes bit-exactly from its own checkpoints.

The environment variable ``PRUNEKIT_BF16`` overrides the capability check: ``1`` treats bf16 as
native everywhere (e.g. a virtual machine that hides the CPU flags), ``0`` never uses it. Per run,
``amp=False`` asks for fp32.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError

logger = logging.getLogger("prunekit")

FP32 = "fp32"
BF16 = "bf16"
ENV = "PRUNEKIT_BF16"


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    """The processor's feature flags as Linux reports them (empty where ``/proc/cpuinfo`` is absent)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                head, _, rest = line.partition(":")
                if head.strip() in ("flags", "Features"):
                    return frozenset(rest.split())
    except OSError:
        pass
    return frozenset()


def cpu_native_bf16() -> tuple[bool, str]:
    """Whether this CPU computes bf16 natively, and the feature that says so (or why not).

    x86-64: AVX-512 BF16 or AMX-BF16, as PyTorch's own CPU detection (cpuinfo) reports them, with
    the kernel's ``/proc/cpuinfo`` flags as a second source; aarch64: the ``bf16`` feature. oneDNN
    (which runs bf16 convolutions and matrix products on the CPU) must be present too.
    """
    if not torch.backends.mkldnn.is_available():
        return False, "this torch build has no oneDNN"
    flags = _cpu_flags()
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i686", "x86"):
        amx = avx = False
        try:  # PyTorch's own detection (cpuinfo; private functions, present since torch 2.3)
            amx = bool(torch.cpu._is_amx_tile_supported())
            avx = bool(torch.cpu._is_avx512_bf16_supported())
        except AttributeError:
            pass
        amx = amx or "amx_bf16" in flags
        avx = avx or "avx512_bf16" in flags
        if amx:
            return True, "AMX-BF16"
        if avx:
            return True, "AVX-512 BF16"
        return False, "no AVX-512 BF16 or AMX on this CPU"
    if machine in ("aarch64", "arm64"):
        if "bf16" in flags:
            return True, "Arm BF16"
        return False, "no BF16 extension on this CPU"
    return False, f"bf16 is not detected on {machine or 'this'} processors"


def native_bf16(device: torch.device | str) -> tuple[bool, str]:
    """Whether ``device`` computes bf16 natively, and why (``PRUNEKIT_BF16`` overrides the check)."""
    setting = os.environ.get(ENV, "").strip().lower()
    if setting in ("1", "true", "yes", "on"):
        return True, f"{ENV}={setting}"
    if setting in ("0", "false", "no", "off"):
        return False, f"{ENV}={setting}"
    if setting not in ("", "auto"):
        raise ConfigError(f"{ENV} must be 1 (use bf16), 0 (never) or auto, got {setting!r}")
    device = torch.device(device)
    if device.type == "cuda":
        return True, "CUDA"
    if device.type == "cpu":
        return cpu_native_bf16()
    return False, f"bf16 autocast is not used on {device.type}"


@dataclass(frozen=True)
class Precision:
    """How a network trains: ``dtype`` (``fp32`` or ``bf16`` autocast) and the memory format."""

    dtype: str = FP32
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in (FP32, BF16):
            raise ConfigError(f"precision must be {FP32} or {BF16}, got {self.dtype!r}")

    @property
    def memory_format(self) -> str:
        return "channels_last" if self.channels_last else "contiguous"

    @property
    def bf16(self) -> bool:
        return self.dtype == BF16

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[None]:
        """The autocast context of a forward pass (a no-op in fp32)."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    def prepare(self, model: nn.Module) -> nn.Module:
        """``model`` in this memory format (4-D weights only; the others are unaffected)."""
        if self.channels_last:
            model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return model

    def as_dict(self) -> dict[str, str]:
        return {"precision": self.dtype, "memory_format": self.memory_format}


def resolve_precision(amp: bool, channels_last: bool, device: torch.device | str, *, notice: bool = True) -> Precision:
    """What ``amp`` and ``channels_last`` resolve to on ``device`` (see the module docstring).

    Args:
        notice: log one line when bf16 was asked for but stays off (emulated on this device).
    """
    device = torch.device(device)
    dtype = FP32
    if amp:
        native, why = native_bf16(device)
        if native:
            dtype = BF16
        elif notice:
            _notice_once(f"bf16 autocast stays off ({why}): training in fp32; set {ENV}=1 to force it")
    return Precision(dtype, channels_last and device.type in ("cuda", "cpu"))


def check_compile(device: torch.device | str) -> None:
    """Refuse ``compile=True`` where ``torch.compile`` cannot run: a Python version it does not
    support, or (on the CPU) no C++ compiler for the generated kernels.

    Raises:
        ConfigError: naming what is missing and how to train without it.
    """
    device = torch.device(device)
    without = "train without compile (--train compile=false)"
    try:
        from torch import _dynamo

        supported = _dynamo.is_dynamo_supported()
    except Exception:  # an import that fails is as much a "cannot run" as an unsupported version
        supported = False
    if not supported:
        raise ConfigError(f"compile=True: torch.compile does not support this Python or platform; {without}")
    if device.type == "cpu":
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler

            get_cpp_compiler()
        except ImportError:  # a torch without this helper: the first compiled step says what is missing
            return
        except Exception as exc:
            raise ConfigError(f"compile=True on the CPU needs a C++ compiler (g++ or clang++, or $CXX) for the generated kernels: {exc}; "
                              f"install one, or {without}") from None


def compiled(module: nn.Module) -> nn.Module:
    """``module`` compiled for training (``torch.compile``, static shapes: one graph per input shape,
    no slower dynamic-shape kernels); parameters and buffers stay ``module``'s own."""
    return torch.compile(module, dynamic=False)  # type: ignore[return-value]


@functools.cache
def _notice_once(message: str) -> None:
    logger.info(message)

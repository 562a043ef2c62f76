"""Stand-ins for models as users bring them from the zoos (torchvision, timm, Hugging Face), with the
initialisations that made pruning collapse: a ViT whose classifier head starts at zero, a ResNet whose
last BatchNorm of every residual block starts at zero (timm's zero_init_last), a MobileNet-like net of
depthwise-separable blocks with ReLU6, a GPT-2-like causal decoder over tokens. Shared by the tests
(tests/test_real_models.py) and the benchmark (benchmarks/real_models.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prunekit import models


class ViT(nn.Module):
    """Patches by a strided convolution, pre-norm transformer blocks, a zero-initialised linear head
    (as torchvision's vit_b_16)."""

    def __init__(self, dim: int = 32, depth: int = 2, heads: int = 4, classes: int = 10, patch: int = 4):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.blocks = nn.ModuleList([nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
                                     for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.patch(x).flatten(2).transpose(1, 2)
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h).mean(1))


def zero_gamma_resnet(classes: int = 10) -> nn.Module:
    """ResNet-20 with the last BatchNorm of every residual block at zero (timm's ``zero_init_last``)."""
    model = models.create("resnet20", classes, (3, 16, 16), seed=0)
    for block in model.modules():
        if hasattr(block, "bn2"):
            nn.init.zeros_(block.bn2.weight)
    return model


class MobileNetLike(nn.Module):
    """Depthwise-separable blocks with BatchNorm and ReLU6 (MobileNet v1/v2's building block)."""

    def __init__(self, classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6()]
        c = 16
        for out, stride in ((24, 2), (32, 1), (48, 2)):
            layers += [nn.Conv2d(c, c, 3, stride, 1, groups=c, bias=False), nn.BatchNorm2d(c), nn.ReLU6(),
                       nn.Conv2d(c, out, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU6()]
            c = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


class GPT2Like(nn.Module):
    """Token and position embeddings, causal transformer blocks, a language-model head: logits ``[B, L, V]``."""

    def __init__(self, vocab: int = 50, dim: int = 32, depth: int = 2, heads: int = 4, length: int = 12):
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Embedding(length, dim)
        self.blocks = nn.ModuleList([nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
                                     for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.register_buffer("causal", torch.triu(torch.full((length, length), float("-inf")), 1), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        n = ids.shape[1]
        h = self.tokens(ids) + self.positions(torch.arange(n, device=ids.device))
        for block in self.blocks:
            h = block(h, src_mask=self.causal[:n, :n], is_causal=True)
        return self.lm_head(self.norm(h))


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def image_batches(n: int = 4, batch: int = 32, classes: int = 10, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, 16, 16, generator=g), torch.randint(0, classes, (batch,), generator=g)) for _ in range(n)]


def token_batches(n: int = 4, batch: int = 16, vocab: int = 50, length: int = 12, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (batch, length + 1), generator=g)
        out.append((ids[:, :-1], ids[:, 1:]))
    return out


def build(name: str) -> tuple[nn.Module, list, dict]:
    """``(model, scoring batches, prune keywords)`` of one stand-in."""
    torch.manual_seed(0)
    if name == "vit-zero-head":
        return ViT(), image_batches(), {}
    if name == "resnet-zero-gamma":
        return zero_gamma_resnet(), image_batches(), {}
    if name == "mobilenet-relu6":
        return MobileNetLike(), image_batches(), {}
    if name == "gpt2-like":
        return GPT2Like(), token_batches(), {"loss_fn": next_token_loss}
    raise ValueError(name)


MODELS = ["vit-zero-head", "resnet-zero-gamma", "mobilenet-relu6", "gpt2-like"]
# every method with its default options, iterative ones with fewer steps (the matrix must run in a test)
FAST = {"iter_snip": {"num_steps": 8}, "force": {"num_steps": 8}, "synflow": {"num_steps": 8}}
# what a model with token targets needs (the documented way): GraSP scores plain batches, not class-balanced ones
NEEDS = {("gpt2-like", "grasp"): {"samples_per_class": None}, ("gpt2-like", "grasp_abs"): {"samples_per_class": None}}

"""Shared helpers for prototype-based classifiers (batched over episodes where it matters)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def prototypes(support: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class means. ``support (..., S, D)``, ``labels (..., S)`` -> ``(..., num_classes, D)``."""
    onehot = F.one_hot(labels.long(), num_classes).to(support.dtype)  # (..., S, C)
    sums = onehot.transpose(-1, -2) @ support
    counts = onehot.sum(-2).clamp_min(1).unsqueeze(-1)
    return sums / counts


def sq_euclidean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``(..., N, D) x (..., M, D) -> (..., N, M)``."""
    return (a.unsqueeze(-2) - b.unsqueeze(-3)).pow(2).sum(-1)


def cosine_logits(features: torch.Tensor, weights: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale * cos(f, w)`` for every (feature, class) pair."""
    return scale * F.normalize(features, dim=-1) @ F.normalize(weights, dim=-1).transpose(-1, -2)


class CosineClassifier(nn.Module):
    """``s * cos(f(x), W)`` (the ``ft_cos`` head of CEC/TEEN); rows beyond the seen classes are
    kept for later sessions."""

    def __init__(self, dim: int, num_classes: int, scale: float = 16.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        self.scale = float(scale)

    def forward(self, f: torch.Tensor, num: int | None = None) -> torch.Tensor:
        w = self.weight if num is None else self.weight[:num]
        return cosine_logits(f, w, self.scale)


@torch.no_grad()
def class_means(features: torch.Tensor, labels: torch.Tensor, classes) -> torch.Tensor:
    """Mean feature of each class in ``classes`` (in that order)."""
    return torch.stack([features[labels == int(c)].mean(0) for c in classes])

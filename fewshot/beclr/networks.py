"""BECLR's networks: the encoder (any fsbench backbone or torchvision-style ResNet-50),
the projector and predictor heads, and a student/teacher branch (§3.1 of the paper)."""
from __future__ import annotations

import torch.nn as nn

from fsbench.baselines.backbones import ResNet50, build_backbone
from fsbench.errors import UserError


def build_encoder(cfg: dict, in_channels: int) -> nn.Module:
    cfg = dict(cfg or {})
    if cfg.get("name") == "resnet50":
        if cfg.get("weights"):
            raise UserError("backbone.weights: BECLR pretrains from scratch; resnet50 takes no "
                            "weights file here")
        opts = {k: v for k, v in cfg.items() if k not in ("name", "weights")}
        try:
            return ResNet50(in_channels, **opts)
        except TypeError as e:
            raise UserError(f"backbone: bad option for resnet50: {e}") from e
    return build_backbone(cfg, in_channels)


class Projector(nn.Sequential):
    """3 x [Linear -> BN -> ReLU], without the last ReLU."""

    def __init__(self, dim_in: int, dim: int = 512):
        super().__init__(nn.Linear(dim_in, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
                         nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
                         nn.Linear(dim, dim), nn.BatchNorm1d(dim))


class Predictor(nn.Sequential):
    """Linear dim -> dim/4 -> BN -> ReLU -> Linear dim/4 -> dim (student only)."""

    def __init__(self, dim: int = 512):
        super().__init__(nn.Linear(dim, dim // 4), nn.BatchNorm1d(dim // 4), nn.ReLU(inplace=True),
                         nn.Linear(dim // 4, dim))


class Branch(nn.Module):
    def __init__(self, encoder: nn.Module, dim: int, predictor: bool):
        super().__init__()
        self.encoder = encoder
        self.projector = Projector(encoder.out_dim, dim)
        self.predictor = Predictor(dim) if predictor else None

    def forward(self, x):
        z = self.projector(self.encoder(x))
        return (self.predictor(z), z) if self.predictor is not None else z

"""Backbones with the stage interface DVLA-RL needs: extra tokens can enter stages 2 and 3.

Interface (:class:`Staged`): ``stem(x)`` runs stage 1 and returns a map ``(B, C1, H, W)``;
``embed(i, x)`` is the patch embedding in front of stage ``i`` (0 = stage 2, 1 = stage 3);
``stage(i, x, extra)`` runs that stage's blocks on the map with ``extra (B, P, C)`` tokens appended
(None: none) and returns the image positions only; ``pool(x)`` gives the ``(B, out_dim)`` feature.
``dims`` are the widths of stages 2 and 3.

* ``visformer_tiny`` - timm's Visformer-Tiny (stage widths 96 / 192 / 384, depths 7 / 4 / 4,
  224 px). Extra tokens are appended to the map as zero-padded extra rows, as the VT-FSL /
  DVLA-RL++ code does, and removed after the stage. ``backbone.weights=PATH``: a state dict of the
  same model (timm names; ``head.*`` ignored), loaded with ``weights_only=True``.
* ``glyphnet`` - a CPU-sized network for 32 px glyphs with the same interface: stage 1 = two 3x3
  conv blocks (32 -> 16 -> 8 px), stages 2 and 3 = one pre-norm attention block over the map's
  tokens and the extra tokens, then a 3x3 conv block (8 -> 4 px at stage 2).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from fsbench.baselines.backbones import load_state_dict_file
from fsbench.errors import UserError


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


class Staged(nn.Module):
    dims: tuple[int, int]
    out_dim: int

    def forward(self, x):
        x = self.stem(x)
        for i in range(2):
            x = self.stage(i, self.embed(i, x), None)
        return self.pool(x)


def _append_rows(x: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    p = extra.shape[1]
    rows = math.ceil(p / w)
    pad = extra.new_zeros(b, rows * w - p, c)
    sem = torch.cat([extra, pad], 1).transpose(1, 2).reshape(b, c, rows, w)
    return torch.cat([x, sem.to(x.dtype)], 2)


class VisformerStaged(Staged):
    """timm ``visformer_tiny`` with extra tokens appended as rows at stages 2 and 3."""

    def __init__(self, in_channels: int = 3, img_size: int = 224, weights: str | None = None):
        super().__init__()
        import timm

        self.net = timm.create_model("visformer_tiny", pretrained=False, num_classes=0,
                                     in_chans=in_channels, img_size=img_size)
        if weights:
            load_same_shape(self.net, weights, "timm visformer_tiny")
        n = self.net
        self.dims = (n.patch_embed2.proj.out_channels, n.patch_embed3.proj.out_channels)
        self.out_dim = n.num_features

    def stem(self, x):
        n = self.net
        x = n.patch_embed1(n.stem(x))
        if n.pos_embed1 is not None:
            x = n.pos_drop(x + n.pos_embed1)
        return n.stage1(x)

    def embed(self, i, x):
        n = self.net
        pe, pos = (n.patch_embed2, n.pos_embed2) if i == 0 else (n.patch_embed3, n.pos_embed3)
        x = pe(x)
        return x if pos is None else n.pos_drop(x + pos)

    def stage(self, i, x, extra):
        h = x.shape[2]
        if extra is not None:
            x = _append_rows(x, extra)
        x = (self.net.stage2 if i == 0 else self.net.stage3)(x)
        return x[:, :, :h].contiguous()

    def pool(self, x):
        return self.net.norm(x).mean((2, 3))


def _conv(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class _TokenBlock(nn.Module):
    """Pre-norm multi-head self-attention over [image tokens; extra tokens] + MLP (image rows)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, z, extra):
        m = z.shape[1]
        t = z if extra is None else torch.cat([z, extra.to(z.dtype)], 1)
        y = self.norm1(t)
        z = z + self.attn(y[:, :m], y, y, need_weights=False)[0]
        return z + self.mlp(self.norm2(z))


class GlyphNet(Staged):
    def __init__(self, in_channels: int = 1, widths=(32, 64, 64, 128), heads: int = 2):
        super().__init__()
        w0, w1, w2, w3 = widths
        self.stage1 = nn.Sequential(_conv(in_channels, w0), nn.MaxPool2d(2), _conv(w0, w1),
                                    nn.MaxPool2d(2))
        self.proj = nn.ModuleList([nn.Identity() if w1 == w2 else nn.Conv2d(w1, w2, 1),
                                   nn.MaxPool2d(2)])
        self.blocks = nn.ModuleList([_TokenBlock(w2, heads), _TokenBlock(w2, heads)])
        self.convs = nn.ModuleList([_conv(w2, w2), _conv(w2, w3)])
        self.dims = (w2, w2)
        self.out_dim = w3

    def stem(self, x):
        return self.stage1(x)

    def embed(self, i, x):
        return self.proj[i](x)

    def stage(self, i, x, extra):
        b, c, h, w = x.shape
        z = self.blocks[i](to_tokens(x), extra)
        return self.convs[i](z.transpose(1, 2).reshape(b, c, h, w))

    def pool(self, x):
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def load_same_shape(module: nn.Module, path: str, what: str) -> None:
    """Load a local state dict into ``module`` (``head.*`` ignored); every other tensor must be
    there with the same shape."""
    if not Path(path).expanduser().is_file():
        raise UserError(f"backbone.weights: file {path} not found; pass the path of a local "
                        f"{what} state dict")
    state = load_state_dict_file(path, "backbone.weights")
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    own = module.state_dict()
    bad = [k for k in state if k not in own or own[k].shape != state[k].shape]
    missing = [k for k in own if k not in state]
    if bad or missing:
        detail = f"unexpected or wrong shape {bad[:3]}" if bad else f"missing {missing[:3]}"
        raise UserError(f"backbone.weights {path}: not a {what} state dict ({detail}); pass a "
                        f"state dict of the same model")
    module.load_state_dict(state, strict=False)


def build_staged(cfg: dict, in_channels: int, img_size: int) -> Staged:
    cfg = dict(cfg or {})
    name = cfg.pop("name", "visformer_tiny")
    weights = cfg.pop("weights", None)
    if name == "visformer_tiny":
        img_size = int(cfg.pop("img_size", None) or img_size)
        if cfg:
            raise UserError(f"backbone: visformer_tiny takes only name, weights and img_size, not "
                            f"{', '.join(cfg)}")
        return VisformerStaged(in_channels, img_size, weights)
    if name == "glyphnet":
        try:
            net = GlyphNet(in_channels, **cfg)
        except TypeError as e:
            raise UserError(f"backbone: bad option for glyphnet: {e}") from None
        if weights:
            load_same_shape(net, weights, "glyphnet")
        return net
    raise UserError(f"backbone.name: {name!r} is not a DVLA-RL backbone; use visformer_tiny or "
                    f"glyphnet")

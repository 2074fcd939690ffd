"""MambaNeck - Mamba-FSCIL's dual selective-SSM projector (Li et al., arXiv:2407.06136, Sec. 3.2;
official ``mmfscil/models/mamba_ffn_neck.py``), versions ``ssm`` and ``ss2d``.

Input: the backbone's feature map ``f (b, c, h, w)``. Each branch is::

    tokens = MLP(f)  (1x1 convs, LayerNorm over [C, H, W], LeakyReLU 0.1; 2 or 3 layers)
             reshaped to (b, h*w, out) + learnable positional embedding
    g(f)   = avg-pool over tokens of four_way_scan(SelectiveSSM, tokens)

* base branch ``g_base`` plus the residual ``r(f)`` = avg-pooled ``f`` (or a bias-free linear
  ``residual_proj`` of it); base session output ``g_base(f) + r(f)``;
* incremental branch ``g_inc`` (own MLP, positional embedding and block) on the *detached* ``f``,
  with the z-half of its ``in_proj`` zeroed, so ``g_inc = 0`` exactly until it is trained.
  Incremental-session output ``sg(g_base(f) + r(f)) + g_inc(f)`` with ``detach_residual``
  (CIFAR-100, miniImageNet), ``g_base(f) + r(f) + g_inc(f)`` without (CUB).

``version``: ``ssm`` (CIFAR-100, miniImageNet) runs one Mamba block (1-D causal conv, kernel
``d_conv``) over four scan orders sharing its weights; ``ss2d`` (the official CUB config) runs the
VMamba-style :class:`~fsbench.incremental.mamba_fscil.ss2d.SS2D` block (per-direction parameters,
``d_conv_2d`` x ``d_conv_2d`` depthwise conv, output LayerNorm) on the token map.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from fsbench.errors import UserError

from .ss2d import SS2D
from .ssm import SelectiveSSM, four_way_scan


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over ``[C, H, W]`` of a map (mmcv's ``LN`` built with that shape)."""


def build_mlp(cin: int, cout: int, mid: int, layers: int, h: int, w: int) -> nn.Sequential:
    mods = [nn.Conv2d(cin, mid, 1), ChannelLayerNorm([mid, h, w]), nn.LeakyReLU(0.1)]
    if layers == 3:
        mods += [nn.Conv2d(mid, mid, 1), ChannelLayerNorm([mid, h, w]), nn.LeakyReLU(0.1)]
    elif layers != 2:
        raise UserError(f"neck.num_layers: 2 or 3 MLP layers, got {layers}")
    mods.append(nn.Conv2d(mid, cout, 1, bias=False))
    return nn.Sequential(*mods)


class Branch(nn.Module):
    def __init__(self, cin, cout, mid, layers, h, w, ssm: dict, z_sum: str, version: str = "ssm",
                 d_conv_2d: int = 3):
        super().__init__()
        self.mlp = build_mlp(cin, cout, mid, layers, h, w)
        self.pos_embed = nn.Parameter(torch.zeros(1, h * w, cout))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.version = version
        if version == "ss2d":
            self.block = SS2D(cout, **{**ssm, "d_conv": d_conv_2d})
        else:
            self.block = SelectiveSSM(cout, **ssm)
        self.z_sum = z_sum

    def forward(self, f):
        b, _, h, w = f.shape
        tokens = self.mlp(f).flatten(2).transpose(1, 2) + self.pos_embed   # (b, h*w, out)
        if self.version == "ss2d":
            y, z, params = self.block(tokens.view(b, h, w, -1))
            return y.mean((1, 2)), z, params
        y, z, params = four_way_scan(self.block, tokens, h, w, self.z_sum)
        return y.mean(1), z, params


class MambaNeck(nn.Module):
    def __init__(self, in_channels: int, feat_hw: tuple[int, int], opts: dict):
        super().__init__()
        h, w = feat_hw
        out = int(opts["out_channels"])
        mid = int(opts.get("mid_channels") or 2 * in_channels)
        ssm = {"d_state": int(opts["d_state"]), "dt_rank": int(opts.get("dt_rank") or
                                                               opts["d_state"]),
               "d_conv": int(opts["d_conv"]), "expand": float(opts["expand"])}
        kind = {"version": opts.get("version", "ssm"), "d_conv_2d": int(opts.get("d_conv_2d", 3))}
        self.base = Branch(in_channels, out, mid, int(opts["num_layers"]), h, w, ssm,
                           opts["z_sum"], **kind)
        self.inc = Branch(in_channels, out, mid, int(opts["num_layers_new"]), h, w, ssm,
                          opts["z_sum"], **kind)
        self.inc.block.zero_gate()
        if opts["residual_proj"]:
            self.residual_proj = nn.Linear(in_channels, out, bias=False)
        elif in_channels != out:
            raise UserError(f"neck.out_channels ({out}) differs from the backbone's "
                            f"{in_channels} channels: set neck.residual_proj=true")
        else:
            self.residual_proj = None
        self.detach_residual = bool(opts["detach_residual"])
        self.use_inc = False  # switched on after the base session

    def main(self, f: torch.Tensor):
        """Base branch + residual: ``(g_base(f) + r(f), base scan parameters)``."""
        res = f.mean((2, 3))
        if self.residual_proj is not None:
            res = self.residual_proj(res)
        y, _, params = self.base(f)
        return y + res, params

    def forward(self, f: torch.Tensor, main: torch.Tensor | None = None) -> dict:
        """``{"out": (b, out), "z_inc", "params", "params_inc"}`` (the last ones from the
        row-major scan; ``None`` for the incremental branch while it is off). ``main``: the
        base branch + residual, when the caller already has it (frozen base branch)."""
        params = None
        if main is None:
            main, params = self.main(f)
        out = {"params": params, "z_inc": None, "params_inc": None}
        if not self.use_inc:
            out["out"] = main
            return out
        y_inc, z_inc, params_inc = self.inc(f.detach())
        out["out"] = (main.detach() if self.detach_residual else main) + y_inc
        out.update(z_inc=z_inc, params_inc=params_inc)
        return out

    def base_parameters(self):
        """Parameters of the base branch and the residual projection (``lr_mult`` in sessions)."""
        mods = [self.base] + ([self.residual_proj] if self.residual_proj is not None else [])
        return [p for m in mods for p in m.parameters()]

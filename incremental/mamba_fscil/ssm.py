"""The selective-SSM block of Mamba-FSCIL's neck (``mmfscil/models/mamba_ssm/modules/mamba_simple.py``):
Mamba's mixer (Gu & Dao 2023, Fig. 3) without ``out_proj``, returning the input-dependent scan
parameters the class-sensitive losses need, run over four scan orders that share weights.

One block, tokens ``x (b, l, d_model)``::

    x, z   = in_proj(x).chunk(2)                   # z: the gate input (suppression loss)
    x      = SiLU(causal depthwise conv1d(x))      # kernel d_conv
    dt, B, C = x_proj(x).split(dt_rank, d_state, d_state)   # dt: low rank (separation loss)
    y      = selective_scan(x, dt_proj.weight @ dt, A, B, C, D, z, dt_proj.bias, softplus)

with ``A = -exp(A_log)`` (S4D-real init ``1..N``), ``D = 1`` and ``dt_proj`` initialised so that
``softplus(bias)`` is log-uniform in ``[dt_min, dt_max]`` (Mamba's initialisation).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from fsbench.scan import selective_scan


class SelectiveSSM(nn.Module):
    def __init__(self, d_model: int, d_state: int = 16, dt_rank: int | None = None,
                 d_conv: int = 4, expand: float = 1.0, dt_min: float = 1e-3, dt_max: float = 0.1,
                 dt_floor: float = 1e-4):
        super().__init__()
        self.d_inner = int(expand * d_model)
        self.d_state = d_state
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner,
                                padding=d_conv - 1)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner)
        std = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        a = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(a))
        self.D = nn.Parameter(torch.ones(self.d_inner))

    def zero_gate(self) -> None:
        """Zero the z-half of ``in_proj``: ``z = 0`` so ``y * SiLU(z) = 0`` (an exact no-op)."""
        with torch.no_grad():
            self.in_proj.weight[self.d_inner:].zero_()

    def forward(self, x: torch.Tensor):
        """``x (b, l, d_model)`` -> ``y (b, l, d_inner)``, ``z (b, d_inner, l)`` and the scan
        parameters ``{"dt": (b, dt_rank, l), "B": (b, n, l), "C": (b, n, l)}``."""
        b, l, _ = x.shape
        xz = self.in_proj(x).transpose(1, 2)                              # (b, 2 d_inner, l)
        u, z = xz.chunk(2, dim=1)
        u = F.silu(self.conv1d(u)[..., :l])
        dt, B, C = self.x_proj(u.transpose(1, 2)).split(
            [self.dt_rank, self.d_state, self.d_state], dim=-1)           # (b, l, .)
        dt, B, C = dt.transpose(1, 2), B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous()
        delta = torch.einsum("dr,brl->bdl", self.dt_proj.weight, dt)
        y = selective_scan(u, delta, -torch.exp(self.A_log.float()), B, C, self.D.float(), z=z,
                           delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
        return y.transpose(1, 2), z, {"dt": dt, "B": B, "C": C}


def _col_major(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Tokens ``(b, h*w, ...)`` in row-major order -> column-major order (and back with h, w
    swapped)."""
    return t.reshape(t.shape[0], h, w, *t.shape[2:]).transpose(1, 2).reshape(t.shape)


def four_way_scan(block: SelectiveSSM, x: torch.Tensor, h: int, w: int, z_sum: str = "code"):
    """Run ``block`` over four scan orders of the ``h x w`` token grid sharing weights (row-major,
    reversed row-major, column-major, reversed column-major), map each output back to row-major
    order and sum. Returns ``(y (b, l, d), z (b, d, l), params of the row-major scan)``.

    The four orders run as one batch of ``4 b`` sequences. ``z_sum="code"`` sums the gate inputs
    as the official neck does, flipping the two reversed orders' ``z`` along the *channel* axis
    (``flip([1])`` of a ``(b, d, l)`` tensor); ``"aligned"`` flips them along the tokens like the
    outputs. Only the suppression loss sees the difference."""
    b = x.shape[0]
    xv = _col_major(x, h, w)
    y, z, params = block(torch.cat([x, x.flip(1), xv, xv.flip(1)]))
    yh, yhf, yv, yvf = y.split(b)
    zh, zhf, zv, zvf = z.split(b)
    y = yh + yhf.flip(1) + _col_major(yv, w, h) + _col_major(yvf.flip(1), w, h)
    axis = 1 if z_sum == "code" else 2
    zc = lambda t: _col_major(t.transpose(1, 2), w, h).transpose(1, 2)  # noqa: E731
    z = zh + zhf.flip(axis) + zc(zv) + zc(zvf.flip(axis))
    return y, z, {k: v[:b] for k, v in params.items()}

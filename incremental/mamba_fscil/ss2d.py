"""SS2D - the VMamba-style 2-D selective scan of Mamba-FSCIL's CUB neck (``neck.version: ss2d``;
official ``mmfscil/models/ss2d.py``, used with ``use_out_proj=False, use_out_norm=True``).

Unlike the ``ssm`` block (one set of scan parameters shared by four scan orders, see
:func:`~fsbench.incremental.mamba_fscil.ssm.four_way_scan`), SS2D has **per-direction**
parameters. On a token map ``x (b, h, w, d_model)``::

    u, z0  = in_proj(x).chunk(2)                    # z0: the gate input (suppression loss)
    u      = SiLU(depthwise conv2d_{k x k}(u))      # k = d_conv (3), padding (k - 1) // 2
    z      = SiLU(z0)
    xs_k   = u in four orders k: row-major, reversed row-major, column-major, reversed column-major
    dt_k, B_k, C_k = x_proj_k(xs_k)                 # per direction (K = 4 weight sets)
    y_k    = selective_scan(xs_k, dt_proj_k(dt_k), A_k, B_k, C_k, D_k, softplus(+ bias_k))
    y      = LayerNorm(sum_k y_k mapped back to row-major) * z

The four directions run as one grouped scan (``u (b, 4 d, l)`` with ``B, C (b, 4, n, l)``), as the
official code does. The scan parameters returned for the separation loss are the per-direction
``dt (b, 4, dt_rank, l)``, ``B``, ``C (b, 4, n, l)`` (averaged over batch, directions and tokens,
``param_avg_dim='0-1-3'``). Initialisation as Mamba's (``dt`` bias log-uniform in
``[dt_min, dt_max]``, ``A`` S4D-real ``1..N``, ``D = 1``) for each direction.

One difference: the official reverse of the column-major orders (``'b d (h w) -> b d (w h)'``
with ``h=H, w=W`` on a sequence that is in ``(w h)`` order) is the exact inverse only for square
maps (CUB's 7 x 7, the only configuration that uses SS2D); here the inverse is exact for any
``h x w``, which gives the same result on square maps.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from fsbench.scan import selective_scan

K = 4  # scan directions: h, h_flip, v, v_flip


class SS2D(nn.Module):
    def __init__(self, d_model: int, d_state: int = 16, dt_rank: int | None = None,
                 d_conv: int = 3, expand: float = 1.0, dt_min: float = 1e-3, dt_max: float = 0.1,
                 dt_floor: float = 1e-4):
        super().__init__()
        d = self.d_inner = int(expand * d_model)
        self.d_state = d_state
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * d, bias=False)
        self.conv2d = nn.Conv2d(d, d, d_conv, groups=d, padding=(d_conv - 1) // 2) \
            if d_conv > 1 else None
        # K direction-specific projections, initialised like nn.Linear (kaiming-uniform)
        proj = [nn.Linear(d, self.dt_rank + 2 * d_state, bias=False).weight for _ in range(K)]
        self.x_proj_weight = nn.Parameter(torch.stack(proj))                # (K, r + 2n, d)
        std = self.dt_rank ** -0.5
        self.dt_projs_weight = nn.Parameter(torch.empty(K, d, self.dt_rank).uniform_(-std, std))
        dt = torch.exp(torch.rand(K, d) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_floor)
        self.dt_projs_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        a = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(K * d, 1)
        self.A_logs = nn.Parameter(torch.log(a))                            # (K d, n)
        self.Ds = nn.Parameter(torch.ones(K * d))
        self.out_norm = nn.LayerNorm(d)

    def zero_gate(self) -> None:
        """Zero the z-half of ``in_proj``: ``SiLU(0) = 0`` gates the output to an exact 0."""
        with torch.no_grad():
            self.in_proj.weight[self.d_inner:].zero_()

    @staticmethod
    def orders(u: torch.Tensor) -> torch.Tensor:
        """``(b, d, h, w)`` -> ``(b, K, d, h*w)``: row-major, reversed, column-major, reversed."""
        rows, cols = u.flatten(2), u.transpose(2, 3).flatten(2)
        return torch.stack([rows, rows.flip(-1), cols, cols.flip(-1)], 1)

    @staticmethod
    def merge(ys: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The inverse of :meth:`orders`, summed over directions: ``(b, K, d, l)`` -> ``(b, d, l)``
        in row-major order."""
        b, _, d, _ = ys.shape
        cols = ys[:, 2] + ys[:, 3].flip(-1)                                  # column-major
        return ys[:, 0] + ys[:, 1].flip(-1) + cols.view(b, d, w, h).transpose(2, 3).reshape(
            b, d, h * w)

    def forward(self, x: torch.Tensor):
        """``x (b, h, w, d_model)`` -> ``y (b, h, w, d_inner)``, ``z0 (b, h, w, d_inner)`` (the gate
        input before SiLU) and the scan parameters ``{"dt", "B", "C"}`` ``(b, K, ., l)``."""
        b, h, w, _ = x.shape
        u, z0 = self.in_proj(x).chunk(2, dim=-1)
        u = u.permute(0, 3, 1, 2)
        if self.conv2d is not None:
            u = F.silu(self.conv2d(u.contiguous()))
            z = F.silu(z0)
        else:  # the official code applies the activation to both halves before splitting
            u, z = F.silu(u), F.silu(z0)
        xs = self.orders(u)                                                  # (b, K, d, l)
        x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight)
        dt, B, C = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=2)
        delta = torch.einsum("bkrl,kdr->bkdl", dt, self.dt_projs_weight)
        ys = selective_scan(xs.reshape(b, K * self.d_inner, h * w),
                            delta.reshape(b, K * self.d_inner, h * w),
                            -torch.exp(self.A_logs.float()), B.contiguous(), C.contiguous(),
                            self.Ds.float(), delta_bias=self.dt_projs_bias.reshape(-1).float(),
                            delta_softplus=True).view(b, K, self.d_inner, h * w)
        y = self.out_norm(self.merge(ys, h, w).transpose(1, 2)).view(b, h, w, -1)
        return y * z, z0, {"dt": dt, "B": B, "C": C}

"""Mamba-FSCIL's classifier and losses (Li et al., arXiv:2407.06136, Sec. 3.3-3.4; NC-FSCIL, Yang
et al. ICLR 2023, Eq. 3-6; official ``ETFHead.py`` and ``classifier.py``).

* :func:`simplex_etf` - the fixed classifier ``W = sqrt(K/(K-1)) U (I_K - 11^T/K)``, ``U`` a
  ``(d, K)`` matrix with orthonormal columns (QR of a random matrix; needs ``d >= K``). Columns
  have unit norm and pairwise cosine ``-1/(K-1)``.
* :func:`dot_regression` - ``L = 1/2 mean_i (w_i^T h_i - |w_i|)^2`` on L2-normalised features
  ``h_i``; ``w_i`` the sample's (optionally rescaled) ETF column. With ``with_len`` the columns are
  scaled by ``sqrt(gamma / count_c)`` (:func:`length_rect`, ``gamma`` = batch / classes present).
* :func:`suppression` - ``w_base |z[base]|_F / numel - w_novel |z[novel]|_F / numel`` on the
  incremental branch's gate input ``z``: base samples keep the new branch silent, novel ones open it.
* :func:`separation` - for each of ``dt, B, C``: the base-sample and novel-sample means (over batch
  and tokens) compared by cosine similarity ``S (2x2)``; ``mean|I - S|`` (= ``|cos| / 2``).
* :func:`mix_features` - feature-level mixup with a fixed ``lambda`` and a random pairing.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from fsbench import distributed as dist


def simplex_etf(dim: int, num_classes: int, seed: int = 0) -> torch.Tensor:
    """A ``(dim, num_classes)`` simplex equiangular tight frame (fixed, deterministic in ``seed``)."""
    if dim < num_classes:
        raise ValueError(f"simplex_etf: feature dim {dim} < {num_classes} classes; the ETF needs "
                         f"dim >= classes (raise neck.out_channels)")
    g = torch.Generator().manual_seed(int(seed))
    u, _ = torch.linalg.qr(torch.rand(dim, num_classes, generator=g, dtype=torch.float64))
    k = num_classes
    center = torch.eye(k, dtype=torch.float64) - torch.full((k, k), 1.0 / k, dtype=torch.float64)
    return (math.sqrt(k / (k - 1)) * u @ center).float()


class ETFHead(nn.Module):
    """Logits ``normalize(h) @ W[:, :num]`` against the fixed ETF (a buffer: never trained)."""

    def __init__(self, dim: int, num_classes: int, seed: int = 0):
        super().__init__()
        self.register_buffer("etf", simplex_etf(dim, num_classes, seed))

    def forward(self, f: torch.Tensor, num: int | None = None) -> torch.Tensor:
        w = self.etf if num is None else self.etf[:, :num]
        return F.normalize(f, dim=-1) @ w


def length_rect(labels: torch.Tensor, num_classes: int, global_batch: bool = False
                ) -> torch.Tensor:
    """``with_len`` scaling: ``sqrt(gamma / count_c)`` for classes in the batch, 1 elsewhere.

    ``global_batch``: under torchrun, count over the batches of all processes (the preset's total
    batch, as in one process) with :func:`fsbench.distributed.all_reduce_sum`."""
    counts = torch.bincount(labels, minlength=num_classes)
    if global_batch:
        counts = dist.all_reduce_sum(counts)
    present = counts > 0
    gamma = int(counts.sum()) / int(present.sum())
    rect = torch.ones(num_classes, device=labels.device)
    rect[present] = torch.sqrt(gamma / counts[present].float())
    return rect


def dot_regression(f: torch.Tensor, labels: torch.Tensor, etf: torch.Tensor,
                   with_len: bool = False, global_batch: bool = False) -> torch.Tensor:
    """NC-FSCIL's DR loss (without its ``loss_weight``); ``global_batch`` as in
    :func:`length_rect`."""
    h = F.normalize(f, dim=-1)
    target = etf[:, labels].t()
    if with_len:
        target = target * length_rect(labels, etf.shape[1], global_batch)[labels, None]
        m = target.norm(dim=1)
    else:
        m = torch.ones(len(labels), device=f.device)
    return 0.5 * ((h * target).sum(1) - m).pow(2).mean()


def suppression(z: torch.Tensor, is_base: torch.Tensor, w_base: float,
                w_novel: float) -> torch.Tensor:
    """Class-sensitive suppression on the incremental branch's ``z (b, d, l)``."""
    loss = z.new_zeros(())
    if w_base > 0 and is_base.any():
        zb = z[is_base]
        loss = loss + w_base * zb.norm() / zb.numel()
    if w_novel > 0 and (~is_base).any():
        zn = z[~is_base]
        loss = loss - w_novel * zn.norm() / zn.numel()
    return loss


def separation(params: dict, is_base: torch.Tensor, weight: float) -> torch.Tensor:
    """Class-sensitive separation of the scan parameters ``{"dt", "B", "C"}`` (each ``(b, c, l)``,
    or ``(b, K, c, l)`` for SS2D's directions), averaged as the official ``param_avg_dim='0-1-3'``
    (every axis but the channels ``c``: batch, directions, tokens)."""
    first = next(iter(params.values()))
    if weight <= 0 or not is_base.any() or is_base.all():
        return first.new_zeros(())
    loss = first.new_zeros(())
    for p in params.values():
        dims = tuple(i for i in range(p.dim()) if i != p.dim() - 2)
        means = torch.stack([p[is_base].mean(dims), p[~is_base].mean(dims)])
        m = F.normalize(means, dim=-1)
        sim = m @ m.t()
        loss = loss + weight * (torch.eye(2, device=p.device) - sim).abs().mean()
    return loss


def mix_features(f: torch.Tensor, labels: torch.Tensor, lam: float):
    """``lam f + (1 - lam) f[perm]``; returns the mixed features and both label sets."""
    perm = torch.randperm(len(f)).to(f.device)
    return lam * f + (1 - lam) * f[perm], labels, labels[perm]

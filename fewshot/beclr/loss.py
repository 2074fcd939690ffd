"""BECLR's pretraining loss (Eq. 1-2 of the paper: alignment + uniformity over the enhanced
batch)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


class BECLRLoss:
    """``L_pos + lamb_neg * L_neg`` on (possibly enhanced) batches; see the module docstring."""

    def __init__(self, temp: float = 2.0, lamb_neg: float = 0.1, variant: str = "official"):
        self.temp, self.lamb_neg, self.variant = float(temp), float(lamb_neg), variant

    @staticmethod
    def pos(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return -(F.normalize(p, dim=1) * F.normalize(z.detach(), dim=1)).sum(1).mean()

    def neg(self, z1: torch.Tensor, z2: torch.Tensor, batch: int) -> torch.Tensor:
        """Uniformity over both views' student projections. ``batch``: original images per view
        (the rows of a view are ``[Z; NN_1; ...; NN_k]``, so row ``r`` is image ``r % batch``)."""
        z = F.normalize(torch.cat([z1, z2]), dim=1)
        n, b = z.shape[0], z1.shape[0]
        rows = torch.arange(n, device=z.device)
        if self.variant == "paper":  # an image's neighbours are its positives, not negatives
            group = rows % b % batch
        else:  # released code: only the row itself and the same row of the other view
            group = rows % b
        excl = group.unsqueeze(0) == group.unsqueeze(1)
        logits = (z @ z.T / self.temp).masked_fill(excl, float("-inf"))
        n_neg = (~excl).sum(1).to(z.dtype)
        return (torch.logsumexp(logits, 1) - n_neg.log()).exp().mean().log()

    def __call__(self, z_t: torch.Tensor, p: torch.Tensor, z_s: torch.Tensor,
                 batch: int) -> dict:
        bsz = z_t.shape[0] // 2
        z1, z2 = z_t[:bsz], z_t[bsz:]
        p1, p2 = p[:bsz], p[bsz:]
        s1, s2 = z_s[:bsz], z_s[bsz:]
        loss_pos = (self.pos(p1, z2) + self.pos(p2, z1)) / 2
        loss_neg = self.neg(s1, s2, batch)
        return {"loss": loss_pos + self.lamb_neg * loss_neg, "loss_pos": loss_pos.detach(),
                "loss_neg": loss_neg.detach()}

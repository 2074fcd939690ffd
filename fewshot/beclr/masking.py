"""BECLR's two augmented views per image and the iBOT/BEiT block masking of the student's
input (the released ``mask`` options; see the package docstring)."""
from __future__ import annotations

import math
import random

import numpy as np
import torch


def block_mask(grid_h: int, grid_w: int, ratio: float, rng: random.Random,
               aspect=(0.3, 1 / 0.3), tries: int = 10) -> np.ndarray:
    """A BEiT-style block mask over a ``grid_h x grid_w`` patch grid covering about ``ratio`` of it.

    Rectangles of random area (at least ``(min(grid)//3)^2`` patches) and log-uniform aspect ratio
    are added while they bring new patches within the remaining budget; stops when the budget is
    reached or ``tries`` draws in a row add nothing."""
    mask = np.zeros((grid_h, grid_w), dtype=bool)
    budget_total = ratio * grid_h * grid_w
    lo_area = (min(grid_h, grid_w) // 3) ** 2
    log_lo, log_hi = math.log(aspect[0]), math.log(aspect[1])
    covered = 0
    while covered < budget_total:
        budget = budget_total - covered
        added = 0
        for _ in range(tries):
            area = rng.uniform(lo_area, budget)
            ar = math.exp(rng.uniform(log_lo, log_hi))
            h, w = int(round(math.sqrt(area * ar))), int(round(math.sqrt(area / ar)))
            if not (0 < h < grid_h and 0 < w < grid_w):
                continue
            top, left = rng.randint(0, grid_h - h), rng.randint(0, grid_w - w)
            block = mask[top:top + h, left:left + w]
            new = int(h * w - block.sum())
            if 0 < new <= budget:
                block[...] = True
                added = new
                break
        if added == 0:
            break
        covered += added
    return mask


def apply_patch_mask(images: torch.Tensor, masks: torch.Tensor, patch: int) -> torch.Tensor:
    """Zero the ``patch x patch`` pixel blocks where ``masks`` ``(B, gh, gw)`` is true."""
    if masks.numel() == 0:
        return images
    keep = (~masks).to(images.dtype)
    keep = keep.repeat_interleave(patch, 1).repeat_interleave(patch, 2)
    h, w = images.shape[-2:]
    full = torch.ones(keep.shape[0], h, w, dtype=images.dtype, device=images.device)
    full[:, :keep.shape[1], :keep.shape[2]] = keep[:, :h, :w]
    return images * full.unsqueeze(1)


class TwoViews:
    """Image -> (2 independently augmented views ``(2, C, H, W)``, their masks ``(2, gh, gw)``)."""

    def __init__(self, pipeline, mask_cfg: dict | None):
        self.pipeline = pipeline
        m = dict(mask_cfg or {})
        self.masking = bool(m.get("enabled", False))
        self.patch = int(m.get("patch", 16))
        self.ratio = float(m.get("ratio", 0.15))
        self.var = float(m.get("ratio_var", 0.1))
        self.aspect = tuple(m.get("aspect", [0.3, 1 / 0.3]))

    def __call__(self, img):
        views = torch.stack([self.pipeline(img), self.pipeline(img)])
        if not self.masking:
            return views, torch.zeros(2, 0, 0, dtype=torch.bool)
        gh, gw = views.shape[-2] // self.patch, views.shape[-1] // self.patch
        # torch's RNG is seeded per run (and per DataLoader worker): derive the mask RNG from it
        rng = random.Random(int(torch.randint(0, 2**62, (1,))))
        masks = []
        for _ in range(2):
            r = rng.uniform(self.ratio - self.var, self.ratio + self.var) if self.var > 0 \
                else self.ratio
            masks.append(torch.from_numpy(block_mask(gh, gw, max(0.0, r), rng, self.aspect)))
        return views, torch.stack(masks)

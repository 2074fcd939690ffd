"""Per-iteration pieces of the mmcls-style base-session recipes (Mamba-FSCIL's official configs),
used by :func:`fsbench.baselines.training.train_supervised` only when a preset asks for them.

* :class:`IterationSchedule` - the learning rate set before every iteration, as mmcv's
  ``LrUpdaterHook``: a regular lr (``cooldown``: mmcls' ``CosineAnnealingCooldown`` by iteration;
  ``multistep``: x ``gamma`` at each epoch of ``milestones``; ``cosine``: cosine over the epochs to
  0; ``constant``) times a linear warm-up over the first ``warmup_iters`` iterations, starting at
  ``warmup_ratio`` (mmcv: ``lr * (1 - (1 - i / warmup_iters) * (1 - warmup_ratio))``).
* :class:`BatchAugments` - one of batch Mixup, CutMix or identity per batch, drawn with the given
  probabilities (mmcls ``Augments`` with Mamba-FSCIL's ``*TwoLabel`` layers). Mixup:
  ``lam ~ Beta(alpha, alpha)``, ``x = lam x + (1 - lam) x[perm]``; CutMix: a box of side
  ``sqrt(1 - lam)`` of the image at a uniform centre (clipped), pasted from ``x[perm]``, ``lam``
  corrected to the pasted area. The loss is ``lam L(y) + (1 - lam) L(y[perm])`` (the official
  ``classifier.py``: ``loss_main * lam + loss_aux * (1 - lam)``); identity keeps ``L(y)``.

Random draws use NumPy's and torch's global generators, which the runner seeds and the epoch
checkpoints save, so a resumed run draws the same boxes.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from fsbench.errors import UserError

SCHEDULES = ("cosine", "multistep", "constant", "cooldown")


class IterationSchedule:
    """``lr(epoch, it)`` for iteration ``it`` (0-based, over the whole run) of ``epoch``."""

    def __init__(self, t: dict, epochs: int, iters_per_epoch: int):
        self.kind = t.get("schedule", "cosine")
        if self.kind not in SCHEDULES:
            raise UserError(f"train.schedule: unknown schedule {self.kind!r}; use "
                            f"{', '.join(SCHEDULES)}")
        self.epochs, self.total = epochs, max(1, epochs * iters_per_epoch)
        self.milestones = [int(m) for m in t.get("milestones") or []]
        self.gamma = float(t.get("gamma", 0.1))
        self.min_ratio = float(t.get("min_lr_ratio", 0.01))
        self.cool_iters = int(t.get("cooldown_iters", 10))
        self.cool_ratio = float(t.get("cooldown_ratio", 0.1))
        self.warm_iters = int(t.get("warmup_iters", 0))
        self.warm_ratio = float(t.get("warmup_ratio", 0.1))

    @staticmethod
    def wanted(t: dict) -> bool:
        """Whether ``t`` asks for per-iteration rates (otherwise torch's epoch schedulers run)."""
        return t.get("schedule") == "cooldown" or int(t.get("warmup_iters", 0) or 0) > 0

    def factor(self, epoch: int, it: int) -> float:
        """The lr as a multiple of the base lr."""
        if self.kind == "cooldown":
            target = self.min_ratio
            if it > self.total - self.cool_iters:
                f = target * self.cool_ratio
            else:
                span = max(1, self.total - self.cool_iters)
                f = target + 0.5 * (1 - target) * (1 + math.cos(math.pi * it / span))
        elif self.kind == "multistep":
            f = self.gamma ** sum(epoch >= m for m in self.milestones)
        elif self.kind == "cosine":
            f = 0.5 * (1 + math.cos(math.pi * epoch / max(1, self.epochs)))
        else:
            f = 1.0
        if it < self.warm_iters:
            f *= 1 - (1 - it / self.warm_iters) * (1 - self.warm_ratio)
        return f


class BatchAugments:
    """``train.batch_augments``: ``[{name: mixup|cutmix|identity, p: ..., alpha: ...}, ...]`` with
    the probabilities summing to 1 (a missing rest goes to identity)."""

    def __init__(self, spec):
        if not isinstance(spec, list) or not all(isinstance(a, dict) for a in spec):
            raise UserError("train.batch_augments: expected a list of {name: mixup|cutmix|identity,"
                            " p: PROBABILITY, alpha: ALPHA}")
        self.names, self.probs, self.alphas = [], [], []
        for a in spec:
            name = a.get("name")
            if name not in ("mixup", "cutmix", "identity"):
                raise UserError(f"train.batch_augments: name {name!r} is not mixup, cutmix or "
                                f"identity")
            p, alpha = float(a.get("p", 1.0)), float(a.get("alpha", 1.0))
            if not 0 <= p <= 1 or (name != "identity" and not alpha > 0):
                raise UserError(f"train.batch_augments: {name} needs p in [0, 1] and alpha > 0")
            self.names.append(name)
            self.probs.append(p)
            self.alphas.append(alpha)
        rest = 1.0 - sum(self.probs)
        if rest < -1e-6:
            raise UserError(f"train.batch_augments: the probabilities sum to {sum(self.probs)}, "
                            f"more than 1")
        if rest > 1e-6:
            self.names.append("identity")
            self.probs.append(rest)
            self.alphas.append(1.0)
        self.probs = list(np.asarray(self.probs) / sum(self.probs))

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        """``(x, y_a, y_b, lam)``; ``y_b`` is None for identity."""
        k = int(np.random.choice(len(self.names), p=self.probs))
        name, alpha = self.names[k], self.alphas[k]
        if name == "identity":
            return x, y, None, 1.0
        lam = float(np.random.beta(alpha, alpha))
        perm = torch.randperm(len(x)).to(x.device)
        if name == "mixup":
            return lam * x + (1 - lam) * x[perm], y, y[perm], lam
        h, w = x.shape[-2:]
        ratio = math.sqrt(1 - lam)
        ch, cw = int(h * ratio), int(w * ratio)
        cy, cx = int(np.random.randint(0, h)), int(np.random.randint(0, w))
        y1, y2 = np.clip(cy - ch // 2, 0, h), np.clip(cy + ch // 2, 0, h)
        x1, x2 = np.clip(cx - cw // 2, 0, w), np.clip(cx + cw // 2, 0, w)
        x = x.clone()
        x[:, :, y1:y2, x1:x2] = x[perm, :, y1:y2, x1:x2]
        lam = 1.0 - float((y2 - y1) * (x2 - x1)) / float(h * w)
        return x, y, y[perm], lam

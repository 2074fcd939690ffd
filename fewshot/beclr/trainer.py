"""One BECLR pretraining run: optimiser, learning-rate and teacher-momentum schedules, the DyCE
memories and the loss (:class:`Trainer`; :meth:`Trainer.step` is one iteration)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from fsbench.errors import UserError

from .dyce import DyCE
from .loss import BECLRLoss
from .masking import apply_patch_mask

if TYPE_CHECKING:
    from .learner import BECLR


def cosine_schedule(start: float, end: float, total: int, warmup: int = 0) -> np.ndarray:
    """Per-iteration values: linear warm-up from 0, then cosine from ``start`` to ``end``."""
    warm = np.linspace(0.0, start, warmup) if warmup > 0 else np.zeros(0)
    it = np.arange(max(0, total - warmup))
    cos = end + 0.5 * (start - end) * (1 + np.cos(np.pi * it / max(1, len(it))))
    return np.concatenate([warm, cos])


class Trainer:
    """One BECLR pretraining run's optimiser, schedules, memories and loss; :meth:`step` is one
    iteration (used by :meth:`BECLR.fit` and ``benchmarks/bench_dyce.py``)."""

    def __init__(self, learner: BECLR, cfg: dict, device, seed: int, epochs: int,
                 iters_per_epoch: int):
        t, d, batch = cfg["t"], cfg["d"], cfg["batch"]
        self.learner, self.batch, self.device = learner, batch, torch.device(device)
        opts = learner.options
        variant = d.variant
        dim = int(learner.config.get("proj_dim", 512))
        learner.memories = []
        if cfg["dyce"]:
            for name in ("teacher-z", "student-p", "student-z"):
                learner.memories.append(DyCE(
                    cfg["size"], dim, d.num_clusters, d.topk,
                    memory_start_epoch=d.memory_start_epoch, cluster_freq=d.cluster_freq,
                    recluster=d.recluster, epsilon=d.epsilon,
                    sinkhorn_iterations=d.sinkhorn_iterations,
                    prototype_momentum=d.prototype_momentum, kmeans_n_init=d.kmeans_n_init,
                    variant=variant, seed=seed, device=self.device, name=f"dyce[{name}]"))
        self.criterion = BECLRLoss(opts["loss"].temp, opts["loss"].lamb_neg, variant)
        self.patch = opts["mask"].patch
        total = max(1, epochs * iters_per_epoch)
        base_lr = float(t.get("lr", 0.3)) * batch / 256.0
        self.lrs = cosine_schedule(base_lr, float(t.get("min_lr", 1e-6)), total,
                                   int(t.get("warmup_epochs", 0)) * iters_per_epoch)
        self.moms = cosine_schedule(opts["train"].teacher_momentum, 1.0, total)
        decay, no_decay = [], []
        for name, prm in learner.student.named_parameters():
            (no_decay if name.endswith(".bias") or prm.ndim == 1 else decay).append(prm)
        wd = float(t.get("weight_decay", 1e-4))
        # The released train loop overwrites the weight decay of *both* parameter groups when the
        # backbone is a ResNet, so biases and norm parameters are decayed too (decay_all_params).
        self.opt = torch.optim.SGD(
            [{"params": decay, "weight_decay": wd},
             {"params": no_decay, "weight_decay": wd if opts["train"].decay_all_params else 0.0}],
            lr=base_lr, momentum=float(t.get("momentum", 0.9)))
        self.amp = opts["train"].amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if self.amp else None
        self.s_params = [p for n, p in learner.student.named_parameters()
                         if not n.startswith("predictor.")]
        self.t_params = list(learner.teacher.parameters())
        assert len(self.s_params) == len(self.t_params)
        self.it = 0
        self.last_lr = base_lr
        learner.student.train()
        learner.teacher.train()

    def step(self, x: torch.Tensor, masks: torch.Tensor | None, epoch: int) -> dict:
        """One iteration on ``x`` ``(B, 2, C, H, W)`` (two views per image) and the student's
        patch masks ``(B, 2, gh, gw)`` (or None)."""
        lrn, dev = self.learner, self.device
        x = torch.cat([x[:, 0], x[:, 1]]).to(dev, non_blocking=True)  # view 1, then view 2
        xs = x if masks is None else apply_patch_mask(
            x, torch.cat([masks[:, 0], masks[:, 1]]).to(dev), self.patch)
        i = min(self.it, len(self.lrs) - 1)
        self.last_lr = float(self.lrs[i])
        for g in self.opt.param_groups:
            g["lr"] = self.last_lr
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.amp):
            p, z_s = lrn.student(xs)
            with torch.no_grad():
                z_t = lrn.teacher(x)
        p, z_s, z_t = p.float(), z_s.float(), z_t.float()
        k_used = 0
        if lrn.memories:
            z_t, k_used = lrn.memories[0].step(z_t.detach(), epoch)
            p, _ = lrn.memories[1].step(p, epoch)
            z_s, _ = lrn.memories[2].step(z_s, epoch)
        out = self.criterion(z_t, p, z_s, self.batch)
        loss = out["loss"]
        if not torch.isfinite(loss):
            raise UserError(f"beclr: the loss became {float(loss)} at epoch {epoch}; lower "
                            f"train.lr")
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            loss.backward()
            self.opt.step()
        with torch.no_grad():  # teacher <- m * teacher + (1 - m) * student
            m = float(self.moms[i])
            torch._foreach_mul_(self.t_params, m)
            torch._foreach_add_(self.t_params, [q.detach() for q in self.s_params], alpha=1 - m)
        self.it += 1
        return {"loss": float(loss.detach()), "loss_pos": float(out["loss_pos"]),
                "loss_neg": float(out["loss_neg"]), "topk": k_used}

    # -- state (the per-epoch checkpoint of :meth:`BECLR.fit`) --------------------------------
    def state_dict(self) -> dict:
        """Optimiser, gradient scaler, iteration counter and the DyCE memories (the networks are
        the learner's modules and are saved beside it)."""
        return {"opt": self.opt.state_dict(), "it": self.it, "last_lr": self.last_lr,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "memories": [m.state_dict() for m in self.learner.memories]}

    def load_state_dict(self, state: dict) -> None:
        if len(state["memories"]) != len(self.learner.memories):
            raise ValueError(f"{len(state['memories'])} DyCE memories saved, "
                             f"{len(self.learner.memories)} configured (dyce.enabled changed)")
        self.opt.load_state_dict(state["opt"])
        self.it, self.last_lr = int(state["it"]), float(state["last_lr"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        for m, ms in zip(self.learner.memories, state["memories"]):
            m.load_state_dict(ms)

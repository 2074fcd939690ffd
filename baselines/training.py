"""Supervised base-session training shared by the FSCIL learners (NCM, fine-tune, TEEN, Mamba).

Under torchrun it is data-parallel: ``train.batch_size`` is the total batch, split over the
processes (:meth:`~fsbench.context.RunContext.per_rank_batch`), each process reads its shard of the
images and the gradients are averaged (DistributedDataParallel).

Backbone + cosine classifier trained with cross-entropy, SGD with momentum (Nesterov as in the
CEC/TEEN code), weight decay, and a cosine or multi-step schedule. Model selection:

* ``val`` (default) - a validation split carved from the base training images (``val_fraction``
  per class, deterministic); the best validation epoch is kept;
* ``last`` - the last epoch;
* ``test`` - the original CEC/TEEN protocol: best epoch on the base *test* set. Only when the run
  sets ``select_on_test: true`` (the runner then hands over the base test images and the result
  carries the ``selected_on_test`` flag).
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from fsbench import distributed as dist
from fsbench.episodes.base import ImageDataset
from fsbench.errors import UserError
from fsbench.trainstate import EpochCheckpoint

from .recipes import BatchAugments, IterationSchedule


def split_val(data: ImageDataset, fraction: float, seed: int):
    """Deterministic per-class split of ``data`` into (train, val) subsets."""
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(data.labels):
        idx = np.flatnonzero(data.labels == c)
        k = int(round(len(idx) * fraction))
        if k >= len(idx):
            k = len(idx) - 1
        if k > 0:
            val.append(rng.choice(idx, size=k, replace=False))
    val = np.sort(np.concatenate(val)) if val else np.empty(0, dtype=np.int64)
    train = np.setdiff1d(np.arange(len(data)), val)
    return data.subset(train), data.subset(val)


def make_optimizer(params, t: dict, epochs: int):
    """SGD and its epoch scheduler. ``params``: parameters, or ``[(parameters, lr_mult), ...]``
    groups (e.g. Mamba-FSCIL's CUB backbone at 0.1 x lr). ``schedule: cooldown`` (and any
    ``warmup_iters``) are set per iteration by :class:`~fsbench.baselines.recipes.IterationSchedule`;
    the epoch scheduler is then a constant."""
    lr = float(t.get("lr", 0.1))
    if params and isinstance(params[0], tuple):
        params = [{"params": list(ps), "lr": lr * float(mult)} for ps, mult in params]
    opt = torch.optim.SGD(params, lr=lr, momentum=float(t.get("momentum", 0.9)),
                          nesterov=bool(t.get("nesterov", True)),
                          weight_decay=float(t.get("weight_decay", 5e-4)))
    sched = t.get("schedule", "cosine")
    if sched == "cosine" and not IterationSchedule.wanted(t):
        s = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    elif sched == "multistep" and not IterationSchedule.wanted(t):
        s = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(t.get("milestones", [])),
                                                 gamma=float(t.get("gamma", 0.1)))
    elif sched in ("constant", "cooldown") or IterationSchedule.wanted(t):
        s = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)
    else:
        raise UserError(f"train.schedule: unknown schedule {sched!r}; use cosine, multistep, "
                        f"constant or cooldown")
    return opt, s


def memory_format(ctx) -> torch.memory_format:
    """``channels_last`` (config key, default false) trains convolutions in NHWC order: about
    1.3x faster per step on CPU for the conv backbones (``benchmarks/bench_train.py``), but
    oneDNN then sums in another order, so weights differ from the default run in the last bits
    after a few steps and the numbers are not those of ``expected/``; hence opt-in."""
    return torch.channels_last if ctx.get("channels_last", False) else torch.contiguous_format


@torch.no_grad()
def accuracy(backbone: nn.Module, head: nn.Module, data: ImageDataset, ctx, num: int,
             desc: str = "validation") -> float:
    backbone.eval()
    correct = total = 0
    with ctx.bar(None, desc, total=-(-len(data) // 512)) as bar:
        for x, y in ctx.batches(data, 512):  # not wrapped: see train_supervised
            pred = head(backbone(x.to(ctx.device)), num).argmax(1).cpu()
            correct += int((pred == y).sum())
            total += len(y)
            bar.update()
    return 100.0 * correct / max(1, total)


class _Logits(nn.Module):
    """``head(backbone(x), num_classes)`` as one module (what DistributedDataParallel wraps)."""

    def __init__(self, backbone: nn.Module, head: nn.Module, num_classes: int):
        super().__init__()
        self.backbone, self.head, self.num_classes = backbone, head, num_classes

    def forward(self, x):
        return self.head(self.backbone(x), self.num_classes)


def train_supervised(backbone: nn.Module, head: nn.Module, data: ImageDataset, ctx,
                     t: dict, num_classes: int, desc: str = "base", loss_fn=None,
                     param_groups=None) -> dict:
    """Train ``head(backbone(x), num_classes)`` with cross-entropy on ``data``; returns a log.

    ``loss_fn(features, labels)``, when given, replaces the cross-entropy (e.g. Mamba-FSCIL's
    dot-regression loss against a fixed ETF); selection still uses ``head``'s arg-max.
    ``param_groups``: ``[(parameters, lr_mult), ...]`` instead of one learning rate for all.
    ``t`` may ask for per-iteration rates (``schedule: cooldown``, ``warmup_iters``) and batch
    Mixup/CutMix (``batch_augments``), see :mod:`fsbench.baselines.recipes`."""
    epochs = int(t.get("epochs", 1))
    select = t.get("select", "val")
    if ctx.get("select_on_test", False):
        select = "test"
    sel_data = None
    if select == "val":
        data, sel_data = split_val(data, float(t.get("val_fraction", 0.1)), ctx.seed)
        if len(sel_data) == 0:  # too few images to hold any out: keep the last epoch
            select, sel_data = "last", None
    elif select == "test":
        sel_data = ctx.extras.get("base_test")
        if sel_data is None:
            raise UserError("select_on_test needs the base test set; run through fsbench run")
    elif select != "last":
        raise UserError(f"train.select: {select!r} is not one of val, last, test")
    fmt = memory_format(ctx)
    backbone.to(memory_format=fmt)
    params = param_groups or list(backbone.parameters()) + list(head.parameters())
    opt, sched = make_optimizer(params, t, epochs)
    base_lrs = [g["lr"] for g in opt.param_groups]
    total = int(t.get("batch_size", 128))
    loader = ctx.loader(data, train=True, batch_size=ctx.per_rank_batch(total, "train.batch_size"),
                        drop_last=len(data) > total, shard=True)
    per_iter = IterationSchedule(t, epochs, len(loader)) if IterationSchedule.wanted(t) else None
    augments = BatchAugments(t["batch_augments"]) if t.get("batch_augments") else None
    # Per-epoch checkpoint (fsbench.trainstate): a killed run resumes at the next epoch.
    ckpt = EpochCheckpoint.of(ctx, desc)
    state = {"backbone": backbone, "head": head, "opt": opt, "sched": sched}
    start, saved = ckpt.restore(state, loader)
    best, best_acc = saved.get("best"), float(saved.get("best_acc", -1.0))
    best_epoch = saved.get("best_epoch")
    history = list(saved.get("history", []))
    acc_key = {"val": "val_acc", "test": "test_acc"}.get(select)
    # Under torchrun the network trains in DistributedDataParallel (gradients averaged over the
    # processes); a custom loss_fn sees the features only, so the head stays outside.
    net = ctx.wrap(_Logits(backbone, head, num_classes) if loss_fn is None else backbone,
                   find_unused_parameters=loss_fn is not None) if dist.world_size() > 1 else None
    for epoch in range(start, epochs):
        backbone.train()
        head.train()
        ctx.set_epoch(loader, epoch)
        tot, n, correct = 0.0, 0, 0
        lr = opt.param_groups[0]["lr"]
        # The bar is advanced by hand: wrapping the loader in it keeps the last batch alive a
        # little longer, which changes later allocations and so the numbers of the reproducible
        # CPU mode. For the same reason one process keeps the original sequence of calls (and
        # tensor lifetimes); DistributedDataParallel is used under torchrun only.
        bar = ctx.bar(None, f"{desc} epoch {epoch + 1}/{epochs}", total=len(loader))
        for i, (x, y) in enumerate(loader):
            x, y = x.to(ctx.device, memory_format=fmt if x.dim() == 4 else
                        torch.contiguous_format), y.to(ctx.device)
            if per_iter is not None:
                factor = per_iter.factor(epoch, epoch * len(loader) + i)
                for g, base_lr in zip(opt.param_groups, base_lrs):
                    g["lr"] = base_lr * factor
                if i == 0:  # the epoch's reported lr: its first iteration's
                    lr = opt.param_groups[0]["lr"]
            y_b = None
            if augments is not None:
                x, y, y_b, lam = augments(x, y)
            if net is not None:
                out = net(x)
                f, logits = (None, out) if loss_fn is None else (out, None)
            else:
                f = backbone(x)
                # A loss_fn (Mamba-FSCIL) gets no running accuracy: an extra head forward here
                # changes its numbers in the reproducible CPU mode (allocation-dependent kernels).
                logits = head(f, num_classes) if loss_fn is None else None
            loss = F.cross_entropy(logits, y) if loss_fn is None else loss_fn(f, y)
            if y_b is not None:  # mixed batch: lam L(y) + (1 - lam) L(y[perm])
                loss = lam * loss + (1 - lam) * (
                    F.cross_entropy(logits, y_b) if loss_fn is None else loss_fn(f, y_b))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += loss.item() * len(y)
            n += len(y)
            if logits is not None:
                correct += int((logits.argmax(1) == y).sum())
            bar.set_postfix(loss=f"{tot / n:.4f}", refresh=False,
                            **({"acc": f"{100.0 * correct / n:.1f}"} if logits is not None else {}))
            bar.update()
            ctx.log_step(desc, epoch * len(loader) + i, loss=loss.item(), lr=lr)
        bar.refresh()  # the epoch's final loss and accuracy, however fast it went
        bar.close()
        sched.step()
        # Every process continues from rank 0's state (BatchNorm statistics differ per process).
        dist.broadcast_module(backbone, head)
        rec = {"epoch": epoch, "loss": tot / max(1, n), "lr": lr}
        if loss_fn is None:
            rec["train_acc"] = 100.0 * correct / max(1, n)
        if sel_data is not None:  # the same decision on every process: rank 0's
            rec["select_acc"] = dist.broadcast_object(accuracy(
                backbone, head, sel_data, ctx, num_classes,
                "validation" if select == "val" else "base test"))
            if rec["select_acc"] > best_acc:
                best_acc, best_epoch = rec["select_acc"], epoch
                best = (copy.deepcopy(backbone.state_dict()), copy.deepcopy(head.state_dict()))
        history.append(rec)
        ctx.log_epoch(desc, epoch, **{k: v for k, v in rec.items() if k not in
                                      ("epoch", "select_acc")},
                      **({acc_key: rec["select_acc"]} if "select_acc" in rec else {}))
        ckpt.save(epoch + 1, state, loader, {"best": best, "best_acc": best_acc,
                                             "best_epoch": best_epoch, "history": history})
    if best is not None:
        backbone.load_state_dict(best[0])
        head.load_state_dict(best[1])
    ctx.log_selection(desc, best_epoch if best is not None else epochs - 1 if epochs > 0 else None,
                      select)
    return {"history": history, "select": select, "best_select_acc": best_acc if best else None}

"""``mamba_fscil`` - Mamba-FSCIL (Li et al., "Mamba-FSCIL: Dynamic Adaptation with Selective State
Space Model for Few-Shot Class-Incremental Learning", arXiv:2407.06136), as its official code
(xiaojieli0903/Mamba-FSCIL, built on NC-FSCIL) trains it.

Base session (Sec. 3.2-3.3): backbone + :class:`~.neck.MambaNeck` (base branch) trained against a
fixed simplex ETF with the dot-regression loss (``train.loss_weight`` x DR, optionally
``with_len``). Checkpoint selection as ``ncm``/``teen``: a validation split carved from the base
training images by default, the base *test* set with ``select_on_test: true`` (the official
``save_best``; the result is flagged). Then the base-class mean backbone feature maps are stored.

The backbone is frozen from then on (the runner caches its feature maps). Incremental session
``t`` (Sec. 3.4) trains the neck's incremental branch for ``incremental.steps[t-1]`` SGD steps on
the session's shot features, plus the mean feature map of every earlier novel class repeated
``copy[t-1]`` times and of every base class repeated ``base_copy[t-1]`` times (the official
``mean_neck_feat`` memory), in shuffled batches of ``incremental.batch_size`` (drop-last,
cycled). Loss: DR (with feature mixup with probability ``mixup_prob``) + suppression on the
incremental branch's ``z`` + separation of its ``dt, B, C`` (and of the base branch's with
``sep_base > 0``). The base branch learns at ``base_lr_mult`` x the rate (0: frozen). Learning
rate: linear warm-up (5 steps from 0.1x), cosine to ``min_lr_ratio`` and a 5-step cool-down at
0.1x that floor (mmcls' ``CosineAnnealingCooldown``).

Batch sizes in the presets are **totals** (the official runs use 8 GPUs x 64 in the base session
and 8 x 8 in sessions); fsbench trains on one device, so the per-device batch is the total
(``devices: 1``). Differences from the official code are listed in the README's notes.
"""
from __future__ import annotations

import math
import numbers
from typing import Literal, Optional, Union

import torch
import torch.nn as nn
from pydantic import ConfigDict, Field, StrictBool

from fsbench.baselines.backbones import build_backbone, check_pretraining
from fsbench.baselines.protos import class_means
from fsbench.baselines.training import train_supervised
from fsbench.configschema import Count, Fraction, MethodBlock, NonNeg, PosInt, validate_block
from fsbench.errors import UserError
from fsbench.learner import DataInfo, FSCILLearner, Session
from fsbench.registry import register_method

from .losses import ETFHead, dot_regression, mix_features, separation, suppression
from .neck import MambaNeck



class NeckOptions(MethodBlock):
    """The ``neck:`` block: the dual selective-SSM projector (§3.2 of the paper)."""

    out_channels: PosInt = Field(512, description="feature width (the ETF needs >= classes)")
    mid_channels: Optional[PosInt] = Field(None, description="SSM width (null = 2 x input)")
    num_layers: Literal[2, 3] = Field(2, description="layers of the base branch's MLP projector")
    num_layers_new: Literal[2, 3] = Field(2, description="layers of the incremental branch's MLP "
                                                         "projector")
    d_state: PosInt = Field(256, description="SSM state size")
    dt_rank: Optional[PosInt] = Field(None, description="rank of the step projection (null = "
                                                      "d_state)")
    d_conv: PosInt = Field(4, description="depth-wise convolution width")
    expand: PosInt = Field(1, description="inner expansion of the SSM block")
    residual_proj: StrictBool = Field(False, description="project the residual to out_channels")
    detach_residual: StrictBool = Field(True, description="no gradient through the residual")
    version: Literal["ssm", "ss2d"] = Field(
        "ssm", description="ssm: one Mamba block over 4 scan orders (CIFAR/mini configs); ss2d: "
                           "VMamba SS2D, per-direction parameters (CUB config)")
    d_conv_2d: PosInt = Field(3, description="ss2d: depthwise conv kernel (the official SS2D's 3)")
    z_sum: Literal["code", "aligned"] = Field("code", description="how the gates are summed: "
                                                                  "code (released) | aligned")
    feat_size: Optional[PosInt] = Field(None, description="backbone map side (null = inferred)")


class IncrementalOptions(MethodBlock):
    """The ``incremental:`` block: sessions 1.. (§3.3; a list gives one value per session)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)

    steps: Union[Count, list[Count]] = Field(100, description="optimisation steps")
    batch_size: PosInt = Field(64, description="images per step")
    lr: Union[NonNeg, list[NonNeg]] = Field(0.01, description="learning rate")
    momentum: Fraction = Field(0.9, description="SGD momentum")
    weight_decay: NonNeg = Field(0.0005, description="L2 weight decay")
    base_lr_mult: NonNeg = Field(0.0, description="lr factor of the base branch (0 = frozen)")
    copies: Union[Count, list[Count]] = Field(1, alias="copy",
                                                description="repeats of the session's shots")
    base_copy: Union[Count, list[Count]] = Field(1, description="repeats of the base memory")
    with_len: StrictBool = Field(False, description="dot-regression with the feature length")
    loss_weight: NonNeg = Field(10.0, description="weight of the dot-regression loss")
    supp_base: NonNeg = Field(100.0, description="suppression weight on base classes (Eq. 9)")
    supp_novel: NonNeg = Field(0.0, description="suppression weight on novel classes")
    sep_base: NonNeg = Field(0.0, description="separation weight, base branch (Eq. 10)")
    sep_new: NonNeg = Field(0.0, description="separation weight, incremental branch")
    mixup_lambda: Fraction = Field(0.5, description="mixup coefficient")
    mixup_prob: Fraction = Field(0.0, description="probability of a mixed batch")
    min_lr_ratio: Fraction = Field(0.01, description="floor of the cosine, as a share of lr")
    warmup_steps: Count = Field(5, description="linear warm-up steps")
    cooldown_steps: Count = Field(5, description="final steps at a tenth of the floor")


def _block(config: dict, key: str, model: type[MethodBlock]) -> dict:
    return validate_block(model, config.get(key), key).model_dump(by_alias=True)


def _per_session(opts: dict, key: str, sessions: int, kind=float) -> list:
    v = opts[key]
    vals = list(v) if isinstance(v, (list, tuple)) else [v] * sessions
    if len(vals) < sessions:
        raise UserError(f"incremental.{key}: {len(vals)} values for {sessions} sessions; give one "
                        f"value or one per session")
    for x in vals:
        if isinstance(x, bool) or not isinstance(x, numbers.Real) or x < 0:
            raise UserError(f"incremental.{key}: expected non-negative numbers, got {x!r}")
    return [kind(x) for x in vals]


def cooldown_lr(step: int, total: int, base: float, opts: dict) -> float:
    """mmcls CosineAnnealingCooldown (by iteration) with linear warm-up; ``step`` counts from 1."""
    floor = base * float(opts["min_lr_ratio"])
    cool = int(opts["cooldown_steps"])
    if step > total - cool:
        lr = floor * 0.1
    else:
        span = max(1, total - cool)
        lr = floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * step / span))
    warm = int(opts["warmup_steps"])
    if step < warm:
        lr *= 1 - (1 - step / warm) * 0.9
    return lr


class _Trunk(nn.Module):
    """Backbone + neck as one module for the base-session trainer."""

    def __init__(self, backbone, neck):
        super().__init__()
        self.backbone, self.neck = backbone, neck

    def forward(self, x):
        return self.neck(self.backbone.feature_map(x))["out"]


@register_method("mamba_fscil", task="fscil",
                 summary="Mamba-FSCIL: dual selective-SSM projector, ETF head, class-sensitive "
                         "scan losses")
class MambaFSCIL(FSCILLearner):
    frozen_after_base = True
    config_blocks = {"neck": NeckOptions, "incremental": IncrementalOptions}

    def __init__(self, config: dict, info: DataInfo):
        super().__init__(config, info)
        self.neck_opts = _block(config, "neck", NeckOptions)
        self.inc = _block(config, "incremental", IncrementalOptions)
        sessions = max(1, (info.num_classes - info.num_base) // max(1, info.way))
        self.steps = _per_session(self.inc, "steps", sessions, int)
        self.lrs = _per_session(self.inc, "lr", sessions)
        self.copies = _per_session(self.inc, "copy", sessions, int)
        self.base_copies = _per_session(self.inc, "base_copy", sessions, int)
        check_pretraining(config)
        self.backbone = build_backbone(config.get("backbone", {}), info.channels)
        if not hasattr(self.backbone, "feature_map"):
            raise UserError("backbone: mamba_fscil needs a backbone with a feature map "
                            "(conv4, resnet12, resnet18, resnet20)")
        c, hw = self._feature_shape()
        self.neck = MambaNeck(c, hw, self.neck_opts)
        try:
            self.head = ETFHead(int(self.neck_opts["out_channels"]), info.num_classes,
                                int(config.get("etf_seed", 0)))
        except ValueError as e:
            raise UserError(f"neck.out_channels: {e}") from None
        self.memory = torch.zeros(info.num_classes, c, *hw)  # mean backbone map per class
        self.num_seen = 0
        self.base_log: dict = {}
        self.session_log: list = []

    def _feature_shape(self):
        fs = self.neck_opts.get("feat_size")
        if fs:
            return self.backbone.out_dim, (int(fs), int(fs))
        was = self.backbone.training
        self.backbone.eval()
        with torch.no_grad():
            s = self.info.image_size
            m = self.backbone.feature_map(torch.zeros(1, self.info.channels, s, s))
        self.backbone.train(was)
        return m.shape[1], tuple(m.shape[2:])

    # ------------------------------------------------------------------ state
    def extra_state(self):
        return {"num_seen": self.num_seen, "memory": self.memory.clone(),
                "use_inc": self.neck.use_inc}

    def load_extra_state(self, state):
        self.num_seen = int(state.get("num_seen", 0))
        if "memory" in state:
            self.memory = state["memory"].detach().cpu().float()
        self.neck.use_inc = bool(state.get("use_inc", False))

    # ------------------------------------------------------------------ inference
    def embed(self, x):
        return self.backbone.feature_map(x)

    def predict_features(self, features):
        return self.head(self.neck(features.to(self.device))["out"], self.num_seen)

    # ------------------------------------------------------------------ base session
    def fit_base(self, session: Session, ctx) -> None:
        t = dict(self.config.get("train", {}))
        weight, with_len = float(t.pop("loss_weight", 10.0)), bool(t.pop("with_len", False))
        mult = float(t.pop("backbone_lr_mult", 1.0))  # CUB: backbone at 0.1 x lr (paramwise_cfg)
        groups = None if mult == 1.0 else [
            (self.backbone.parameters(), mult),
            (list(self.neck.parameters()) + list(self.head.parameters()), 1.0)]
        etf = self.head.etf

        def loss_fn(f, y):
            return weight * dot_regression(f, y, etf, with_len, global_batch=True)
        self.neck.use_inc = False
        self.base_log = train_supervised(_Trunk(self.backbone, self.neck), self.head,
                                         session.data, ctx, t, self.info.num_base,
                                         loss_fn=loss_fn, param_groups=groups)
        self.eval()
        feats = ctx.extract(self.embed, session.data, desc="base class means")
        self.memory[torch.as_tensor(session.new_classes)] = class_means(
            feats, torch.from_numpy(session.data.labels), session.new_classes)
        self.neck.use_inc = True
        self.num_seen = session.num_seen

    # ------------------------------------------------------------------ incremental sessions
    def session_set(self, session: Session):
        """The training set of one session: shots + repeated class means (memory)."""
        i = session.index - 1
        feats, labels = session.features, torch.from_numpy(session.data.labels).long()
        self.memory[torch.as_tensor(session.new_classes)] = class_means(
            feats, labels, session.new_classes)
        nb = self.info.num_base
        prev = session.num_seen - len(session.new_classes)
        parts, ys = [feats.float()], [labels]
        if prev > nb and self.copies[i] > 0:
            parts.append(self.memory[nb:prev].repeat(self.copies[i], 1, 1, 1))
            ys.append(torch.arange(nb, prev).repeat(self.copies[i]))
        if self.base_copies[i] > 0:
            parts.append(self.memory[:nb].repeat(self.base_copies[i], 1, 1, 1))
            ys.append(torch.arange(nb).repeat(self.base_copies[i]))
        return torch.cat(parts), torch.cat(ys)

    def step_loss(self, f, y, main=None):
        o, nb = self.inc, self.info.num_base
        out = self.neck(f, main)
        is_base = y < nb
        loss = suppression(out["z_inc"], is_base, float(o["supp_base"]), float(o["supp_novel"]))
        loss = loss + separation(out["params_inc"], is_base, float(o["sep_new"]))
        if float(o["sep_base"]) > 0:
            loss = loss + separation(out["params"], is_base, float(o["sep_base"]))
        w, etf, wl = float(o["loss_weight"]), self.head.etf, bool(o["with_len"])
        if float(o["mixup_prob"]) > 0 and torch.rand(()) < float(o["mixup_prob"]):
            lam = float(o["mixup_lambda"])
            mixed, ya, yb = mix_features(out["out"], y, lam)
            dr = lam * dot_regression(mixed, ya, etf, wl) + (1 - lam) * dot_regression(
                mixed, yb, etf, wl)
        else:
            dr = dot_regression(out["out"], y, etf, wl)
        return loss + w * dr

    @staticmethod
    def _log_pass(ctx, epoch: int, losses: list[float], lr: float) -> None:
        """One pass over the session's training set ("epoch"): mean loss, last lr."""
        ctx.log_epoch("incremental", epoch, loss=sum(losses) / max(1, len(losses)), lr=lr,
                      steps=len(losses))

    def learn_session(self, session: Session, ctx) -> None:
        i = session.index - 1
        feats, labels = self.session_set(session)
        self.num_seen = session.num_seen
        steps, lr = self.steps[i], self.lrs[i]
        if steps == 0:
            return
        o = self.inc
        mult = float(o["base_lr_mult"])
        base_params = set(map(id, self.neck.base_parameters()))
        groups = [{"params": list(self.neck.inc.parameters()), "mult": 1.0}]
        if mult > 0:
            groups.append({"params": [p for p in self.neck.parameters()
                                      if id(p) in base_params], "mult": mult})
        opt = torch.optim.SGD(groups, lr=lr, momentum=float(o["momentum"]),
                              weight_decay=float(o["weight_decay"]))
        bs = min(int(o["batch_size"]), len(labels))
        self.neck.train()
        if self.neck.detach_residual:
            self.neck.base.eval()
        main = None
        if mult == 0 and float(o["sep_base"]) == 0:  # frozen base branch: compute it once
            with torch.no_grad():
                main = torch.cat([self.neck.main(feats[s:s + 256].to(self.device))[0]
                                  for s in range(0, len(labels), 256)])
        order, pos, losses, epoch, first = torch.randperm(len(labels)), 0, [], 0, 0
        cur = lr
        for step in ctx.bar(range(1, steps + 1), f"session {session.index} steps"):
            if pos + bs > len(labels):  # drop the last partial batch, reshuffle
                order, pos = torch.randperm(len(labels)), 0
                self._log_pass(ctx, epoch, losses[first:], cur)
                epoch, first = epoch + 1, len(losses)
            idx = order[pos:pos + bs]
            pos += bs
            cur = cooldown_lr(step, steps, lr, o)
            for g in opt.param_groups:
                g["lr"] = cur * g["mult"]
            loss = self.step_loss(feats[idx].to(self.device), labels[idx].to(self.device),
                                  None if main is None else main[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            ctx.log_step("incremental", step - 1, loss=losses[-1], lr=cur)
        self._log_pass(ctx, epoch, losses[first:], cur)
        ctx.log_selection("incremental", epoch, "last")
        self.session_log.append({"session": session.index, "first_loss": losses[0],
                                 "last_loss": losses[-1], "samples": len(labels)})

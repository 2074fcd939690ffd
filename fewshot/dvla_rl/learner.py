"""``dvla_rl`` - the learner: supervised base pretraining, then episodic meta-tuning with RL-gated
attention over the classes' text features; cosine prototype classifier (t = 0.2).

Episode (training and evaluation), following VT-FSL, whose protocol DVLA-RL keeps: each support
image goes through the backbone with its own class's text tokens (k attributes + description)
entering stages 2 and 3 through RLA; query images go through the same backbone without text (their
class is unknown). Prototypes are the class means of the support features; logits are
``cos(query, prototype) / t``.

Meta-tuning loss: ``L = L_sup + rla.weight * L_RL (+ L_U)``. ``L_sup`` is the prototype
cross-entropy; ``L_RL`` is REINFORCE on the sampled alphas (:mod:`.rla`) with the reward
``R = lambda_sim * cos(U GAP(H), t*) + lambda_imp * dAcc`` per support image and stage, ``H`` the
fused RLA tokens and ``t*`` the text feature of the image's class prompt "A photo of a {CLASS}".
``L_U = 1 - cos(U sg(GAP(H)), t*)`` fits the reward's projection ``U`` only (``H`` detached); the
paper does not say how ``U`` is learned.

Evaluation is deterministic (alpha = the policy mean); features are computed once per distinct
(image, class) pair and reused across episodes (a cache of pure functions of the image bytes).
"""
from __future__ import annotations

import hashlib
import logging
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from fsbench.baselines.protos import prototypes
from fsbench.curves import EpisodeBlocks
from fsbench.episodes.sampler import EpisodeSampler
from fsbench.errors import UserError
from fsbench.learner import DataInfo, FSLLearner
from fsbench.registry import register_method
from fsbench.trainstate import EpochCheckpoint

from .backbone import build_staged, to_tokens
from .options import BLOCKS, dvla_options
from .rla import GatePolicy, Reinforce, RLAttention
from .semantics import ClassSemantics, build_source
from .text import build_text_encoder

log = logging.getLogger("fsbench")


def _cosine_logits(q, protos, t):
    return F.normalize(q, dim=-1) @ F.normalize(protos, dim=-1).transpose(-1, -2) / t


@register_method("dvla_rl", task="fsl",
                 summary="DVLA-RL: attribute/description text + RL-gated (Beta policy) "
                         "cross/self attention, cosine prototypes")
class DVLARL(FSLLearner):
    uses_class_names = True
    config_blocks = BLOCKS
    checkpoint_exclude = ("_text", "_sem")  # the text encoder and semantics, rebuilt on use

    def __init__(self, config: dict, info: DataInfo):
        super().__init__(config, info)
        c = self.config
        self.opts = dvla_options(c)
        r = self.r = self.opts["rla"]
        self.backbone = build_staged(c.get("backbone", {}), info.channels, info.image_size)
        self.text_dim = self.opts["text"]["dim"]
        policy = r["policy"]
        dims = self.backbone.dims
        self.rla = nn.ModuleList([RLAttention(d, self.text_dim, int(r["heads"]))
                                  for d in dims])
        self.policy = nn.ModuleList([GatePolicy(d, policy, int(r["hidden"]),
                                                float(r["kappa"])) for d in dims])
        self.reward_proj = nn.ModuleList([nn.Linear(d, self.text_dim, bias=False) for d in dims])
        self.rl = [Reinforce(float(r["baseline_momentum"]), float(r["tau"]))
                   for _ in dims]
        self.prev_acc: float | None = None
        self._text = None
        self._sem = None
        self._memo: dict = {}

    # ------------------------------------------------------------------ semantics
    def _semantics(self, train=None, ctx=None) -> ClassSemantics:
        if self._sem is None:
            c = self.config
            self._text = build_text_encoder(self.opts["text"], self.config.get("dataset", ""),
                                            train, seed=int(c.get("seed", 0)),
                                            progress=bool(ctx and ctx.progress))
            if self._text.dim != self.text_dim:
                raise UserError(f"text.dim: {self.text_dim} but the {self._text.name} text "
                                f"encoder gives {self._text.dim}-d features; set text.dim="
                                f"{self._text.dim}")
            dsc = self.opts["dsc"]
            source = build_source(dsc["source"], c.get("dataset", ""))
            self._sem = ClassSemantics(source, self._text.encode, int(dsc["k"]))
        return self._sem

    # ------------------------------------------------------------------ forward
    def encode(self, x, text=None, sample=False):
        """Features ``(B, D)``; with ``text (B, P, d_t)`` RLA runs at stages 2 and 3. Returns
        (features, per-stage records ``(alpha, log_prob, entropy, GAP(H))``)."""
        bb = self.backbone
        h = bb.stem(x)
        recs = []
        fixed = self.r["alpha_fixed"]
        on = text is not None and self.r["enabled"]
        for i in range(2):
            h = bb.embed(i, h)
            extra = None
            if on:
                z = to_tokens(h)
                tc = self.rla[i].text(text.to(z.dtype))
                cross, own = self.rla[i].paths(z, tc)
                logp = ent = None
                if fixed is not None:
                    a = torch.full((len(x),), float(fixed), device=x.device)
                elif sample:
                    a, logp, ent = self.policy[i].act(GatePolicy.state(z, tc))
                else:
                    a = self.policy[i].mean(GatePolicy.state(z, tc))
                extra = RLAttention.fuse(cross, own, a)
                recs.append((a, logp, ent, extra.mean(1)))
            h = bb.stage(i, h, extra)
        return bb.pool(h), recs

    # ------------------------------------------------------------------ training
    def fit(self, train, ctx) -> None:
        sem = self._semantics(train, ctx)
        p = self.opts["pretrain"]
        if int(p["epochs"]) > 0:
            self._pretrain(train, ctx, p)
        self._meta_tune(train, ctx, sem, self.opts["meta"])
        self._memo.clear()

    def _pretrain(self, train, ctx, p):
        limit = p["max_images"]
        data = train
        if limit is not None and int(limit) < len(train):
            rng = np.random.default_rng(ctx.seed)
            data = train.subset(np.sort(rng.choice(len(train), int(limit), replace=False)))
        head = nn.Linear(self.backbone.out_dim, train.num_classes).to(ctx.device)
        epochs, bs = int(p["epochs"]), int(p["batch_size"])
        loader = ctx.loader(data, train=True, batch_size=bs, drop_last=len(data) > bs)
        params = list(self.backbone.parameters()) + list(head.parameters())
        opt = torch.optim.AdamW(params, lr=float(p["lr"]),
                                weight_decay=float(p["weight_decay"]))
        total = max(1, epochs * len(loader))
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=float(p["lr"]), total_steps=total,
            pct_start=float(p["warmup_fraction"]), anneal_strategy="cos")
        smooth = float(p["label_smoothing"])
        self.backbone.train()
        ckpt = EpochCheckpoint.of(ctx, "pretrain")  # per-epoch checkpoint (fsbench.trainstate)
        state = {"backbone": self.backbone, "head": head, "opt": opt, "sched": sched}
        start, _ = ckpt.restore(state, loader)
        for epoch in ctx.bar(range(start, epochs), "dvla_rl pretraining"):
            tot, n, lr = 0.0, 0, opt.param_groups[0]["lr"]
            for x, y in loader:
                x, y = x.to(ctx.device), y.to(ctx.device)
                loss = F.cross_entropy(head(self.backbone(x)), y, label_smoothing=smooth)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                tot, n = tot + loss.item() * len(y), n + len(y)
            ctx.log_epoch("pretrain", epoch, loss=tot / max(1, n), lr=lr)
            ckpt.save(epoch + 1, state, loader)
        ctx.log_selection("pretrain", epochs - 1, "last")

    def _meta_tune(self, train, ctx, sem, m):
        n = int(m["episodes"])
        if n <= 0:
            return
        way, shot, query = int(m["way"]), int(m["shot"]), int(m["query"])
        temp = float(m["temperature"])
        sampler = EpisodeSampler(train.labels, way, shot, query, seed=ctx.seed)
        new = [p for mod in (self.rla, self.policy, self.reward_proj) for p in mod.parameters()]
        opt = torch.optim.AdamW([
            {"params": new, "lr": float(m["lr"]),
             "weight_decay": float(m["weight_decay"])},
            {"params": list(self.backbone.parameters()), "lr": float(m["backbone_lr"]),
             "weight_decay": float(m["weight_decay"])}])
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=n)
        r = self.r
        lam_sim, lam_imp = float(r["lambda_sim"]), float(r["lambda_imp"])
        weight = float(r["weight"])
        delta = r["delta_acc"]
        learn_gate = r["alpha_fixed"] is None and r["enabled"]
        tf = ctx.train_transform
        sem.prepare(train.class_names)
        self.train()
        blocks = EpisodeBlocks(ctx, "meta", n)
        # Checkpoint after every block of episodes; episode i is a function of (seed, i).
        ckpt = EpochCheckpoint.of(ctx, "meta")
        state = {"rla": self.rla, "policy": self.policy, "reward_proj": self.reward_proj,
                 "backbone": self.backbone, "opt": opt, "sched": sched}
        start, saved = ckpt.restore(state)
        if start:
            self.load_extra_state(saved)
        for i in ctx.bar(range(start, n), "dvla_rl meta-tuning"):
            ep = sampler.sample(i, 1)
            names = [train.class_names[int(c)] for c in ep.classes[0]]
            idx = np.concatenate([ep.support.reshape(-1), ep.query.reshape(-1)])
            x = torch.stack([tf(train.load(int(j))) for j in idx]).to(ctx.device)
            xs, xq = x[: way * shot], x[way * shot:]
            sl = torch.arange(way, device=ctx.device).repeat_interleave(shot)
            ql = torch.arange(way, device=ctx.device).repeat_interleave(query)
            text = sem.tokens(names).to(ctx.device)[sl]
            fs, recs = self.encode(xs, text, sample=learn_gate)
            fq, _ = self.encode(xq)
            logits = _cosine_logits(fq, prototypes(fs, sl, way), temp)
            loss = F.cross_entropy(logits, ql)
            acc = float((logits.argmax(1) == ql).float().mean())
            if recs:
                target = sem.targets(names).to(ctx.device)[sl]
                sims = [F.cosine_similarity(self.reward_proj[k](rec[3].detach()), target, dim=-1)
                        for k, rec in enumerate(recs)]
                loss = loss + torch.stack([(1 - s).mean() for s in sims]).mean()
                if learn_gate:
                    if delta == "previous":
                        d_acc = 0.0 if self.prev_acc is None else acc - self.prev_acc
                    else:
                        with torch.no_grad():
                            plain = prototypes(self.encode(xs)[0], sl, way)
                            d_acc = acc - float((_cosine_logits(fq, plain, temp).argmax(1) == ql)
                                                .float().mean())
                    l_rl = sum(self.rl[k].loss(lam_sim * s.detach() + lam_imp * d_acc,
                                               recs[k][1], recs[k][2])
                               for k, s in enumerate(sims))
                    loss = loss + weight * l_rl
            self.prev_acc = acc
            opt.zero_grad(set_to_none=True)
            loss.backward()
            lr = opt.param_groups[0]["lr"]
            opt.step()
            sched.step()
            if blocks.add(i, loss=loss.item(), acc=100.0 * acc, lr=lr):
                ckpt.save(i + 1, state, None, self.extra_state())
        ctx.log_selection("meta", (n - 1) // blocks.size, "last")
        self.eval()

    # ------------------------------------------------------------------ evaluation
    def train(self, mode: bool = True) -> None:
        super().train(mode)
        if mode:
            self._memo.clear()

    def _features(self, x: torch.Tensor, names: list) -> torch.Tensor:
        """Features of images ``x (B, ...)``, each with the text of ``names[b]`` (None = none);
        cached per (image bytes, name)."""
        keys = []
        cpu = x.detach().cpu().contiguous()
        for b in range(len(x)):
            h = hashlib.blake2b(cpu[b].numpy().tobytes(), digest_size=16).digest()
            keys.append((h, names[b]))
        uniq = list(dict.fromkeys(keys))
        todo = [k for k in uniq if k not in self._memo]
        if todo:
            first = {k: b for b, k in reversed(list(enumerate(keys)))}
            bs = int(self.config.get("eval", {}).get("batch_size", 256))
            for with_text in (False, True):
                group = [k for k in todo if (k[1] is not None) == with_text]
                for s in range(0, len(group), bs):
                    part = group[s:s + bs]
                    xb = x[[first[k] for k in part]]
                    text = self._sem.tokens([k[1] for k in part]).to(x.device) if with_text \
                        else None
                    f = self.encode(xb, text)[0]
                    for k, v in zip(part, f):
                        self._memo[k] = v
        return torch.stack([self._memo[k] for k in keys])

    @torch.no_grad()
    def predict_episodes(self, support, support_labels, query, class_names=None):
        if class_names is None:
            raise UserError("dvla_rl: predict_episodes needs class_names (the FSL runner passes "
                            "them); heads other than none cannot be used with dvla_rl")
        sem = self._semantics()
        e, s = support_labels.shape
        way = len(class_names[0])
        names = [class_names[i][int(l)] for i in range(e) for l in support_labels[i]]
        sem.prepare(names)
        fs = self._features(support.flatten(0, 1), names).view(e, s, -1)
        q = query.flatten(0, 1)
        fq = self._features(q, [None] * len(q)).view(e, query.shape[1], -1)
        temp = float(self.opts["meta"]["temperature"])
        protos = prototypes(fs, support_labels, way)
        return _cosine_logits(fq, protos, temp)

    def predict_episode(self, support, support_labels, query, class_names=None):
        return self.predict_episodes(support[None], support_labels[None], query[None],
                                     None if class_names is None else [class_names])[0]

    # ------------------------------------------------------------------ state
    def extra_state(self):
        return {"baselines": [rl.baseline for rl in self.rl], "prev_acc": self.prev_acc}

    def load_extra_state(self, state):
        for rl, b in zip(self.rl, state.get("baselines", [])):
            rl.baseline = b
        self.prev_acc = state.get("prev_acc")

"""CPE-CLIP: Continual Parameter-Efficient CLIP (D'Alessandro et al., "Multimodal
Parameter-Efficient Few-Shot Class Incremental Learning", ICCV Workshops 2023, arXiv 2303.04751),
on ``open_clip``. Follows the official code (neuraptic/cpe-clip, ``CoLeLib/models/clip_models.py``
and ``CoLeLib/training/strategies/clip_pe.py``); where the paper differs, the paper's behaviour is
an option.

Model (paper Sec. 3.2-3.3). CLIP is frozen; the only trainable parameters are the shared prompts
**G** in R^{deep_g x L_g x d_text} (Xavier-uniform) and ``prompt_proj``: R^{d_text} -> R^{d_vision}
(the paper's f^PROJ). For ViT-B/16: 12 x 2 x 512 + 512 x 768 + 768 = 406,272.

* Text: ``[SOS, G[0], tokens..., EOS]``; positional embeddings run over the lengthened sequence,
  the causal mask covers it, and at layers 1..deep_g-1 the prompt slots are *replaced* by ``G[l]``.
  The text feature is the final-LN output at EOS, now at ``argmax(tokens) + L_g``, projected.
* Vision: ``prompt_proj(G[0])`` is appended after the patch tokens before ``ln_pre``; at layers
  1..deep_g-1 the new ``prompt_proj(G[l])`` is appended while the previous prompts' outputs stay
  ("accumulate"): 2, 4, ..., 24 prompt tokens. The feature is ``ln_post`` of CLS, projected.
* Logits: ``100 * cos(image, text)`` with the template ``"[CLASS]."``.

Training (``clip_pe.py``). Cross-entropy over all seen classes; in an incremental session the
logits of earlier sessions' classes are set to -9999 (so the CE runs over the new classes only).
*Prompt regularization* ("balance"): in incremental session t the gradients of G and prompt_proj
are multiplied by lambda_t = n_new(t) / sum_{s<=t} n(s) before each step (paper Eq. 6). Options:
``freeze`` - the code's ablation: from the second incremental session on G is frozen (the code's
``prompt_proj.requires_grad = False`` sets a module attribute, so prompt_proj keeps training);
``freeze_all`` - the paper's reading, G and prompt_proj both frozen then; ``none``.

Schedule. SGD (momentum 0.9, weight decay 1e-5) re-created every session with
``CosineAnnealingWarmupRestarts(first_cycle_steps=200, max_lr=0.1, min_lr=0.001,
warmup_steps=50)`` stepped once per epoch: the lr starts at min_lr and rises linearly
(0.001, 0.00298, ..., 0.00892 over 5 epochs) - what the code runs (``schedule: official``). The
paper's nominal lr 3.25e-3 is ``schedule: constant``. Batch 32 / 5 epochs in the base session
(CUB: 4 / 6), batch 4 / 5 epochs in incremental sessions; no augmentation, CLIP preprocessing.
"""
from __future__ import annotations

import contextlib
import math
import sys
from typing import Annotated, Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import ConfigDict, Field, StrictInt

from fsbench.clip import load_openai_clip
from fsbench.clip.names import readable_class_name
from fsbench.configschema import (Count, Fraction, MethodBlock, NonNeg, PosInt, Rate,
                                  validate_block)
from fsbench.errors import UserError
from fsbench.learner import FSCILLearner
from fsbench.registry import register_method
from fsbench.trainstate import EpochCheckpoint

MASK_VALUE = -9999.0  # clip_pe.py::_after_forward


def prompt_lambda(session_sizes: list[int], t: int) -> float:
    """lambda_t = n_new(t) / sum_{s<=t} n(s): the gradient scale of the prompts in session t."""
    return float(session_sizes[t]) / float(sum(session_sizes[:t + 1]))


def mask_old(logits: torch.Tensor, num_old: int) -> torch.Tensor:
    """Earlier sessions' logits set to -9999 (a copy; the training forward of an incremental
    session)."""
    if num_old <= 0:
        return logits
    out = logits.clone()
    out[:, :num_old] = MASK_VALUE
    return out


def official_lr(epoch: int, first_cycle_steps: int = 200, max_lr: float = 0.1,
                min_lr: float = 0.001, warmup_steps: int = 50) -> float:
    """The lr of ``CosineAnnealingWarmupRestarts`` (cycle_mult 1, gamma 1) after ``epoch`` steps:
    linear warm-up from min_lr to max_lr, then a cosine back to min_lr, restarting each cycle."""
    s = epoch % first_cycle_steps
    if s < warmup_steps:
        return min_lr + (max_lr - min_lr) * s / warmup_steps
    frac = (s - warmup_steps) / (first_cycle_steps - warmup_steps)
    return min_lr + (max_lr - min_lr) * (1 + math.cos(math.pi * frac)) / 2


class CPEPrompts(nn.Module):
    """G and prompt_proj, plus the prompted text / image encoders of a frozen open_clip CLIP."""

    def __init__(self, clip: nn.Module, L_g: int = 2, deep_g: int | None = None,
                 vision_mode: str = "accumulate"):
        super().__init__()
        n_text, n_vis = len(clip.transformer.resblocks), len(clip.visual.transformer.resblocks)
        deep_g = min(n_text, n_vis) if deep_g is None else int(deep_g)
        if not 1 <= deep_g <= min(n_text, n_vis):
            raise UserError(f"prompts.deep_g must be between 1 and {min(n_text, n_vis)} (the "
                            f"layers of this CLIP), got {deep_g}")
        if vision_mode not in ("accumulate", "replace"):
            raise UserError(f"prompts.vision_mode must be accumulate or replace, got "
                            f"{vision_mode!r}")
        d_text, d_vis = clip.transformer.width, clip.visual.transformer.width
        self.L_g, self.deep_g, self.vision_mode = int(L_g), deep_g, vision_mode
        self.prompt_proj = nn.Linear(d_text, d_vis)  # created first, as in the official code
        self.g_values = nn.Parameter(torch.zeros(deep_g, self.L_g, d_text))
        if self.L_g:
            nn.init.xavier_uniform_(self.g_values)
        self.vision_prompt_counts: list[int] = []  # per layer, from the last image forward

    # ------------------------------------------------------------------------------- text
    def encode_text(self, clip: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        """Prompted text features (unnormalised), ``tokens`` from the CLIP tokenizer."""
        if getattr(clip, "text_pool_type", "argmax") != "argmax":
            raise UserError("cpe_clip needs a CLIP whose text feature is taken at EOS (argmax)")
        n, L = tokens.shape[0], self.L_g
        eos = tokens.argmax(dim=-1)
        seq = int(eos.max()) + 1  # padding after the last EOS cannot reach any EOS (causal mask)
        if seq + L > clip.positional_embedding.shape[0]:
            raise UserError(f"a class name is too long for the CLIP context "
                            f"({seq} tokens + {L} prompts > {clip.positional_embedding.shape[0]})")
        x = clip.token_embedding(tokens[:, :seq])
        g = self.g_values.to(x.dtype)
        x = torch.cat([x[:, :1], g[0].expand(n, -1, -1), x[:, 1:]], dim=1)
        x = x + clip.positional_embedding[:seq + L].to(x.dtype)
        mask = clip.attn_mask[:seq + L, :seq + L] if clip.attn_mask is not None else None
        batch_first = getattr(clip.transformer, "batch_first", True)
        for i, blk in enumerate(clip.transformer.resblocks):
            if 0 < i < self.deep_g and L:
                x = torch.cat([x[:, :1], g[i].expand(n, -1, -1), x[:, 1 + L:]], dim=1)
            x = blk(x, attn_mask=mask) if batch_first else \
                blk(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)
        x = clip.ln_final(x)
        x = x[torch.arange(n, device=x.device), eos + L]
        proj = clip.text_projection
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    # ------------------------------------------------------------------------------ image
    def encode_image(self, clip: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Prompted image features (unnormalised), ``images`` already CLIP-preprocessed."""
        v = clip.visual
        if getattr(v, "attn_pool", None) is not None or getattr(v, "final_ln_after_pool", False):
            raise UserError("cpe_clip needs a plain CLIP ViT (class-token pooling)")
        size = v.image_size[0] if isinstance(v.image_size, (tuple, list)) else v.image_size
        if images.shape[-1] != size or images.shape[-2] != size:
            raise UserError(f"cpe_clip: images are {images.shape[-2]}x{images.shape[-1]}, this "
                            f"CLIP expects {size}x{size}; set transforms.train/test to resize "
                            f"and center_crop to {size}")
        b, L = images.shape[0], self.L_g
        x = v.conv1(images)
        x = x.reshape(b, x.shape[1], -1).permute(0, 2, 1)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(b, -1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        p = self.prompt_proj(self.g_values).to(x.dtype)  # (deep_g, L_g, d_vision)
        if L:
            x = torch.cat([x, p[0].expand(b, -1, -1)], dim=1)
        x = v.ln_pre(x)
        count, counts = L, []
        batch_first = getattr(v.transformer, "batch_first", True)
        for i, blk in enumerate(v.transformer.resblocks):
            if 0 < i < self.deep_g and L:
                if self.vision_mode == "accumulate":
                    x = torch.cat([x, p[i].expand(b, -1, -1)], dim=1)
                    count += L
                else:
                    x = torch.cat([x[:, :-count], p[i].expand(b, -1, -1)], dim=1)
            counts.append(count)
            x = blk(x) if batch_first else blk(x.transpose(0, 1)).transpose(0, 1)
        self.vision_prompt_counts = counts
        x = v.ln_post(x[:, 0])
        return x @ v.proj if v.proj is not None else x

    def logits(self, clip: nn.Module, images: torch.Tensor, text_features: torch.Tensor,
               scale: float = 100.0) -> torch.Tensor:
        img = F.normalize(self.encode_image(clip, images), dim=-1)
        return scale * img @ F.normalize(text_features, dim=-1).T




class ClipOptions(MethodBlock):
    """The ``clip:`` block: which CLIP the prompts are learned on."""

    source: Literal["openai", "glyphs"] = Field(
        "openai", description="openai: local open_clip weights (clip.weights); glyphs: a tiny CLIP "
                              "trained on the base session")
    arch: Optional[str] = Field("ViT-B-16", description="open_clip architecture (source openai; "
                                                        "null = ViT-B-16)")
    weights: Optional[str] = Field(None, description="local weights file (never downloaded)")
    pretrain_steps: Count = Field(
        600, description="training steps of the glyphs CLIP (source glyphs)")


class PromptOptions(MethodBlock):
    """The ``prompts:`` block (§3.1-3.2 of the paper)."""

    L_g: PosInt = Field(2, description="learnable prompt tokens per layer")
    deep_g: Optional[PosInt] = Field(None, description="layers with prompts (null = all)")
    text_mode: Literal["replace"] = Field(
        "replace", description="replace (the only valid mode: a growing text prompt moves EOS)")
    vision_mode: Literal["accumulate", "replace"] = Field(
        "accumulate", description="accumulate (official code) | replace")


class SessionTrain(MethodBlock):
    batch_size: PosInt = Field(32, description="images per batch")
    epochs: Annotated[StrictInt, Field(ge=0, le=100_000)] = Field(5, description="epochs")


class Restarts(MethodBlock):
    first_cycle_steps: PosInt = Field(200, description="epochs of the first cosine cycle")
    max_lr: NonNeg = Field(0.1, description="peak learning rate")
    min_lr: NonNeg = Field(0.001, description="floor learning rate")
    warmup_steps: NonNeg = Field(50, description="linear warm-up epochs")


class CPETrain(MethodBlock):
    """The ``train:`` block of CPE-CLIP (the official ``clip_pe.py`` recipe)."""

    model_config = ConfigDict(extra="ignore", frozen=True)  # shared keys: configschema.Train
    base: SessionTrain = Field(SessionTrain(), description="session 0")
    session: SessionTrain = Field(SessionTrain(batch_size=4), description="sessions 1..")
    momentum: Fraction = Field(0.9, description="SGD momentum")
    weight_decay: NonNeg = Field(1e-5, description="L2 weight decay")
    schedule: Literal["official", "constant"] = Field(
        "official", description="official (restarted cosine, per session) | constant (train.lr)")
    lr: Rate = Field(0.00325, description="the paper's nominal lr (schedule constant)")
    warmup_restarts: Restarts = Field(Restarts(), description="schedule official")


class CPEOptions(MethodBlock):
    """CPE-CLIP's top-level keys (the rest of the run configuration is checked elsewhere)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    clip: ClipOptions = ClipOptions()
    prompts: PromptOptions = PromptOptions()
    regularization: Literal["balance", "freeze", "freeze_all", "none"] = Field(
        "balance", description="balance (Eq. 6) | freeze (code's ablation) | freeze_all (paper's "
                               "reading) | none")
    template: str = Field("{}.", description="text template of a class name")
    logit_scale: Rate = Field(100.0, description="CLIP's logit scale")
    threads: Optional[Annotated[StrictInt, Field(ge=1, le=1024)]] = Field(
        None, description="cap on CPU threads while the learner computes (null: torch default)")
    train: CPETrain = CPETrain()


@register_method("cpe_clip", task="fscil", summary="CPE-CLIP: shared language/vision prompts on "
                 "a frozen CLIP with prompt regularization (ICCV-W 2023)")
class CPECLIP(FSCILLearner):
    frozen_after_base = False
    config_blocks = {"": CPEOptions}
    checkpoint_exclude = ("bundle", "_text")  # extra_state saves the CLIP; _text is a cache

    def __init__(self, config: dict, info):
        super().__init__(config, info)
        self.options = o = validate_block(CPEOptions, config, "")
        self.source = o.clip.source
        if self.source == "openai":
            self.bundle = load_openai_clip(o.clip.arch or "ViT-B-16", o.clip.weights)
        else:  # glyphs: trained on the base session in fit_base
            from fsbench.clip.glyphs import untrained_bundle
            self.bundle = untrained_bundle(info.image_size)
        self._check_normalize()
        self.prompts = CPEPrompts(self.bundle.model, o.prompts.L_g, o.prompts.deep_g,
                                  o.prompts.vision_mode)
        self.regularization = o.regularization
        self.template = o.template
        self.scale = float(o.logit_scale)
        self.names: list[str] = []  # readable names of all class positions
        self.sizes: list[int] = []  # classes per session so far
        self._text = None  # cached text features for predict
        n = sum(q.numel() for q in self.prompts.parameters())
        print(f"cpe_clip: {n:,} trainable parameters (G {tuple(self.prompts.g_values.shape)} + "
              f"prompt_proj {self.prompts.prompt_proj.in_features}->"
              f"{self.prompts.prompt_proj.out_features}); CLIP {self.bundle.provenance}",
              file=sys.stderr, flush=True)

    def _check_normalize(self) -> None:
        """The preset's normalisation must be the one the CLIP was trained with."""
        norm = ((self.config.get("transforms") or {}).get("normalize")) or {}
        for key, want in (("mean", self.bundle.mean), ("std", self.bundle.std)):
            got = list(norm.get(key) or [0.5])
            got = got * len(want) if len(got) == 1 else got
            if len(got) != len(want) or max(abs(a - b) for a, b in zip(got, want)) > 1e-3:
                raise UserError(f"transforms.normalize.{key} must be this CLIP's "
                                f"{[round(v, 4) for v in want]} (got {norm.get(key)}); "
                                f"keep the cpe_clip preset's transforms")

    # ------------------------------------------------------------------ learner plumbing
    def modules(self) -> dict[str, nn.Module]:
        return {"prompts": self.prompts}  # the frozen CLIP is not checkpointed

    def to(self, device) -> "CPECLIP":
        super().to(device)
        self.bundle.model.to(self.device)
        return self

    def train(self, mode: bool = True) -> None:
        self.prompts.train(mode)
        self.bundle.model.eval()  # frozen CLIP: always eval

    def extra_state(self) -> dict:
        out = {"names": list(self.names), "sizes": list(self.sizes)}
        if self.source == "glyphs":  # the trained glyphs CLIP cannot be rebuilt without data
            out["clip"] = {k: v.cpu() for k, v in self.bundle.model.state_dict().items()}
            out["clip_provenance"] = self.bundle.provenance
        return out

    def load_extra_state(self, state: dict) -> None:
        self.names, self.sizes = list(state.get("names", [])), list(state.get("sizes", []))
        if self.source == "glyphs" and "clip" in state:
            self.bundle.model.load_state_dict(state["clip"])
            self.bundle.provenance = state.get("clip_provenance", self.bundle.provenance)
        self._text = None

    # ---------------------------------------------------------------------------- model
    def _tokens(self, num_seen: int) -> torch.Tensor:
        texts = [self.template.format(n) for n in self.names[:num_seen]]
        return self.bundle.tokenizer(texts).to(self.device)

    def _images(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

    @contextlib.contextmanager
    def _threads(self):
        """``threads: N`` caps torch's CPU threads while this learner computes (a tiny CLIP on a
        shared CPU runs many times faster on one thread); null leaves torch's setting."""
        n, before = self.options.threads, torch.get_num_threads()
        if n and self.device.type == "cpu":
            torch.set_num_threads(max(1, min(before, int(n))))
        try:
            yield
        finally:
            torch.set_num_threads(before)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        clip = self.bundle.model
        with self._threads():
            if self._text is None:
                self._text = self.prompts.encode_text(clip, self._tokens(sum(self.sizes)))
            return self.prompts.logits(clip, self._images(x), self._text, self.scale)

    # ------------------------------------------------------------------------- training
    def fit_base(self, session, ctx) -> None:
        self.names = [readable_class_name(n) for n in session.data.class_names]
        if len(self.names) < self.info.num_classes:
            raise UserError("cpe_clip needs the name of every class (session.data.class_names)")
        if self.source == "glyphs":
            from fsbench.clip import glyphs_clip
            base = self.names[:self.info.num_base]
            self.bundle = glyphs_clip(session.data, base, seed=ctx.seed, progress=ctx.progress,
                                      train={"steps": self.options.clip.pretrain_steps})
            self.bundle.model.to(self.device)
        self.sizes = [len(session.new_classes)]
        with self._threads():
            self._train_session(session, ctx, 0)

    def learn_session(self, session, ctx) -> None:
        self.sizes.append(len(session.new_classes))
        with self._threads():
            self._train_session(session, ctx, session.index)

    def _train_session(self, session, ctx, t: int) -> None:
        self._text = None
        tr = self.options.train
        part = tr.base if t == 0 else tr.session
        epochs, batch = part.epochs, part.batch_size
        g, proj = self.prompts.g_values, self.prompts.prompt_proj
        late = t >= 2  # clip_pe.py freezes from the second incremental session on
        g.requires_grad_(not (late and self.regularization in ("freeze", "freeze_all")))
        proj.requires_grad_(not (late and self.regularization == "freeze_all"))
        params = [q for q in self.prompts.parameters() if q.requires_grad]
        if not params or epochs <= 0:
            return
        opt = torch.optim.SGD(params, lr=self._lr(0), momentum=tr.momentum,
                              weight_decay=tr.weight_decay)
        lam = prompt_lambda(self.sizes, t) if t > 0 and self.regularization == "balance" else 1.0
        num_old, num_seen = sum(self.sizes[:-1]), sum(self.sizes)
        tokens = self._tokens(num_seen)
        clip = self.bundle.model
        loader = ctx.loader(session.data, train=True, batch_size=batch, shuffle=True)
        self.prompts.train()
        # Per-epoch checkpoint of this session's prompt training (fsbench.trainstate).
        ckpt = EpochCheckpoint.of(ctx, f"prompts-{t}")
        state = {"prompts": self.prompts, "opt": opt}
        start, _ = ckpt.restore(state, loader)
        for epoch in range(start, epochs):
            lr = self._lr(epoch)
            for group in opt.param_groups:
                group["lr"] = lr
            bar = ctx.bar(loader, f"session {t} epoch {epoch + 1}/{epochs}")
            tot = correct = n = 0
            for x, y in bar:
                text = self.prompts.encode_text(clip, tokens)
                logits = mask_old(self.prompts.logits(clip, self._images(x), text, self.scale),
                                  num_old)
                y = y.to(self.device)
                loss = F.cross_entropy(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if lam != 1.0:
                    for q in params:
                        q.grad.mul_(lam)
                opt.step()
                tot += loss.item() * len(y)
                correct += int((logits.argmax(1) == y).sum())
                n += len(y)
            ctx.log_epoch("prompts", epoch, loss=tot / max(1, n), train_acc=100.0 * correct
                          / max(1, n), lr=lr)
            ckpt.save(epoch + 1, state, loader)
        ctx.log_selection("prompts", epochs - 1, "last")
        self.prompts.eval()

    def _lr(self, epoch: int) -> float:
        tr = self.options.train
        if tr.schedule == "constant":
            return tr.lr
        w = tr.warmup_restarts
        return official_lr(epoch, w.first_cycle_steps, w.max_lr, w.min_lr, float(w.warmup_steps))


"""Text encoders for DVLA-RL's semantics (``text.encoder``), one interface: ``.encode(texts) ->
(n, dim)`` unit rows, ``.dim``, ``.name``.

* ``openai_clip`` - open_clip's CLIP text tower (``text.arch``, default ViT-B-16, 512-d) from the
  local weights file ``text.weights`` (:func:`fsbench.clip.load_openai_clip`); the paper's encoder.
* ``glyphs_clip`` - the small CLIP that :func:`fsbench.clip.glyphs_clip` trains offline on the
  glyphs *training* images captioned from their Unicode names (cached by content hash, so a
  ``--resume`` finds it again); never sees the test scripts' images.
* ``words`` - a bag of words with a fixed random vector per word (seeded by the word's SHA-256),
  no training, no download. Not semantic beyond shared words; for tests and ablations.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fsbench.errors import UserError


class WordsEncoder:
    name = "words"

    def __init__(self, dim: int = 64):
        self.dim = int(dim)
        self._vec: dict[str, torch.Tensor] = {}

    def _word(self, w: str) -> torch.Tensor:
        if w not in self._vec:
            seed = int.from_bytes(hashlib.sha256(w.encode()).digest()[:8], "little")
            g = np.random.default_rng(seed)
            self._vec[w] = torch.from_numpy(g.standard_normal(self.dim)).float()
        return self._vec[w]

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        out = []
        for t in texts:
            words = [w for w in "".join(c if c.isalnum() else " " for c in t.lower()).split()]
            v = sum((self._word(w) for w in words), torch.zeros(self.dim))
            out.append(v)
        return F.normalize(torch.stack(out), dim=-1)


class ClipEncoder:
    def __init__(self, bundle, name: str):
        from fsbench.clip import encode_texts

        self.bundle, self.name = bundle, name
        self._encode = encode_texts
        self.dim = int(self.encode(["a"]).shape[1])

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        return self._encode(self.bundle, list(texts)).float().cpu()


def _clip_module():
    try:
        import fsbench.clip as clip
    except ImportError:
        raise UserError("text.encoder: the CLIP encoders need fsbench.clip (the CPE-CLIP "
                        "component); use --set text.encoder=words meanwhile") from None
    return clip


def _glyphs_train():
    from fsbench.episodes.glyphs import glyphs_fsl, load_glyphs

    return glyphs_fsl(load_glyphs()).train


def build_text_encoder(cfg: dict, dataset: str, train=None, *, seed: int = 0,
                       progress: bool = False):
    kind = cfg.get("encoder", "openai_clip")
    if kind == "words":
        return WordsEncoder(int(cfg.get("dim", 64)))
    if kind == "openai_clip":
        clip = _clip_module()
        return ClipEncoder(clip.load_openai_clip(cfg.get("arch") or "ViT-B-16", cfg.get("weights")),
                           "openai_clip")
    if kind == "glyphs_clip":
        if dataset != "glyphs":
            raise UserError(f"text.encoder=glyphs_clip is for the glyphs dataset, not {dataset}; "
                            f"use openai_clip with text.weights=PATH")
        clip = _clip_module()
        if train is None:  # --resume: same training split, the CLIP comes from its cache
            train = _glyphs_train()
        captions = []
        for n in train.class_names:
            try:
                captions.append(clip.unicode_caption(n))
            except ValueError:
                captions.append(n.lower())
        bundle = clip.glyphs_clip(train, captions, seed=seed, progress=progress)
        return ClipEncoder(bundle, "glyphs_clip")
    raise UserError(f"text.encoder: {kind!r} is not openai_clip, glyphs_clip or words")

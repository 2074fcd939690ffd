"""CLIP as a shared fsbench component: OpenAI weights from a local file, or a tiny CLIP trained
offline on glyphs, plus the class names each benchmark gives to a text encoder.

* :func:`load_openai_clip` - an ``open_clip`` CLIP (e.g. ``ViT-B-16``) with OpenAI's weights read
  from a file the user downloaded once; nothing is ever downloaded (``HF_HUB_OFFLINE`` or not).
* :func:`glyphs_clip` (in :mod:`fsbench.clip.glyphs`) - a tiny ``open_clip`` model trained with the
  CLIP contrastive loss on images captioned with their Unicode names; cached in ``$FSBENCH_CACHE``.
* :func:`encode_texts` - L2-normalised text features; :func:`unicode_caption`; :func:`class_names`.

Every model comes back as a :class:`ClipBundle`: frozen (``requires_grad`` False), in eval mode,
with the tokenizer and the preprocessing it expects.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from fsbench.clip.names import class_names, readable_class_name, unicode_caption  # noqa: F401
from fsbench.errors import UserError

#: Where each OpenAI checkpoint can be fetched by hand (open_clip's own table; the HF copy is the
#: same weights in open_clip's key layout).
OPENAI_SOURCES = {
    "ViT-B-16": ("https://openaipublic.azureedge.net/clip/models/5806e77cd80f8b59890b7e101eabd078d9"
                 "fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
                 "https://huggingface.co/timm/vit_base_patch16_clip_224.openai "
                 "(open_clip_pytorch_model.bin)"),
}
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ClipBundle:
    """A frozen CLIP with what it needs around it."""

    model: "torch.nn.Module"  # open_clip.CLIP, frozen, eval mode
    tokenizer: Callable[[list[str]], torch.Tensor]
    image_size: int
    mean: tuple
    std: tuple
    provenance: str  # "openai:/path/ViT-B-16.pt" or "glyphs-clip:<sha12>"

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], ``(N, C, H, W)`` with C = 1 or 3 -> the model's normalised input."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def quiet_create(name: str, **kwargs) -> torch.nn.Module:
    """``open_clip.create_model(name)`` with random weights, without open_clip's warning that no
    pretrained weights were loaded (fsbench loads its own)."""
    import logging

    import open_clip
    prev = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        return open_clip.create_model(name, pretrained=None, **kwargs)
    finally:
        logging.disable(prev)


def _fetch_hint(arch: str) -> str:
    url, alt = OPENAI_SOURCES.get(arch, (None, None))
    name = url.rsplit("/", 1)[-1] if url else f"{arch}.pt"
    where = f"from {url} (or {alt})" if url else "(OpenAI's checkpoint for this architecture)"
    return f"download {name} {where} once and pass --set clip.weights=/path/to/{name}"


def _read_state_dict(path: Path) -> dict:
    """A state dict from OpenAI's TorchScript archive, a safetensors file or a plain torch file
    (the latter read with ``weights_only=True``)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path), device="cpu")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            scripted = any(n.split("/", 2)[1:2] == ["code"] for n in z.namelist())
        if scripted:  # OpenAI's release format: a TorchScript archive (no pickled Python code)
            return torch.jit.load(str(path), map_location="cpu").state_dict()
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError("not a state dict")
    return {k[7:] if k.startswith("module.") else k: v for k, v in obj.items()}


def load_openai_clip(arch: str, weights: str | None) -> ClipBundle:
    """OpenAI CLIP ``arch`` (open_clip name, e.g. ``ViT-B-16``) with weights from the local file
    ``weights``: OpenAI's ``ViT-B-16.pt`` or open_clip's ``open_clip_pytorch_model.bin`` /
    ``.safetensors``. QuickGELU, as OpenAI trained it. Missing file -> one-line UserError."""
    import open_clip

    if arch not in open_clip.list_models():
        raise UserError(f"clip.arch {arch!r} is not an open_clip model; e.g. ViT-B-16")
    if not weights:
        raise UserError(f"clip.weights is not set: CLIP {arch} needs OpenAI's weights file; "
                        f"{_fetch_hint(arch)} (fsbench never downloads weights)")
    path = Path(str(weights)).expanduser()
    if not path.is_file():
        raise UserError(f"clip.weights {path} does not exist; {_fetch_hint(arch)}")
    try:
        sd = _read_state_dict(path)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise UserError(f"clip.weights {path} is not a readable CLIP checkpoint "
                        f"({type(e).__name__}); {_fetch_hint(arch)}") from None
    for k in ("input_resolution", "context_length", "vocab_size"):
        sd.pop(k, None)
    model = quiet_create(arch, force_quick_gelu=True)
    try:
        model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)[:200]
        raise UserError(f"clip.weights {path} does not match CLIP {arch} ({first}); "
                        f"{_fetch_hint(arch)}") from None
    size = model.visual.image_size
    return ClipBundle(model=freeze(model), tokenizer=open_clip.get_tokenizer(arch),
                      image_size=int(size[0] if isinstance(size, (tuple, list)) else size),
                      mean=OPENAI_MEAN, std=OPENAI_STD, provenance=f"openai:{path}")


@torch.no_grad()
def encode_texts(bundle: ClipBundle, texts: list[str], batch: int = 256) -> torch.Tensor:
    """L2-normalised text features ``(len(texts), embed_dim)`` on the model's device."""
    model = bundle.model
    dev = next(model.parameters()).device
    out = [model.encode_text(bundle.tokenizer(list(texts[s:s + batch])).to(dev))
           for s in range(0, len(texts), batch)]
    if not out:
        return torch.empty(0, model.text_projection.shape[-1], device=dev)
    return F.normalize(torch.cat(out).float(), dim=-1)


def glyphs_clip(*args, **kwargs) -> ClipBundle:
    """See :func:`fsbench.clip.glyphs.glyphs_clip` (imported lazily)."""
    from fsbench.clip.glyphs import glyphs_clip as _impl
    return _impl(*args, **kwargs)

"""``glyphs-clip``: a tiny CLIP trained offline, so CLIP methods have a real image-text model on
glyphs where no pretrained weights can be downloaded.

The architecture is an ``open_clip`` model config shipped with fsbench
(``fsbench-glyphs-clip.json``: ViT 32 px, patch 8, 4 layers of width 64; text transformer of 4
layers, width 64, context 24, the standard CLIP BPE tokenizer), registered with
``open_clip.add_model_config`` at run time. It is trained from scratch with the CLIP contrastive
loss (Radford et al. 2021, symmetric InfoNCE with a learned temperature) on the images it is given,
each captioned with its class's text (on glyphs the Unicode name, e.g. "latin small letter a with
grave"). Every batch holds ``k`` images of each of ``B`` distinct classes and their ``B`` captions;
image-to-text is the usual cross-entropy, text-to-image spreads the target over the ``k`` images of
the class, so the loss has no false negatives (``k = 1`` is exactly CLIP's symmetric loss). 10 % of the images (at most 1,000) are held
out to measure the zero-shot accuracy that is printed.

On the FSCIL protocol the caller passes only the **base-session** images (the protocol lets a
method train on them as it likes); on FSL the train split. The trained weights are cached in
``$FSBENCH_CACHE`` (default ``~/.cache/fsbench``) as ``glyphs-clip-<sha12>.pt``, keyed by a SHA-256
of the images, labels, captions, model config, training settings and seed; the global RNG state is
left untouched, so a cached and a fresh model give a run the same random stream.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fsbench.atomic import atomic_write_bytes
from fsbench.clip import ClipBundle, freeze

MODEL_NAME = "fsbench-glyphs-clip"
CONFIG_FILE = Path(__file__).with_name(f"{MODEL_NAME}.json")
VERSION = 1  # bump when the training recipe changes
#: Training settings (part of the cache key).
TRAIN = {"steps": 600, "batch_classes": 128, "per_class": 2, "lr": 2e-3, "weight_decay": 0.1,
         "warmup": 50, "holdout": 0.1, "holdout_max": 1000}
#: Threads while training (not part of the key): the model is so small that one thread is nearly
#: as fast as two on an idle machine and many times faster on a shared one.
THREADS = 1
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def _register() -> None:
    import open_clip
    if MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_FILE)


def _as_arrays(images, labels):
    from fsbench.episodes.base import ArrayDataset, ImageDataset
    if isinstance(images, ImageDataset):
        if labels is None:
            labels = images.labels
        if isinstance(images, ArrayDataset):
            images = images.images
        else:
            images = np.stack([images.load(i) for i in range(len(images))])
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"glyphs_clip: images must be uint8, got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(images):
        raise ValueError(f"glyphs_clip: {len(images)} images but {len(labels)} labels")
    return np.ascontiguousarray(images), labels


def _key(images: np.ndarray, labels: np.ndarray, captions: list[str], train: dict, seed: int
         ) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"v": VERSION, "shape": images.shape, "captions": list(captions),
                         "config": json.loads(CONFIG_FILE.read_text()), "train": train,
                         "seed": int(seed)}, sort_keys=True).encode())
    h.update(images.tobytes())
    h.update(labels.tobytes())
    return h.hexdigest()


def _to_input(batch: np.ndarray) -> torch.Tensor:
    """uint8 ``(n, H, W, C)`` -> normalised ``(n, 3, H, W)`` float."""
    t = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    return (t - 0.5) / 0.5


def _cache_dir(cache_dir) -> Path:
    return Path(cache_dir or os.environ.get("FSBENCH_CACHE") or "~/.cache/fsbench").expanduser()


def _build(image_size: int):
    import open_clip

    from fsbench.clip import quiet_create
    _register()
    return quiet_create(MODEL_NAME, force_image_size=image_size), \
        open_clip.get_tokenizer(MODEL_NAME)


def untrained_bundle(image_size: int = 32) -> ClipBundle:
    """The glyphs-clip architecture with random weights (a placeholder until it is trained, and
    the model of unit tests)."""
    model, tokenizer = _build(int(image_size))
    return ClipBundle(model=freeze(model), tokenizer=tokenizer, image_size=int(image_size),
                      mean=MEAN, std=STD, provenance="glyphs-clip:untrained")


@torch.no_grad()
def zero_shot_accuracy(model, tokenizer, images: np.ndarray, labels: np.ndarray,
                       captions: list[str]) -> float:
    """Top-1 accuracy (%) of nearest-caption classification over all ``captions``."""
    model.eval()
    text = F.normalize(model.encode_text(tokenizer(list(captions))), dim=-1)
    correct = 0
    for s in range(0, len(images), 512):
        img = F.normalize(model.encode_image(_to_input(images[s:s + 512])), dim=-1)
        correct += int(((img @ text.T).argmax(1).numpy() == labels[s:s + 512]).sum())
    return 100.0 * correct / max(1, len(images))


def _train(model, tokenizer, images, labels, captions, train: dict, seed: int, progress: bool
           ) -> tuple[float, int, float]:
    """CLIP contrastive training; returns (zero-shot %, held-out count, seconds)."""
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, min(threads, int(train.get("threads", 1)))))
    try:
        return _fit(model, tokenizer, images, labels, captions, train, seed, progress, t0)
    finally:
        torch.set_num_threads(threads)


def _fit(model, tokenizer, images, labels, captions, train, seed, progress, t0):
    rng = np.random.default_rng(seed)
    n = len(images)
    n_hold = min(int(train["holdout_max"]), int(n * float(train["holdout"])))
    perm = rng.permutation(n)
    hold, fit = np.sort(perm[:n_hold]), perm[n_hold:]
    classes = np.unique(labels[fit])
    by_class = {int(c): fit[labels[fit] == c] for c in classes}
    tokens = tokenizer(list(captions))
    b, k = min(len(classes), int(train["batch_classes"])), int(train["per_class"])
    steps, warm = int(train["steps"]), int(train["warmup"])
    decay = [p for nm, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in nm]
    rest = [p for nm, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in nm)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": float(train["weight_decay"])},
                             {"params": rest, "weight_decay": 0.0}], lr=float(train["lr"]),
                            betas=(0.9, 0.98), eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                              0.5 * (1 + math.cos(math.pi * (s - warm) /
                                                                  max(1, steps - warm))))
    model.train()
    from tqdm.auto import tqdm
    bar = tqdm(range(steps), desc="glyphs-clip", disable=not progress, leave=False)
    for _ in bar:
        cls = rng.choice(classes, b, replace=False)
        idx = np.concatenate([rng.choice(by_class[int(c)], k, replace=len(by_class[int(c)]) < k)
                              for c in cls])
        img = F.normalize(model.encode_image(_to_input(images[idx])), dim=-1)
        txt = F.normalize(model.encode_text(tokens[torch.from_numpy(cls)]), dim=-1)
        logits = model.logit_scale.exp() * img @ txt.T  # (b*k, b)
        target = torch.arange(b).repeat_interleave(k)
        # image->text: one caption per image; text->image: the k images of a class share the
        # target mass (k = 1 is the plain symmetric CLIP loss)
        loss = (F.cross_entropy(logits, target)
                + F.cross_entropy(logits.T, F.one_hot(target, b).T.float() / k)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        bar.set_postfix(loss=f"{loss.item():.3f}")
    acc = zero_shot_accuracy(model, tokenizer, images[hold], labels[hold], captions)
    return acc, int(n_hold), time.perf_counter() - t0


def glyphs_clip(images, captions: list[str], labels=None, *, seed: int, progress: bool = False,
                cache_dir=None, train: dict | None = None) -> ClipBundle:
    """A tiny CLIP trained on ``images`` (uint8 ``(N, H, W[, C])`` or an ``ImageDataset``) with
    ``captions[label]`` as text; cached by content hash. ``train`` overrides :data:`TRAIN` keys.
    Prints the zero-shot accuracy on held-out images of the training classes."""
    images, labels = _as_arrays(images, labels)
    captions = [str(c) for c in captions]
    if len(labels) and int(labels.max()) >= len(captions):
        raise ValueError(f"glyphs_clip: label {int(labels.max())} has no caption "
                         f"({len(captions)} captions)")
    settings = {**TRAIN, **{k: v for k, v in (train or {}).items() if k != "threads"}}
    key = _key(images, labels, captions, settings, seed)
    path = _cache_dir(cache_dir) / f"glyphs-clip-{key[:12]}.pt"
    with torch.random.fork_rng(devices=[]):  # the caller's RNG stream stays as it was
        torch.manual_seed(seed)
        model, tokenizer = _build(int(images.shape[1]))
        meta = None
        if path.is_file():
            try:
                blob = torch.load(path, map_location="cpu", weights_only=True)
                model.load_state_dict(blob["state_dict"])
                meta = blob["meta"]
            except Exception as e:  # noqa: BLE001 - a corrupt cache is rebuilt
                print(f"glyphs-clip: cache {path} unreadable ({type(e).__name__}); retraining",
                      file=sys.stderr)
                torch.manual_seed(seed)
                model, tokenizer = _build(int(images.shape[1]))
        if meta is None:
            acc, n_hold, secs = _train(model, tokenizer, images, labels, captions,
                                       {**settings, "threads": (train or {}).get("threads",
                                                                                 THREADS)},
                                       seed, progress)
    if meta is None:
        meta = {"zero_shot": round(acc, 2), "held_out": n_hold, "seconds": round(secs, 1),
                "classes": int(len(np.unique(labels))), "images": int(len(images)),
                "key": key}
        buf = io.BytesIO()
        torch.save({"state_dict": model.state_dict(), "meta": meta}, buf)
        try:
            atomic_write_bytes(path, buf.getvalue())
        except OSError as e:
            print(f"glyphs-clip: cannot write the cache {path} ({e}); continuing without it",
                  file=sys.stderr)
        how = f"trained in {meta['seconds']:.0f} s"
    else:
        how = f"from cache {path.name} (trained in {meta['seconds']:.0f} s)"
    print(f"glyphs-clip {key[:12]}: zero-shot accuracy {meta['zero_shot']:.1f}% on "
          f"{meta['held_out']} held-out images of its {meta['classes']} training classes "
          f"(chance {100.0 / max(1, meta['classes']):.1f}%); {how}", file=sys.stderr, flush=True)
    return ClipBundle(model=freeze(model), tokenizer=tokenizer, image_size=int(images.shape[1]),
                      mean=MEAN, std=STD, provenance=f"glyphs-clip:{key[:12]}")

"""``glyphs``: an Omniglot-like set of letters rendered from the fonts matplotlib ships.

Nothing is downloaded: the images are rendered at first use and cached in ``$FSBENCH_CACHE``
(default ``~/.cache/fsbench``). ``load_glyphs(size=32)`` returns the images; ``glyphs_fsl`` and
``glyphs_fscil`` the benchmarks (``--dataset glyphs`` for both tasks; options ``size``,
``cache_dir``).

* **Faces** (16, from ``matplotlib.get_data_path()/fonts/ttf``): DejaVu Sans, DejaVu Serif and
  DejaVu Sans Mono, each regular / bold / oblique (italic) / bold-oblique, and STIXGeneral in the
  same four styles. A STIX face is used for a letter only where its cmap has the letter.
* **Classes**: the Unicode letters (categories Lu, Ll) in the cmap of all 12 DejaVu faces that
  draw ink in each: 1,330. A class's script is the first word of its ``unicodedata.name``
  (LATIN, GREEK, CYRILLIC, ARMENIAN, GEORGIAN; the six letterlike symbols such as OHM SIGN or
  PLANCK CONSTANT are OTHER). Classes are ordered by script in that order, then by code point.
* **De-duplication**: each letter's clean 32x32 renderings in the 12 DejaVu faces are
  concatenated; a letter whose cosine similarity with an earlier kept letter exceeds 0.97 is
  dropped (Cyrillic and Greek o fall to Latin o, OHM SIGN to Omega, and letters told apart only
  by a diacritic too small to survive 32 px). **1,043 classes remain**: Latin 619, Greek 188,
  Cyrillic 117, Armenian 74, Georgian 43, Other 2 (``GlyphsData.num_classes`` and
  ``summary()`` report the count of the build at hand).
* **Samples**: every (class, face) is drawn with Pillow (``anchor='mm'``, white on black, font
  size 0.65 x image size) and distorted 8 times with seeded parameters: rotation +-15 deg, scale
  0.85-1.15, shear +-0.2, shift +-3 px (at 32 px) and a mild elastic field (4x4 random knots,
  ~1 px, smoothed by Gaussian kernels), resampled bilinearly in batches by
  ``torch.grid_sample``. 12-16 faces x 8 = 96-128 images per class, 114,736 in all (32x32
  uint8, 118 MB).
* **FSL split** (``glyphs_fsl``), by script, so test scripts are unseen in training as with
  Omniglot's evaluation alphabets: train Latin + Greek + Other (809 classes, 90,288 images),
  val Cyrillic (117, 13,216), test Armenian + Georgian (117, 11,232). Labels are 0..K-1 per split.
* **FSCIL split** (``glyphs_fscil``): the 100 classes ``default_rng(7).permutation(1043)[:100]``
  in that order (64 Latin, 18 Greek, 5 Cyrillic, 8 Armenian, 4 Georgian, 1 Other), 60 base + 8
  sessions x 5-way 5-shot; the 5 shots of each new class are drawn by the same generator, after
  the permutation. **Held-out rule**: test images are the bold-oblique faces (DejaVu Sans
  BoldOblique, Serif BoldItalic, Sans Mono BoldOblique, STIXGeneral BoldItalic), never seen in
  training; training images are the other 9-12 faces (72-96 images per class, 8,128 in all;
  test 24-32 per class, 2,704). No rendering of a (letter, face) pair is shared between train
  and test, so the test measures generalisation to an unseen style, not recall of near-copies.
  Measured with the pilot's recipe (Conv4, cosine classifier, 6 base epochs, class-mean
  prototypes; 2-core CPU): base 88.8%, last session 76.5%, novel 61.7% - room between methods
  (a random 75/25 split of the same images gives 88.6 / 75.9 / 60.3; holding out the whole
  DejaVu Serif family gives a harder 80.8 / 68.6 on another class order).
* **Cache**: ``glyphs-v1-<size>px.npy`` (one uint8 array) + ``.json`` (code points, face masks,
  SHA-256 of the array, generator version, a stamp of the font bytes and Pillow / FreeType /
  torch / numpy versions). Every load checks version, stamp, shape and SHA-256; a corrupt or
  stale cache is rebuilt with one warning line. Writes go to a temporary file in the same folder
  and are moved into place with ``os.replace``. Rendering takes about 10 s on 2 idle cores; loading
  0.3-0.5 s. Seeds are fixed, so two builds are byte-identical on one installation (SHA-256
  ``508d1b75cfb8bfc1...`` here: Pillow 13.0, torch 2.14.1); other library versions or CPUs may
  give another hash, which is why results record it (``info["sha256"]``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fsbench.episodes.base import ArrayDataset, FSCILBenchmark, FSLBenchmark
from fsbench.episodes.protocol import PRESETS, SessionProtocol, fingerprint
from fsbench.atomic import atomic_open, remove_orphans
from fsbench.errors import UserError
from fsbench.registry import register_dataset

GENERATOR_VERSION = 1
VARIANTS = 8  # distorted samples per (class, face)
SIM_THRESHOLD = 0.97  # cosine similarity above which a class duplicates an earlier kept one
FONT_RATIO = 0.65  # font size in pixels / image size
SEED = 20261128  # distortions
SPLIT_SEED = 7  # FSCIL class order and shots
SCRIPT_ORDER = ("LATIN", "GREEK", "CYRILLIC", "ARMENIAN", "GEORGIAN", "OTHER")
FSL_SCRIPTS = {"train": ("LATIN", "GREEK", "OTHER"), "val": ("CYRILLIC",),
               "test": ("ARMENIAN", "GEORGIAN")}
#: Face names (= font file stems in matplotlib's mpl-data/fonts/ttf, except STIX's, see below).
#: Every class has the 12 DejaVu faces; a STIX face is used where its cmap covers the letter.
FACES = ["DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique", "DejaVuSans-BoldOblique",
         "DejaVuSerif", "DejaVuSerif-Bold", "DejaVuSerif-Italic", "DejaVuSerif-BoldItalic",
         "DejaVuSansMono", "DejaVuSansMono-Bold", "DejaVuSansMono-Oblique",
         "DejaVuSansMono-BoldOblique", "STIXGeneral", "STIXGeneral-Bold", "STIXGeneral-Italic",
         "STIXGeneral-BoldItalic"]
_FILES = {"STIXGeneral-Bold": "STIXGeneralBol", "STIXGeneral-Italic": "STIXGeneralItalic",
          "STIXGeneral-BoldItalic": "STIXGeneralBolIta"}
NUM_SHARED = 12  # the DejaVu faces: class selection and de-duplication use these
HELD_OUT_FACES = (3, 7, 11, 15)  # the bold-oblique faces: FSCIL test images only
FSCIL_CLASSES = 100
log = logging.getLogger("fsbench.glyphs")


@dataclass
class GlyphsData:
    images: np.ndarray  # (N, H, W) uint8
    labels: np.ndarray  # (N,) int64 class ids
    class_names: list  # Unicode names, e.g. "GREEK SMALL LETTER ALPHA"
    class_scripts: list  # "LATIN", "GREEK", ...
    faces: list  # face names; sample_face indexes this list
    sample_face: np.ndarray  # (N,) int64
    sample_variant: np.ndarray  # (N,) int64, 0..VARIANTS-1
    sha256: str  # of the image array bytes
    num_classes_before_dedup: int
    class_codepoints: list = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def summary(self) -> str:
        per = np.bincount(self.labels, minlength=self.num_classes)
        scripts = ", ".join(f"{s.title()} {self.class_scripts.count(s)}" for s in SCRIPT_ORDER
                            if s in self.class_scripts)
        return (f"glyphs {self.images.shape[1]}x{self.images.shape[2]}: {self.num_classes} "
                f"classes (of {self.num_classes_before_dedup} before de-duplication; {scripts}), "
                f"{len(self.labels)} images, {per.min()}-{per.max()} per class, "
                f"{len(self.faces)} faces, sha256 {self.sha256[:16]}")


# ---------------------------------------------------------------------------------- rendering
def _font_file(face: str) -> str:
    import matplotlib
    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf", _FILES.get(face, face) + ".ttf")


def _stamp() -> str:
    """Identity of everything the rendering depends on: font bytes and library versions."""
    from importlib.metadata import version
    h = hashlib.sha256()
    for f in FACES:
        h.update(Path(_font_file(f)).read_bytes())
    from PIL import features
    return (f"fonts {h.hexdigest()[:16]} pillow {version('pillow')} freetype "
            f"{features.version('freetype2')} torch {version('torch')} numpy {np.__version__}")


def _script(code: int) -> str:
    word = unicodedata.name(chr(code)).split()[0]
    return word if word in SCRIPT_ORDER else "OTHER"


def _candidates() -> tuple:
    """Letters (Lu, Ll) in the cmap of all 12 DejaVu faces, script-major then code point."""
    from matplotlib.ft2font import FT2Font
    maps = [set(FT2Font(_font_file(f)).get_charmap()) for f in FACES]
    codes = [c for c in set.intersection(*maps[:NUM_SHARED])
             if unicodedata.category(chr(c)) in ("Lu", "Ll")]
    codes.sort(key=lambda c: (SCRIPT_ORDER.index(_script(c)), c))
    cover = np.array([[c in m for m in maps] for c in codes], dtype=bool)
    return codes, cover


def _render(codes, canvas: int, bar=None) -> np.ndarray:
    """(len(codes), len(FACES), canvas, canvas) uint8 renderings, centred with anchor='mm';
    ``bar`` (a progress bar) advances by one glyph per rendering."""
    from PIL import Image, ImageDraw, ImageFont
    out = np.zeros((len(codes), len(FACES), canvas, canvas), np.uint8)
    im = Image.new("L", (canvas, canvas))
    draw = ImageDraw.Draw(im)
    for j, f in enumerate(FACES):
        font = ImageFont.truetype(_font_file(f), round(FONT_RATIO * canvas))
        for i, c in enumerate(codes):
            draw.rectangle((0, 0, canvas, canvas), fill=0)
            draw.text((canvas / 2, canvas / 2), chr(c), fill=255, font=font, anchor="mm")
            out[i, j] = np.asarray(im)
        if bar is not None:
            bar.update(len(codes))
    return out


def _dedup(ref: np.ndarray) -> np.ndarray:
    """Indices kept: a class is dropped when its 12-face rendering has cosine similarity
    > SIM_THRESHOLD with an earlier kept class."""
    x = ref[:, :NUM_SHARED].reshape(len(ref), -1).astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    keep: list = []
    for i in range(len(x)):
        if not keep or sim[i, keep].max() <= SIM_THRESHOLD:
            keep.append(i)
    return np.array(keep, dtype=np.int64)


def _distort(src: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Seeded affine + mild elastic distortion of (n, s, s) uint8 images (bilinear resampling)."""
    import torch
    import torch.nn.functional as F
    n, size = len(src), src.shape[-1]
    rot = np.deg2rad(rng.uniform(-15, 15, n))
    scale = np.exp(rng.uniform(np.log(0.85), np.log(1.15), n))
    shear = rng.uniform(-0.2, 0.2, n)
    shift = rng.uniform(-3 / 16, 3 / 16, (n, 2))  # +-3 px at 32 px (normalised coordinates)
    knots = rng.standard_normal((n, 2, 4, 4)) * (1.0 / 16)  # elastic: ~1 px at 32 px
    c, s = np.cos(rot) / scale, np.sin(rot) / scale  # output -> input coordinates
    theta = torch.from_numpy(np.stack([np.stack([c, -s + c * shear, shift[:, 0]], 1),
                                       np.stack([s, c + s * shear, shift[:, 1]], 1)], 1)).float()
    u = (torch.arange(size, dtype=torch.float32) * 2 + 1) / size - 1  # pixel centres in [-1, 1]
    rbf = torch.exp(-0.5 * ((u[:, None] - torch.linspace(-1, 1, 4)[None]) / (2 / 3)) ** 2)
    base = torch.stack(torch.meshgrid(u, u, indexing="xy"), -1)  # (s, s, 2) as (x, y)
    knots = torch.from_numpy(knots).float()
    out = np.empty((n, size, size), np.uint8)
    for a in range(0, n, 8192):
        b = slice(a, a + 8192)
        grid = torch.einsum("hwk,njk->nhwj", base, theta[b, :, :2]) + theta[b, None, None, :, 2]
        grid += torch.einsum("hk,ncki,wi->nhwc", rbf, knots[b], rbf)
        x = torch.from_numpy(src[b]).float().unsqueeze(1)
        y = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out[b] = y.squeeze(1).round_().clamp_(0, 255).to(torch.uint8).numpy()
    return out


def _layout(cover: np.ndarray):
    """Per-sample (label, face, variant): class-major, then face, then variant."""
    cls, face = np.nonzero(cover)
    lab = np.repeat(cls, VARIANTS).astype(np.int64)
    return lab, np.repeat(face, VARIANTS).astype(np.int64), np.tile(
        np.arange(VARIANTS, dtype=np.int64), len(cls))


def _build(size: int):
    from fsbench.context import progress_bar

    codes, cover = _candidates()
    total = len(codes) * len(FACES) * (1 if size == 32 else 2)
    with progress_bar(total=total, desc=f"rendering glyphs at {size} px (once, then cached)",
                      unit="glyph") as bar:
        src = _render(codes, size, bar)
        ref = src if size == 32 else _render(codes, 32, bar)
    cover &= ref.reshape(*ref.shape[:2], -1).max(-1) > 0  # a face must put ink on the canvas
    ok = cover[:, :NUM_SHARED].all(1)  # (all 1,330 do with matplotlib's fonts today)
    codes, cover, src, ref = [c for c, k in zip(codes, ok) if k], cover[ok], src[ok], ref[ok]
    keep, before = _dedup(ref), len(codes)
    codes, cover, src = [codes[i] for i in keep], cover[keep], src[keep]
    lab, face, _ = _layout(cover)
    images = _distort(src[lab, face], np.random.default_rng([SEED, GENERATOR_VERSION, size]))
    meta = {"version": GENERATOR_VERSION, "size": size, "codepoints": codes,
            "face_mask": [int(sum(1 << j for j in np.flatnonzero(r))) for r in cover],
            "num_classes_before_dedup": before}
    return images, meta


# ---------------------------------------------------------------------------------- cache
class _Stale(Exception):
    pass


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).data).hexdigest()


def _atomic_write(path: Path, write) -> None:
    with atomic_open(path, "wb") as f:
        write(f)


def _data(images: np.ndarray, meta: dict) -> GlyphsData:
    codes = meta["codepoints"]
    cover = np.array([[m >> j & 1 for j in range(len(FACES))] for m in meta["face_mask"]], bool)
    lab, face, var = _layout(cover)
    return GlyphsData(images, lab, [unicodedata.name(chr(c)) for c in codes],
                      [_script(c) for c in codes], list(FACES), face, var,
                      meta["sha256"], meta["num_classes_before_dedup"], list(codes))


def _read(npy: Path, side: Path, size: int, stamp: str) -> GlyphsData:
    try:
        meta = json.loads(side.read_text())
        key, n = (meta["version"], meta["size"], meta["stamp"]), int(meta["num_samples"])
        if {"codepoints", "face_mask", "sha256", "num_classes_before_dedup"} - set(meta):
            raise KeyError
    except (OSError, ValueError, KeyError, TypeError):
        raise _Stale("has a missing, unreadable or outdated sidecar") from None
    if key != (GENERATOR_VERSION, size, stamp):
        raise _Stale("is stale (generator version, size, fonts or library versions changed)")
    try:
        images = np.load(npy, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        raise _Stale("is truncated or unreadable") from None
    if images.dtype != np.uint8 or images.shape != (n, size, size):
        raise _Stale(f"holds {images.dtype} {images.shape}, not uint8 ({n}, {size}, {size})")
    if _sha(images) != meta["sha256"]:
        raise _Stale("fails its SHA-256 check")
    return _data(images, meta)


def cache_paths(size: int = 32, cache_dir=None) -> tuple:
    """(array file, JSON sidecar) of the cached dataset at ``size``."""
    root = Path(cache_dir or os.environ.get("FSBENCH_CACHE") or "~/.cache/fsbench").expanduser()
    stem = root / f"glyphs-v{GENERATOR_VERSION}-{size}px"
    return stem.with_suffix(".npy"), stem.with_suffix(".json")


def load_glyphs(size: int = 32, cache_dir=None) -> GlyphsData:
    """The glyphs images at ``size`` x ``size``: read from the cache (``cache_dir``, else
    ``$FSBENCH_CACHE``, else ``~/.cache/fsbench``) or rendered and cached now. A corrupt or stale
    cache is rebuilt with one warning line."""
    try:
        size = int(size)
    except (TypeError, ValueError):
        raise UserError(f"glyphs: size must be an integer, got {size!r}") from None
    if not 8 <= size <= 256:
        raise UserError(f"glyphs: size must be between 8 and 256 pixels, got {size}")
    npy, side = cache_paths(size, cache_dir)
    remove_orphans(npy.parent)  # temporaries of writes that were killed
    stamp = _stamp()
    if npy.exists() or side.exists():
        try:
            return _read(npy, side, size, stamp)
        except _Stale as e:
            log.warning("glyphs cache %s %s; rebuilding it", npy, e)
    images, meta = _build(size)
    meta.update(stamp=stamp, num_samples=len(images), sha256=_sha(images))
    try:
        npy.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(npy, lambda f: np.save(f, images, allow_pickle=False))
        _atomic_write(side, lambda f: f.write(json.dumps(meta).encode()))
    except OSError as e:
        log.warning("glyphs: cannot write the cache in %s (%s); continuing without it",
                    npy.parent, e)
    return _data(images, meta)


# ---------------------------------------------------------------------------------- benchmarks
def _relabelled(data: GlyphsData, classes: np.ndarray, name: str) -> ArrayDataset:
    """All images of ``classes`` with labels 0..len(classes)-1 (in ``classes`` order)."""
    lut = np.full(data.num_classes, -1, np.int64)
    lut[classes] = np.arange(len(classes))
    idx = np.flatnonzero(lut[data.labels] >= 0)
    return ArrayDataset(data.images[idx], lut[data.labels[idx]],
                        [data.class_names[c] for c in classes], name)


def glyphs_fsl(data: GlyphsData) -> FSLBenchmark:
    """Disjoint train / val / test classes by script (:data:`FSL_SCRIPTS`): the test scripts are
    unseen in training, like Omniglot's evaluation alphabets. Labels are 0..K-1 per split."""
    scripts = np.array(data.class_scripts)
    parts = {k: np.flatnonzero(np.isin(scripts, v)) for k, v in FSL_SCRIPTS.items()}
    sets = {k: _relabelled(data, c, f"glyphs-{k}") for k, c in parts.items()}
    info = {"split_id": f"glyphs-v{GENERATOR_VERSION}:" + fingerprint(list(parts.values())),
            "generated": False, "sha256": data.sha256, "summary": data.summary(),
            "scripts": {k: list(v) for k, v in FSL_SCRIPTS.items()},
            "classes": {k: len(v) for k, v in parts.items()}}
    return FSLBenchmark("glyphs", sets["train"], sets["val"], sets["test"], info)


def glyphs_fscil(data: GlyphsData) -> FSCILBenchmark:
    """100 classes in a seeded order (60 base + 8 sessions x 5-way 5-shot). Test images are the
    held-out bold-oblique faces (:data:`HELD_OUT_FACES`); training images the other faces."""
    rng = np.random.default_rng(SPLIT_SEED)
    order = rng.permutation(data.num_classes)[:FSCIL_CLASSES]
    chosen = np.isin(data.labels, order)
    held = np.isin(data.sample_face, HELD_OUT_FACES)
    tr, te = np.flatnonzero(chosen & ~held), np.flatnonzero(chosen & held)
    train = ArrayDataset(data.images[tr], data.labels[tr], data.class_names, "glyphs-train")
    test = ArrayDataset(data.images[te], data.labels[te], data.class_names, "glyphs-test")
    shape = PRESETS["glyphs"]
    base, way = shape["num_base"], shape["way"]
    sessions = [np.flatnonzero(np.isin(train.labels, order[:base]))]
    for t in range(1, shape["num_sessions"]):
        sessions.append(np.concatenate([
            np.sort(rng.choice(np.flatnonzero(train.labels == c), shape["shot"], replace=False))
            for c in order[base + (t - 1) * way: base + t * way]]))
    split_id = f"glyphs-v{GENERATOR_VERSION}:" + fingerprint([order, tr, te, *sessions])
    proto = SessionProtocol(name="glyphs", **shape, class_order=order,
                            session_train_indices=sessions, split_id=split_id)
    proto.validate(train.labels)
    info = {"split_id": split_id, "generated": False, "sha256": data.sha256,
            "summary": data.summary(), "held_out_faces": [data.faces[f] for f in HELD_OUT_FACES]}
    return FSCILBenchmark("glyphs", train, test, proto, info)


@register_dataset("glyphs", task="both", summary="Omniglot-like letters rendered from "
                  "matplotlib's fonts (no download; built once into $FSBENCH_CACHE)")
def build_glyphs(root, task: str, options: dict):
    """Registry entry: ``root`` is ignored; ``options`` may hold ``size`` and ``cache_dir``."""
    options = dict(options or {})
    unknown = sorted(set(options) - {"size", "cache_dir"})
    if unknown:
        raise UserError(f"glyphs: unknown option(s) {', '.join(unknown)}; valid: size, cache_dir")
    if task not in ("fsl", "fscil"):
        raise UserError(f"glyphs: unknown task {task!r}; valid: fsl, fscil")
    data = load_glyphs(options.get("size", 32), options.get("cache_dir"))
    return glyphs_fsl(data) if task == "fsl" else glyphs_fscil(data)

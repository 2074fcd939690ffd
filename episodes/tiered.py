"""tieredImageNet (``tieredimagenet``, FSL): the Ren et al. (2018) pickles or full-resolution
ILSVRC-2012 JPEGs (option ``form``).

Layout: ``<root>/tiered-imagenet/`` (also ``tieredimagenet``, ``tiered_imagenet`` or the data root
itself) with ``{train,val,test}_images_png.pkl`` (a list of PNG-encoded 84x84 images) and
``{train,val,test}_labels.pkl`` (a dict whose ``label_specific`` gives each image's class; the
optional ``label_specific_str`` names the classes). Splits: 351 / 97 / 160 classes (448,695 /
124,261 / 206,209 images).

The pickles are read with the restricted unpickler of :mod:`fsbench.safepickle` (arrays, lists
and dicts only), so a crafted file is refused and runs no code. The PNG bytes are decoded on
access; ``fsbench data prepare --dataset tieredimagenet`` decodes them once into a memory-mapped
cache, which later runs use automatically.

Labels are the native ``label_specific`` ids of each split. Options: ``form`` (``pickle``, the
default, or ``ilsvrc``), ``resolution`` (default 84 for pickles, native for ``ilsvrc``),
``image_dir``, ``use_prepared``, ``skip_corrupt``.

``form: ilsvrc`` - the layout BECLR's code reads (its images are ILSVRC-2012 train JPEGs at full
resolution, resized to 256 and cropped to 224 by the transforms, where the pickles hold 84x84
down-samples): ``<root>/tiered-imagenet/{train,val,test}.csv`` (header ``filename,label``; rows
``<file>.JPEG,<wnid>``, a folder prefix before ``/`` or ``\\`` in the file name is dropped, as
BECLR's ``dataset/split/tieredImageNet/*.csv``) and the ILSVRC-2012 train folder
``<image_dir>/<wnid>/<file>.JPEG`` (``image_dir`` default: the first of
``<root>/ILSVRC2012/train``, ``<root>/imagenet/train``, ``<root>/tiered-imagenet/images``). Class
ids follow the first appearance of each wnid in a split's CSV (as BECLR's loader); each split
must hold the 351 / 97 / 160 classes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fsbench.errors import UserError
from fsbench.registry import register_dataset

from .prepare import (COMMON_OPTIONS, EncodedImages, ImageFiles, Split, check_options,
                      file_stamp, fsl_benchmark, list_stamp, missing_images, read_user_pickle,
                      require_root, resolution_option)

NATIVE = 84
FOLDERS = ("tiered-imagenet", "tieredimagenet", "tiered_imagenet", ".")
SPLITS = {"train": (351, 448695), "val": (97, 124261), "test": (160, 206209)}
LAYOUT = "tiered-imagenet/{train,val,test}_images_png.pkl + {train,val,test}_labels.pkl"
FIX = "download the tieredImageNet pickles again"


def _candidates(root: Path) -> list[Path]:
    """The folders that may hold the dataset's files, in order (:data:`FOLDERS`)."""
    return [root if sub == "." else root / sub for sub in FOLDERS]


def folder(root: Path | None) -> Path:
    root = require_root("tieredimagenet", root, "tiered-imagenet/train_images_png.pkl")
    need = [f"{s}_{k}.pkl" for s in SPLITS for k in ("images_png", "labels")]
    for d in _candidates(root):
        if all((d / n).is_file() for n in need):
            return d
    for d in _candidates(root):
        if d.is_dir() and any((d / n).is_file() for n in need):
            gone = [n for n in need if not (d / n).is_file()]
            raise UserError(f"{d} lacks {', '.join(gone)}; expected {root}/{LAYOUT}")
    raise UserError(f"expected {root}/tiered-imagenet/train_images_png.pkl (the Ren et al. "
                    f"pickles: {LAYOUT})")


def read_labels(path: Path) -> tuple[np.ndarray, list | None]:
    obj = read_user_pickle(path, FIX)
    if not isinstance(obj, dict) or "label_specific" not in obj:
        raise UserError(f"{path}: expected a dict with 'label_specific' (Ren et al. format)")
    labels = np.asarray(obj["label_specific"]).astype(np.int64).reshape(-1)
    names = obj.get("label_specific_str")
    names = [str(n) for n in names] if names is not None and len(names) else None
    return labels, names


def _split(d: Path, s: str) -> Split:
    k, n = SPLITS[s]
    img_path, lab_path = d / f"{s}_images_png.pkl", d / f"{s}_labels.pkl"

    def load(res):
        labels, names = read_labels(lab_path)
        blobs = read_user_pickle(img_path, FIX)
        if isinstance(blobs, np.ndarray) and blobs.dtype != object:
            raise UserError(f"{img_path}: expected a list of PNG-encoded images, got an array "
                            f"{blobs.dtype} {blobs.shape}")
        try:
            count = len(blobs)
        except TypeError:
            raise UserError(f"{img_path}: expected a list of PNG-encoded images") from None
        if count != len(labels):
            raise UserError(f"{img_path} holds {count} images but {lab_path} has {len(labels)} "
                            f"labels")
        blobs = [b.encode("latin1") if isinstance(b, str) else b for b in blobs]
        num = int(labels.max()) + 1 if len(labels) else 0
        if names is None or len(names) < num:
            names = [f"{s}{i:03d}" for i in range(num)]
        classes = len(np.unique(labels))
        if classes != k or labels.min() < 0:
            raise UserError(f"{lab_path}: {classes} classes (label_specific), the tieredImageNet "
                            f"{s} split has {k}; the pickle is incomplete or another split")
        return EncodedImages(blobs, labels, names, "tieredimagenet", "RGB", res,
                             origin=f"{img_path} item")
    return Split("tieredimagenet", s, load, file_stamp(img_path, lab_path), None,
                 {"images": n, "classes": k})


ILSVRC_LAYOUT = ("tiered-imagenet/{train,val,test}.csv (filename,label) + the ILSVRC-2012 train "
                 "folder <wnid>/<file>.JPEG")
IMAGE_DIRS = ("ILSVRC2012/train", "imagenet/train", "tiered-imagenet/images")


def ilsvrc_folders(root: Path | None, options: dict) -> tuple[Path, Path]:
    """``(folder of the split CSVs, ILSVRC train folder)``."""
    root = require_root("tieredimagenet", root, "tiered-imagenet/train.csv")
    csv_dir = next((d for d in _candidates(root) if (d / "train.csv").is_file()), None)
    if csv_dir is None:
        raise UserError(f"expected {root}/tiered-imagenet/train.csv, val.csv and test.csv (BECLR's "
                        f"tieredImageNet split files; form ilsvrc: {ILSVRC_LAYOUT})")
    given = options.get("image_dir")
    if given is not None:
        image_dir = Path(str(given)).expanduser()
        if not image_dir.is_absolute():
            image_dir = root / image_dir
        if not image_dir.is_dir():
            raise UserError(f"data.options.image_dir: {image_dir} is not a folder; give the "
                            f"ILSVRC-2012 train folder (<wnid>/<file>.JPEG)")
        return csv_dir, image_dir
    for sub in IMAGE_DIRS:
        if (root / sub).is_dir():
            return csv_dir, root / sub
    raise UserError(f"no ILSVRC-2012 train folder under {root} (looked for "
                    f"{', '.join(IMAGE_DIRS)}); set data.options.image_dir=PATH")


def _ilsvrc_split(csv_dir: Path, image_dir: Path, s: str) -> Split:
    from .miniimagenet import read_csv

    k, _ = SPLITS[s]
    path = csv_dir / f"{s}.csv"
    if not path.is_file():
        raise UserError(f"expected {path} (form ilsvrc: {ILSVRC_LAYOUT})")
    files, wnids = read_csv(path)
    names = list(dict.fromkeys(wnids))  # first appearance, as BECLR's loader numbers them
    if len(names) != k:
        raise UserError(f"{path}: {len(names)} classes, the tieredImageNet {s} split has {k}; "
                        f"use the split files of BECLR's dataset/split/tieredImageNet")
    ids = {w: i for i, w in enumerate(names)}
    labels = np.asarray([ids[w] for w in wnids], dtype=np.int64)
    base = [f.replace("\\", "/").rsplit("/", 1)[-1] for f in files]

    def load(res):
        paths = [str(image_dir / w / f) for f, w in zip(base, wnids)]
        missing_images(paths, image_dir, str(path))
        return ImageFiles(paths, labels, names, "tieredimagenet", "RGB", None, res)
    sid = list_stamp("tiered-ilsvrc", str(csv_dir.resolve()), s, base, labels)
    return Split("tieredimagenet", s, load, sid, base, {"images": SPLITS[s][1], "classes": k})


def _form(options: dict) -> str:
    form = options.get("form", "pickle")
    if form not in ("pickle", "ilsvrc"):
        raise UserError(f"data.options.form for tieredimagenet: {form!r} is not pickle or ilsvrc")
    return form


def tiered_splits(root, task: str, options: dict) -> dict:
    if _form(options) == "ilsvrc":
        csv_dir, image_dir = ilsvrc_folders(root, options)
        return {s: _ilsvrc_split(csv_dir, image_dir, s) for s in SPLITS}
    d = folder(root)
    return {s: _split(d, s) for s in SPLITS}


def build_tiered(root, task: str, options: dict):
    o = check_options("tieredimagenet", options, (*COMMON_OPTIONS, "form", "image_dir"))
    if task != "fsl":
        raise UserError("tieredimagenet is an FSL benchmark; it has no FSCIL protocol")
    if _form(o) == "ilsvrc":
        res = resolution_option("tieredimagenet", o, None)  # native: the transforms resize
        return fsl_benchmark("tieredimagenet", tiered_splits(root, task, o), res, o,
                             {"root": str(root), "format": ILSVRC_LAYOUT,
                              "class_split": "ren 351/97/160 (ILSVRC-2012 JPEGs)"})
    res = resolution_option("tieredimagenet", o, NATIVE)
    return fsl_benchmark("tieredimagenet", tiered_splits(root, task, o), res, o,
                         {"root": str(root), "format": LAYOUT, "class_split": "ren 351/97/160"})


register_dataset("tieredimagenet", task="fsl", summary="tieredImageNet (Ren et al. pickles, "
                 "351/97/160 classes)", splits=tiered_splits, layout=LAYOUT,
                 resolution=NATIVE)(build_tiered)

"""CUB-200-2011 (``cub200``): the TOPIC/CEC FSCIL protocol and the Closer-Look FSL split.

Layout: ``<root>/CUB_200_2011/`` as extracted from ``CUB_200_2011.tgz`` - ``images.txt``
(``<id> <NNN.Class/file.jpg>``), ``image_class_labels.txt`` (``<id> <class 1..200>``),
``train_test_split.txt`` (``<id> <1 train | 0 test>``), ``classes.txt`` (``<class> <NNN.Class>``),
``images/``, and ``bounding_boxes.txt`` (``<id> <x> <y> <w> <h>``, read only with ``bbox_crop``).

* FSCIL: the official train/test split (5,994 / 5,794 images); classes 1-100 are the base
  session, 101-200 arrive in 10 sessions of 10-way 5-shot, in class-id order; session images
  from ``index_list/cub200/session_*.txt``.
* FSL: the "Closer Look" 100/50/50 class split over all images: train = odd class ids, val = ids
  2, 6, 10, ..., test = ids 4, 8, 12, ...

Labels are the 0-based class ids (CUB id - 1); ``class_names`` the ``NNN.Class`` folder names.
Options: ``resolution`` (default native: images keep their own size; N gives N x N, shorter side
resized then centre-cropped), ``bbox_crop`` (crop to the bounding box first; default false and
recorded in ``benchmark.info`` because it changes FSL accuracy by several points),
``use_prepared``, ``skip_corrupt``, ``split_dir``, ``split_seed``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fsbench.errors import UserError
from fsbench.registry import register_dataset

from . import fscil_splits
from .prepare import (COMMON_OPTIONS, ImageFiles, Split, check_options, fsl_benchmark,
                      list_stamp, missing_images, require_file, require_root,
                      resolution_option)

FOLDER = "CUB_200_2011"
LAYOUT = f"{FOLDER}/{{images.txt,image_class_labels.txt,train_test_split.txt,classes.txt,images/}}"
NUM_CLASSES = 200
WHAT = "CUB-200-2011 extracted from CUB_200_2011.tgz"


def read_table(path: Path, ncols: int, root: Path) -> dict:
    """``{first column (int): remaining columns}`` of a space-separated CUB index file."""
    require_file(path, root, WHAT)
    out = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for ln, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < ncols or not parts[0].isdigit():
                raise UserError(f"{path} line {ln}: expected {ncols} space-separated fields "
                                f"starting with an integer id, got {line.strip()!r}")
            rest = parts[1:ncols] if ncols > 2 else parts[1]
            if ncols == 2 and len(parts) > 2:  # a path with spaces
                rest = " ".join(parts[1:])
            out[int(parts[0])] = rest
    return out


class Index:
    """The parsed CUB index files."""

    def __init__(self, root: Path | None, bbox: bool = False):
        root = require_root("cub200", root, f"{FOLDER}/images.txt")
        d = root / FOLDER
        self.root, self.dir = root, d
        images = read_table(d / "images.txt", 2, root)
        labels = read_table(d / "image_class_labels.txt", 2, root)
        split = read_table(d / "train_test_split.txt", 2, root)
        classes = read_table(d / "classes.txt", 2, root)
        ids = sorted(images)
        for name, table in (("image_class_labels.txt", labels), ("train_test_split.txt", split)):
            if set(table) != set(images):
                raise UserError(f"{d / name} has {len(table)} entries and images.txt "
                                f"{len(images)}, with {len(set(images) ^ set(table))} ids in "
                                f"only one of them; re-extract CUB_200_2011.tgz")
        try:
            self.class_id = np.array([int(labels[i]) for i in ids], dtype=np.int64)
            self.is_train = np.array([int(split[i]) for i in ids], dtype=np.int64) == 1
        except ValueError as e:
            raise UserError(f"{d}: a class id or train flag is not an integer ({e})") from None
        cids = sorted(classes)
        if cids != list(range(1, len(cids) + 1)) or len(cids) != NUM_CLASSES:
            raise UserError(f"{d / 'classes.txt'} lists {len(cids)} classes, CUB-200-2011 has "
                            f"{NUM_CLASSES} (ids 1..{NUM_CLASSES}); the protocols need all of "
                            f"them")
        bad = sorted(set(self.class_id.tolist()) - set(cids))
        if bad:
            raise UserError(f"{d / 'image_class_labels.txt'} uses class ids {bad[:3]} that "
                            f"classes.txt does not list")
        self.class_names = [classes[c] for c in cids]
        self.paths = [images[i].replace("\\", "/") for i in ids]
        self.ids = ids
        self.boxes = None
        if bbox:
            table = read_table(d / "bounding_boxes.txt", 5, root)
            if set(table) != set(images):
                raise UserError(f"{d / 'bounding_boxes.txt'} has {len(table)} entries, "
                                f"images.txt {len(images)}")
            try:
                self.boxes = np.array([[float(v) for v in table[i]] for i in ids])
            except ValueError as e:
                raise UserError(f"{d / 'bounding_boxes.txt'}: {e}") from None

    def split(self, name: str, mask: np.ndarray, official: dict) -> Split:
        idx = np.flatnonzero(mask)
        keys = [self.paths[i] for i in idx]
        labels = self.class_id[idx] - 1
        boxes = None if self.boxes is None else self.boxes[idx]
        image_dir = self.dir / "images"

        def load(res):
            paths = [os.path.join(image_dir, k) for k in keys]
            missing_images(paths, self.root, f"{self.dir / 'images.txt'}")
            return ImageFiles(paths, labels, self.class_names, "cub200", "RGB", boxes, res)
        variant = "_bbox" if boxes is not None else ""
        sid = list_stamp("cub200", str(self.dir.resolve()), name, keys, labels,
                         None if boxes is None else boxes.round(2).tolist())
        return Split("cub200", name + variant, load, sid, keys, official)


def cub_splits(root, task: str, options: dict) -> dict:
    ix = Index(root, bool(options.get("bbox_crop", False)))
    if task == "fscil":
        return {"train": ix.split("train", ix.is_train, {"images": 5994, "classes": 200}),
                "test": ix.split("test", ~ix.is_train, {"images": 5794, "classes": 200})}
    cid = ix.class_id
    parts = {"train": cid % 2 == 1, "val": cid % 4 == 2, "test": cid % 4 == 0}
    return {s: ix.split(f"fsl_{s}", m, {"classes": {"train": 100}.get(s, 50)})
            for s, m in parts.items()}


OPTIONS = COMMON_OPTIONS + ("bbox_crop", "split_dir", "split_seed")


def build_cub(root, task: str, options: dict, *, verify_splits: bool = True):
    o = check_options("cub200", options, OPTIONS)
    res = resolution_option("cub200", o, None)
    splits = cub_splits(root, task, o)
    info = {"root": str(root), "format": LAYOUT, "bbox_crop": bool(o.get("bbox_crop", False))}
    if task == "fscil":
        return fscil_splits.fscil_benchmark("cub200", Path(root), splits, res, o, info,
                                            verify=verify_splits)
    if task == "fsl":
        return fsl_benchmark("cub200", splits, res, o, {**info, "class_split": "closer-look "
                                                        "100/50/50"})
    raise UserError(f"cub200: unknown task {task!r}")


register_dataset("cub200", task="both", summary="CUB-200-2011: TOPIC/CEC FSCIL (100 base + 10 x "
                 "10-way 5-shot) and Closer-Look FSL 100/50/50", splits=cub_splits,
                 layout=LAYOUT, resolution=None)(build_cub)

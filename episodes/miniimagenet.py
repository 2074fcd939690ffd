"""miniImageNet (``miniimagenet``) in its three on-disk forms.

The dataset folder is ``<root>/miniimagenet`` (also accepted: ``mini-imagenet``, ``mini_imagenet``,
or the data root itself). Forms (option ``form``; by default the one the task needs is found):

* ``fscil`` - the TOPIC/CEC re-split of all 100 classes, 500 train / 100 test images each:
  ``split/train.csv``, ``split/test.csv`` (``filename,label`` rows such as
  ``n0153282900000005.jpg,n01532829``) and a flat ``images/`` folder of 84x84 jpgs. FSCIL:
  60 base classes + 8 sessions of 5-way 5-shot, sorted-wnid class order (= first appearance in
  ``train.csv``), session images from ``index_list/mini_imagenet/session_*.txt``.
* ``ravi`` - the Ravi & Larochelle FSL split, 64/16/20 classes x 600 images: ``train.csv``,
  ``val.csv``, ``test.csv`` (same row format) beside the same ``images/`` folder.
* ``pickle`` - the same FSL split as the Ren et al. caches ``mini-imagenet-cache-{train,validation,
  test}.pkl`` (dicts with ``image_data`` N x 84 x 84 x 3 uint8 and ``class_dict`` {wnid: rows}).
  These are read with the restricted unpickler of :mod:`fsbench.safepickle` (arrays, lists and
  dicts only), so a crafted cache is refused and runs no code.

Labels are indices into the sorted list of the 100 miniImageNet wnids
(``miniimagenet_classes.json``) in every form, so an image has the same label whichever form it
comes from; ``class_names`` are the wnids. Options: ``form``, ``resolution`` (default 84),
``use_prepared``, ``skip_corrupt``, ``split_dir``, ``split_seed``.
"""
from __future__ import annotations

import csv
import functools
import json
import os
from pathlib import Path

import numpy as np

from fsbench.errors import UserError
from fsbench.registry import register_dataset

from . import fscil_splits
from .prepare import (COMMON_OPTIONS, ImageFiles, Split, array_source, check_options,
                      file_stamp, fsl_benchmark, list_stamp, missing_images, read_user_pickle,
                      require_root, resolution_option)

NATIVE = 84
FOLDERS = ("miniimagenet", "mini-imagenet", "mini_imagenet", ".")
FORMS = {
    "fscil": ("split/train.csv", "split/test.csv"),
    "ravi": ("train.csv", "val.csv", "test.csv"),
    "pickle": tuple(f"mini-imagenet-cache-{s}.pkl" for s in ("train", "validation", "test")),
}
LAYOUT = ("miniimagenet/{images/, split/train.csv, split/test.csv} (FSCIL), "
          "miniimagenet/{images/, train.csv, val.csv, test.csv} (Ravi FSL) or "
          "miniimagenet/mini-imagenet-cache-{train,validation,test}.pkl")
RAVI_COUNTS = {"train": (64, 38400), "val": (16, 9600), "test": (20, 12000)}


@functools.lru_cache(maxsize=1)
def wnids() -> list:
    return json.loads(Path(__file__).with_name("miniimagenet_classes.json").read_text())["wnids"]


def class_ids(names, where: str) -> np.ndarray:
    lut = {w: i for i, w in enumerate(wnids())}
    try:
        return np.array([lut[n] for n in names], dtype=np.int64)
    except KeyError as e:
        raise UserError(f"{where} names class {e.args[0]!r}, which is not one of the 100 "
                        f"miniImageNet classes; not miniImageNet?") from None


def find(root: Path | None, form: str | None, task: str) -> tuple[Path, str]:
    """``(dataset folder, form)`` for ``task``; a UserError describing the layouts otherwise."""
    root = require_root("miniimagenet", root, "miniimagenet/split/train.csv")
    forms = [form] if form else (["fscil"] if task == "fscil" else ["ravi", "pickle"])
    for f in forms:
        if f not in FORMS:
            raise UserError(f"data.options.form for miniimagenet must be one of "
                            f"{sorted(FORMS)}, got {f!r}")
        if (f == "fscil") != (task == "fscil"):
            raise UserError(f"miniimagenet form {f!r} is for "
                            f"{'FSCIL' if f == 'fscil' else 'FSL'}, not {task.upper()}; "
                            + ("FSCIL needs the TOPIC/CEC split/train.csv + split/test.csv"
                               if task == "fscil" else
                               "FSL needs the Ravi CSVs or the pickle caches"))
        for sub in FOLDERS:
            d = root if sub == "." else root / sub
            if all((d / p).is_file() for p in FORMS[f]):
                return d, f
    want = " or ".join(f"{root}/miniimagenet/{{{', '.join(FORMS[f])}}}" for f in forms)
    found = [sub for sub in FOLDERS[:-1] if (root / sub).is_dir()]
    hint = f" (found {root / found[0]}/ without them)" if found else ""
    raise UserError(f"expected {want}{hint}; layouts: {LAYOUT}")


def read_csv(path: Path) -> tuple[list, list]:
    """``(filenames, wnids)`` of a ``filename,label`` CSV."""
    files, labels = [], []
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if not header or [h.strip() for h in header[:2]] != ["filename", "label"]:
            raise UserError(f"{path}: expected the header 'filename,label', got {header}")
        for ln, row in enumerate(rows, 2):
            if not row:
                continue
            if len(row) < 2 or not row[0].strip() or not row[1].strip():
                raise UserError(f"{path} line {ln}: expected 'filename,label', got {row}")
            files.append(row[0].strip())
            labels.append(row[1].strip())
    return files, labels


def _file_split(d: Path, root: Path, csv_name: str, name: str, official: dict) -> Split:
    files, names = read_csv(d / csv_name)
    labels = class_ids(names, str(d / csv_name))
    image_dir = d / "images"

    def load(res):
        if not image_dir.is_dir():
            raise UserError(f"expected {image_dir}/ (the flat folder of miniImageNet jpgs that "
                            f"{d / csv_name} names)")
        paths = [os.path.join(image_dir, f) for f in files]
        missing_images(paths, root, str(d / csv_name))
        return ImageFiles(paths, labels, wnids(), "miniimagenet", "RGB", None, res)
    index = {Path(csv_name).name: d / csv_name} if csv_name.startswith("split/") else {}
    sid = list_stamp("mini", str(d.resolve()), name, files, labels)
    return Split("miniimagenet", name, load, sid, files, official, index)


def _pickle_split(d: Path, fname: str, name: str, official: dict) -> Split:
    path = d / fname

    def load(res):
        obj = read_user_pickle(path, "download the miniImageNet pickle caches again")
        if not isinstance(obj, dict) or "image_data" not in obj or "class_dict" not in obj:
            raise UserError(f"{path}: expected a dict with 'image_data' and 'class_dict' (the "
                            f"Ren et al. miniImageNet cache)")
        images = np.asarray(obj["image_data"])
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise UserError(f"{path}: image_data is {images.dtype} {images.shape}, expected "
                            f"uint8 (N, 84, 84, 3)")
        labels = np.full(len(images), -1, dtype=np.int64)
        for wnid, ids in zip(obj["class_dict"], class_ids(list(obj["class_dict"]), str(path))):
            rows = np.asarray(obj["class_dict"][wnid], dtype=np.int64)
            if len(rows) and (rows.min() < 0 or rows.max() >= len(images)
                              or (labels[rows] != -1).any()):
                raise UserError(f"{path}: class_dict[{wnid!r}] lists rows outside image_data or "
                                f"rows of another class")
            labels[rows] = ids
        if (labels < 0).any():
            raise UserError(f"{path}: {int((labels < 0).sum())} rows of image_data belong to no "
                            f"class in class_dict")
        return array_source(images, labels, wnids(), "miniimagenet", res)
    return Split("miniimagenet", name, load, file_stamp(path), None, official)


def mini_splits(root, task: str, options: dict) -> dict:
    d, form = find(root, options.get("form"), task)
    root = Path(root)
    if form == "fscil":
        return {"train": _file_split(d, root, "split/train.csv", "train",
                                     {"images": 50000, "classes": 100}),
                "test": _file_split(d, root, "split/test.csv", "test",
                                    {"images": 10000, "classes": 100})}
    out = {}
    for (s, (k, n)), fname in zip(RAVI_COUNTS.items(), FORMS[form]):
        official = {"images": n, "classes": k}
        out[s] = (_file_split(d, root, fname, f"ravi_{s}", official) if form == "ravi" else
                  _pickle_split(d, fname, f"pickle_{s}", official))
    return out


def check_ravi_classes(parts: dict) -> None:
    """The FSL split must have 64/16/20 disjoint classes."""
    seen: dict = {}
    for s, (k, _) in RAVI_COUNTS.items():
        classes = set(np.unique(parts[s].labels).tolist())
        if len(classes) != k:
            raise UserError(f"miniimagenet {s}: {len(classes)} classes, the Ravi split has {k} "
                            f"(64/16/20); the {s} list is incomplete or not the Ravi split")
        for other, cl in seen.items():
            if classes & cl:
                raise UserError(f"miniimagenet: the {s} and {other} splits share classes")
        seen[s] = classes


OPTIONS = COMMON_OPTIONS + ("form", "split_dir", "split_seed")


def build_mini(root, task: str, options: dict, *, verify_splits: bool = True):
    o = check_options("miniimagenet", options, OPTIONS)
    if task not in ("fsl", "fscil"):
        raise UserError(f"miniimagenet: unknown task {task!r}")
    res = resolution_option("miniimagenet", o, NATIVE)
    splits = mini_splits(root, task, o)
    form = "fscil" if task == "fscil" else splits["train"].name.split("_")[0]
    info = {"root": str(root), "format": f"miniimagenet {form} form", "form": form}
    if task == "fscil":
        return fscil_splits.fscil_benchmark("miniimagenet", Path(root), splits, res, o, info,
                                            verify=verify_splits)
    bench = fsl_benchmark("miniimagenet", splits, res, o, {**info, "class_split": "ravi"})
    check_ravi_classes({"train": bench.train, "val": bench.val, "test": bench.test})
    return bench


register_dataset("miniimagenet", task="both", summary="miniImageNet: TOPIC/CEC FSCIL (60 base + "
                 "8 x 5-way 5-shot) and Ravi FSL 64/16/20 (jpgs+CSVs or pickle caches)",
                 splits=mini_splits, layout=LAYOUT, resolution=NATIVE)(build_mini)

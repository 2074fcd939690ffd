"""CIFAR-100 from its python pickles: ``cifar100`` (FSCIL), ``cifarfs`` and ``fc100`` (FSL).

Layout: ``<root>/cifar-100-python/{train,test,meta}`` - the official ``cifar-100-python.tar.gz``
extracted (``fsbench data download cifar100`` fetches and checks it). ``train``/``test`` hold
``data`` (N x 3072 uint8, planar RGB of 32x32 images), ``fine_labels`` (0-99) and
``coarse_labels`` (0-19); ``meta`` the class names (fine ids are alphabetical).

Security note: these pickles are the dataset's standard distribution format, and users download
them from mirrors, so they are read with the restricted unpickler of :mod:`fsbench.safepickle`
(arrays, lists and dicts only): a crafted file is refused with one line and runs no code. fsbench
never unpickles submissions or downloaded results.

* ``cifar100`` (FSCIL, TOPIC/CEC): 60 base classes (fine ids 0-59, 500 training images each),
  then 8 sessions of 5-way 5-shot; classes in native fine-id order; session images from the
  official ``index_list/cifar100/session_*.txt`` (row indices into the train arrays).
* ``cifarfs`` (CIFAR-FS, Bertinetto et al.): 64/16/20 fine classes, all 600 images per class
  (train + test pickles merged); the class lists ship in ``cifar_fsl_splits.json``.
* ``fc100`` (FC100, Oreshkin et al.): 12/4/4 superclasses = 60/20/20 fine classes, by the
  pickles' ``coarse_labels``.

Labels are CIFAR fine ids everywhere; ``class_names`` are the 100 fine names.
Options: ``resolution`` (default 32), ``use_prepared`` (true), ``skip_corrupt``; cifar100 also
``split_dir``, ``split_seed``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fsbench.errors import UserError
from fsbench.registry import register_dataset

from . import fscil_splits
from .prepare import (COMMON_OPTIONS, Split, array_source, check_options, file_stamp,
                      fsl_benchmark, read_user_pickle, require_file, require_root,
                      resolution_option)

FOLDER = "cifar-100-python"
LAYOUT = f"{FOLDER}/{{train,test,meta}}"
URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
NATIVE = 32
FSL_COUNTS = {"cifarfs": {"train": (64, 38400), "val": (16, 9600), "test": (20, 12000)},
              "fc100": {"train": (60, 36000), "val": (20, 12000), "test": (20, 12000)}}


def folder(root: Path | None, dataset: str = "cifar100") -> Path:
    root = require_root(dataset, root, f"{FOLDER}/train")
    d = root / FOLDER
    for name in ("train", "test", "meta"):
        require_file(d / name, root, "CIFAR-100 python version, cifar-100-python.tar.gz extracted; "
                                     "`fsbench data download cifar100` fetches it")
    return d


def read_pickle(path: Path) -> dict:
    """Unpickle one of the dataset's own files (user's data root only; see module docstring)."""
    obj = read_user_pickle(path, "re-extract cifar-100-python.tar.gz")
    if not isinstance(obj, dict):
        raise UserError(f"{path} is not a CIFAR-100 pickle (a {type(obj).__name__}, not a dict)")
    return obj


def read_meta(d: Path) -> tuple[list, list]:
    meta = read_pickle(d / "meta")
    fine, coarse = meta.get("fine_label_names"), meta.get("coarse_label_names")
    if not fine or not coarse or len(fine) != 100 or len(coarse) != 20:
        raise UserError(f"{d / 'meta'} should list 100 fine_label_names and 20 "
                        f"coarse_label_names; re-extract cifar-100-python.tar.gz")
    return [str(n) for n in fine], [str(n) for n in coarse]


def read_split(d: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(images (N, 32, 32, 3) uint8, fine labels, coarse labels)`` of ``train`` or ``test``."""
    obj = read_pickle(d / split)
    missing = [k for k in ("data", "fine_labels", "coarse_labels") if k not in obj]
    if missing:
        raise UserError(f"{d / split} has no {missing}; not the CIFAR-100 python pickle "
                        f"(CIFAR-10 or another format?)")
    data = np.asarray(obj["data"])
    fine = np.asarray(obj["fine_labels"], dtype=np.int64)
    coarse = np.asarray(obj["coarse_labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * NATIVE * NATIVE:
        raise UserError(f"{d / split}: 'data' is {data.dtype} {data.shape}, expected uint8 "
                        f"(N, 3072)")
    if not len(fine) == len(coarse) == len(data):
        raise UserError(f"{d / split}: {len(data)} images but {len(fine)} fine and "
                        f"{len(coarse)} coarse labels")
    if len(fine) and (fine.min() < 0 or fine.max() > 99 or coarse.min() < 0 or coarse.max() > 19):
        raise UserError(f"{d / split}: labels outside 0-99 (fine) / 0-19 (coarse)")
    images = np.ascontiguousarray(data.reshape(-1, 3, NATIVE, NATIVE).transpose(0, 2, 3, 1))
    return images, fine, coarse


class _Pickles:
    """Reads each pickle at most once for all the splits built from it."""

    def __init__(self, d: Path):
        self.d = d
        self._cache: dict = {}

    def split(self, name: str):
        if name not in self._cache:
            self._cache[name] = read_split(self.d, name)
        return self._cache[name]

    def merged(self):
        """Train and test arrays concatenated (the FSL splits use all 600 images per class)."""
        if "merged" not in self._cache:
            tr, te = self.split("train"), self.split("test")
            self._cache["merged"] = tuple(np.concatenate([a, b]) for a, b in zip(tr, te))
            del self._cache["train"], self._cache["test"]  # one copy in memory, not two
        return self._cache["merged"]

    def names(self):
        if "meta" not in self._cache:
            self._cache["meta"] = read_meta(self.d)
        return self._cache["meta"]


def cifar100_splits(root, task: str, options: dict) -> dict:
    d = folder(root)
    src = _Pickles(d)

    def load(split):
        return lambda res: array_source(*src.split(split)[:2], src.names()[0], "cifar100", res)
    official = {"train": {"images": 50000, "classes": 100}, "test": {"images": 10000,
                                                                     "classes": 100}}
    return {s: Split("cifar100", s, load(s), file_stamp(d / s, d / "meta"),
                     official=official[s]) for s in ("train", "test")}


def fsl_class_split(dataset: str, fine_names, coarse_names, fine, coarse) -> dict:
    """``{split: sorted fine ids}`` of cifarfs (by fine name) or fc100 (by superclass, using the
    images' ``fine``/``coarse`` labels)."""
    spec = json.loads(Path(__file__).with_name("cifar_fsl_splits.json").read_text())[dataset]
    out = {}
    for split, names in spec.items():
        known = fine_names if dataset == "cifarfs" else coarse_names
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise UserError(f"the CIFAR-100 meta file has no class {unknown[0]!r}; not CIFAR-100?")
        ids = [known.index(n) for n in names]
        out[split] = sorted(ids if dataset == "cifarfs" else
                            set(fine[np.isin(coarse, ids)].tolist()))
    for split, (k, _) in FSL_COUNTS[dataset].items():
        if len(out[split]) != k:
            raise UserError(f"{dataset} {split}: {len(out[split])} fine classes, the split has "
                            f"{k}; coarse_labels in the pickles do not match CIFAR-100")
    return out


def fsl_splits(dataset: str):
    """The ``splits`` function of cifarfs / fc100: train + test pickles merged, by class."""
    def splits(root, task: str, options: dict) -> dict:
        d = folder(root, dataset)
        src = _Pickles(d)

        def load(split):
            def f(res):
                x, fine, coarse = src.merged()
                classes = fsl_class_split(dataset, *src.names(), fine, coarse)[split]
                keep = np.isin(fine, classes)
                return array_source(x[keep], fine[keep], src.names()[0], dataset, res)
            return f
        stamp = file_stamp(d / "train", d / "test", d / "meta")
        return {s: Split(dataset, s, load(s), stamp, official={"images": n, "classes": k})
                for s, (k, n) in FSL_COUNTS[dataset].items()}
    return splits


FSCIL_OPTIONS = COMMON_OPTIONS + ("split_dir", "split_seed")


def build_cifar100(root, task: str, options: dict, *, verify_splits: bool = True):
    o = check_options("cifar100", options, FSCIL_OPTIONS)
    if task != "fscil":
        raise UserError("cifar100 is the FSCIL benchmark; for few-shot learning on CIFAR-100 use "
                        "--dataset cifarfs (CIFAR-FS) or fc100 (FC100)")
    res = resolution_option("cifar100", o, NATIVE)
    splits = cifar100_splits(root, task, o)
    return fscil_splits.fscil_benchmark("cifar100", Path(root), splits, res, o,
                                        {"root": str(root), "format": LAYOUT},
                                        verify=verify_splits)


def _fsl_builder(dataset: str):
    def build(root, task: str, options: dict):
        o = check_options(dataset, options, COMMON_OPTIONS)
        if task != "fsl":
            raise UserError(f"{dataset} is an FSL benchmark (no FSCIL protocol); for FSCIL on "
                            f"CIFAR-100 use --dataset cifar100")
        res = resolution_option(dataset, o, NATIVE)
        return fsl_benchmark(dataset, fsl_splits(dataset)(root, task, o), res, o,
                             {"root": str(root), "format": LAYOUT,
                              "class_split": "cifar-fs" if dataset == "cifarfs" else "fc100"})
    return build


register_dataset("cifar100", task="fscil", summary="CIFAR-100, TOPIC/CEC FSCIL protocol "
                 "(60 base + 8 x 5-way 5-shot)", splits=cifar100_splits, layout=LAYOUT,
                 resolution=NATIVE)(build_cifar100)
build_cifarfs = register_dataset(
    "cifarfs", task="fsl", summary="CIFAR-FS (64/16/20 CIFAR-100 classes)",
    splits=fsl_splits("cifarfs"), layout=LAYOUT, resolution=NATIVE)(_fsl_builder("cifarfs"))
build_fc100 = register_dataset(
    "fc100", task="fsl", summary="FC100 (12/4/4 CIFAR-100 superclasses)",
    splits=fsl_splits("fc100"), layout=LAYOUT, resolution=NATIVE)(_fsl_builder("fc100"))

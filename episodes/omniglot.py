"""Omniglot (``omniglot``, FSL) with the Vinyals et al. class split and 90-degree rotations.

Layout: ``<root>/omniglot/`` (also ``omniglot-py``, torchvision's folder, or the data root itself)
holding ``images_background/`` (30 alphabets, 964 characters) and ``images_evaluation/``
(20 alphabets, 659 characters), each ``<alphabet>/characterNN/<id>_<drawer>.png`` (105x105).

Split (``omniglot_vinyals.json``, as torchmeta's ``use_vinyals_split``): val = 5 background
alphabets (172 characters), test = 13 evaluation alphabets minus Gurmukhi characters 1-41
(423 characters), train = every other character (1,028). With ``rotations`` (default true) each
character rotated by 0/90/180/270 degrees is its own class (4 x the classes in every split), the
standard Omniglot augmentation.

Characters are numbered in the order background then evaluation, alphabets and characters sorted;
a character's label is that number (``x 4 + rotation`` with rotations). Images are grayscale
``(H, W, 1)``. Options: ``resolution`` (default 28, the size the literature uses; ``native`` =
105), ``rotations``, ``use_prepared``, ``skip_corrupt``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from fsbench.errors import UserError
from fsbench.registry import register_dataset

from .prepare import (COMMON_OPTIONS, ImageFiles, Rotated, Split, check_options,
                      fsl_benchmark, list_stamp, missing_file, require_root, resolution_option)

FOLDERS = ("omniglot", "omniglot-py", ".")
SETS = ("images_background", "images_evaluation")
LAYOUT = "omniglot/{images_background,images_evaluation}/<alphabet>/characterNN/*.png"
DEFAULT_RESOLUTION = 28


def folder(root: Path | None) -> Path:
    root = require_root("omniglot", root, "omniglot/images_background/")
    for sub in FOLDERS:
        d = root if sub == "." else root / sub
        if all((d / s).is_dir() for s in SETS):
            return d
    raise missing_file(root / "omniglot" / SETS[0], root, "Omniglot images_background.zip and "
                       f"images_evaluation.zip extracted; layout {LAYOUT}")


def characters(d: Path) -> list[tuple[str, list[str]]]:
    """``[("images_background/<alphabet>/<character>", [png names]), ...]`` in label order."""
    out = []
    for s in SETS:
        for alpha in sorted(p.name for p in os.scandir(d / s) if p.is_dir()):
            for ch in sorted(p.name for p in os.scandir(d / s / alpha) if p.is_dir()):
                pngs = sorted(e.name for e in os.scandir(d / s / alpha / ch)
                              if e.name.lower().endswith(".png"))
                out.append((f"{s}/{alpha}/{ch}", pngs))
    return out


def vinyals_split(chars: list, d: Path) -> dict:
    """``{split: character indices}`` of the Vinyals split; UserError on wrong counts."""
    spec = json.loads(Path(__file__).with_name("omniglot_vinyals.json").read_text())
    names = [c for c, _ in chars]
    which = np.zeros(len(names), dtype=np.int64)  # 0 train, 1 val, 2 test
    for code, part in ((1, "val"), (2, "test")):
        for prefix in spec[part]:
            hit = [i for i, n in enumerate(names) if n == prefix or n.startswith(prefix + "/")]
            if not hit:
                raise UserError(f"{d / prefix} is missing; the Vinyals split needs the complete "
                                f"Omniglot ({LAYOUT})")
            which[hit] = code
    out = {s: np.flatnonzero(which == code) for code, s in enumerate(("train", "val", "test"))}
    got = {s: len(v) for s, v in out.items()}
    if got != spec["counts"]:
        raise UserError(f"omniglot at {d}: {got['train']}/{got['val']}/{got['test']} characters "
                        f"in train/val/test, the Vinyals split has {spec['counts']['train']}/"
                        f"{spec['counts']['val']}/{spec['counts']['test']} (1,623 in all); "
                        f"re-extract images_background.zip and images_evaluation.zip")
    return out


def omniglot_splits(root, task: str, options: dict) -> dict:
    d = folder(root)
    chars = characters(d)
    class_names = [c for c, _ in chars]
    parts = vinyals_split(chars, d)
    empty = [c for c, p in chars if not p]
    if empty:
        raise UserError(f"{d / empty[0]} has no .png images ({len(empty)} empty character "
                        f"folders); re-extract the Omniglot archives")

    def make(s):
        keys = [f"{chars[c][0]}/{p}" for c in parts[s] for p in chars[c][1]]
        labels = np.concatenate([np.full(len(chars[c][1]), c) for c in parts[s]])

        def load(res):
            return ImageFiles([os.path.join(d, k) for k in keys], labels, class_names,
                              "omniglot", "L", None, res)
        sid = list_stamp("omniglot", str(d.resolve()), s, keys, labels)
        return Split("omniglot", s, load, sid, keys,
                     {"classes": len(parts[s]), "images": 20 * len(parts[s])})
    return {s: make(s) for s in ("train", "val", "test")}


OPTIONS = COMMON_OPTIONS + ("rotations",)


def build_omniglot(root, task: str, options: dict):
    o = check_options("omniglot", options, OPTIONS)
    if task != "fsl":
        raise UserError("omniglot is an FSL benchmark; it has no FSCIL protocol")
    res = resolution_option("omniglot", o, DEFAULT_RESOLUTION)
    rotations = o.get("rotations") is not False
    bench = fsl_benchmark("omniglot", omniglot_splits(root, task, o), res, o,
                          {"root": str(root), "format": LAYOUT, "class_split": "vinyals",
                           "rotations": [0, 90, 180, 270] if rotations else [0]})
    if rotations:
        bench.train, bench.val, bench.test = (Rotated(x) for x in
                                              (bench.train, bench.val, bench.test))
    return bench


register_dataset("omniglot", task="fsl", summary="Omniglot, Vinyals split 1028/172/423 characters "
                 "x 4 rotations", splits=omniglot_splits, layout=LAYOUT,
                 resolution=DEFAULT_RESOLUTION)(build_omniglot)

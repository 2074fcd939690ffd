"""Miniature dataset trees in the exact on-disk formats of the standard datasets (for tests).

Each writer fabricates the real layout with the real class counts but a few tiny images per
class, so a test runs in well under a second. Images carry their identity in their pixels where
a test needs to check order (CIFAR: pixel (0, 0) = fine label, (0, 1) = row in class).
"""
from __future__ import annotations

import csv
import io
import json
import os
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

EPISODES = Path(__file__).resolve().parents[1] / "episodes"

#: CIFAR-100 superclasses (coarse name -> fine names), for fabricating consistent pickles.
CIFAR_SUPER = {
    "aquatic_mammals": "beaver dolphin otter seal whale",
    "fish": "aquarium_fish flatfish ray shark trout",
    "flowers": "orchid poppy rose sunflower tulip",
    "food_containers": "bottle bowl can cup plate",
    "fruit_and_vegetables": "apple mushroom orange pear sweet_pepper",
    "household_electrical_devices": "clock keyboard lamp telephone television",
    "household_furniture": "bed chair couch table wardrobe",
    "insects": "bee beetle butterfly caterpillar cockroach",
    "large_carnivores": "bear leopard lion tiger wolf",
    "large_man-made_outdoor_things": "bridge castle house road skyscraper",
    "large_natural_outdoor_scenes": "cloud forest mountain plain sea",
    "large_omnivores_and_herbivores": "camel cattle chimpanzee elephant kangaroo",
    "medium_mammals": "fox porcupine possum raccoon skunk",
    "non-insect_invertebrates": "crab lobster snail spider worm",
    "people": "baby boy girl man woman",
    "reptiles": "crocodile dinosaur lizard snake turtle",
    "small_mammals": "hamster mouse rabbit shrew squirrel",
    "trees": "maple_tree oak_tree palm_tree pine_tree willow_tree",
    "vehicles_1": "bicycle bus motorcycle pickup_truck train",
    "vehicles_2": "lawn_mower rocket streetcar tank tractor",
}
FINE = sorted(f for v in CIFAR_SUPER.values() for f in v.split())
COARSE = sorted(CIFAR_SUPER)


def mini_wnids() -> list:
    return json.loads((EPISODES / "miniimagenet_classes.json").read_text())["wnids"]


def jpeg_bytes(size=(8, 6), color=(120, 60, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


# ---------------------------------------------------------------------------------- CIFAR-100
def cifar100(root: Path, train_per_class: int = 6, test_per_class: int = 2, seed: int = 0):
    """``<root>/cifar-100-python/{train,test,meta}``; rows shuffled like the real pickles.
    Returns ``{"train": (images HWC, fine, coarse), "test": ...}``."""
    d = Path(root) / "cifar-100-python"
    d.mkdir(parents=True, exist_ok=True)
    coarse_of = {f: COARSE.index(c) for c, v in CIFAR_SUPER.items() for f in v.split()}
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        fine = np.repeat(np.arange(100), n)
        within = np.tile(np.arange(n), 100)
        order = rng.permutation(len(fine))
        fine, within = fine[order], within[order]
        coarse = np.array([coarse_of[FINE[f]] for f in fine])
        x = rng.integers(0, 256, (len(fine), 32, 32, 3), dtype=np.uint8)
        x[:, 0, 0, 0], x[:, 0, 1, 0] = fine, within
        obj = {"data": x.transpose(0, 3, 1, 2).reshape(len(x), -1), "fine_labels": fine.tolist(),
               "coarse_labels": coarse.tolist(), "filenames": [f"{i}.png" for i in range(len(x))],
               "batch_label": f"{split} batch"}
        (d / split).write_bytes(pickle.dumps(obj, protocol=2))
        out[split] = (x, fine, coarse)
    (d / "meta").write_bytes(pickle.dumps({"fine_label_names": FINE,
                                           "coarse_label_names": COARSE}, protocol=2))
    return out


def cifar_split_files(split_dir: Path, fine_train: np.ndarray, base: int = 60, way: int = 5,
                      shot: int = 5, sessions: int = 9) -> list:
    """index_list/cifar100/session_*.txt for fabricated train labels; returns the row lists."""
    d = Path(split_dir) / "cifar100"
    rows = [np.flatnonzero(fine_train < base)]
    for t in range(1, sessions):
        cls = range(base + (t - 1) * way, base + t * way)
        rows.append(np.concatenate([np.flatnonzero(fine_train == c)[:shot] for c in cls]))
    for t, r in enumerate(rows, 1):
        _write(d / f"session_{t}.txt", "".join(f"{i}\n" for i in r).encode())
    return rows


# ---------------------------------------------------------------------------------- CUB
def cub200(root: Path, train_per_class: int = 5, test_per_class: int = 1, classes: int = 200,
           train_paths: dict | None = None):
    """``<root>/CUB_200_2011/`` with the five index files and tiny jpgs (class-major ids like
    the real file). ``train_paths`` ({class id: [relative paths]}) fixes the training images'
    names (to match real split files). Returns ``{"paths", "class_id", "is_train"}``."""
    d = Path(root) / "CUB_200_2011"
    paths, cids, train = [], [], []
    for c in range(1, classes + 1):
        folder = f"{c:03d}.Bird_{c}"
        tr = (train_paths or {}).get(c) or [f"{folder}/Bird_{c}_{k:04d}_{c * 100 + k}.jpg"
                                             for k in range(train_per_class)]
        te = [f"{folder}/Bird_{c}_{k:04d}_{c * 100 + k}.jpg"
              for k in range(500, 500 + test_per_class)]
        for p, is_tr in [(p, 1) for p in tr] + [(p, 0) for p in te]:
            paths.append(p)
            cids.append(c)
            train.append(is_tr)
    blob = jpeg_bytes((10, 7))
    for p in paths:
        _write(d / "images" / p, blob)
    n = len(paths)
    (d / "images.txt").write_text("".join(f"{i + 1} {p}\n" for i, p in enumerate(paths)))
    (d / "image_class_labels.txt").write_text("".join(f"{i + 1} {c}\n"
                                                      for i, c in enumerate(cids)))
    (d / "train_test_split.txt").write_text("".join(f"{i + 1} {t}\n" for i, t in enumerate(train)))
    (d / "classes.txt").write_text("".join(f"{c} {c:03d}.Bird_{c}\n"
                                           for c in range(1, classes + 1)))
    (d / "bounding_boxes.txt").write_text("".join(f"{i + 1} 1.0 2.0 5.0 4.0\n" for i in range(n)))
    return {"paths": paths, "class_id": np.array(cids), "is_train": np.array(train) == 1}


def cub_split_files(split_dir: Path, info: dict, shot: int = 5) -> list:
    """index_list/cub200/session_*.txt in the official format for a fabricated tree."""
    d = Path(split_dir) / "cub200"
    tr = [(p, c) for p, c, t in zip(info["paths"], info["class_id"], info["is_train"]) if t]
    sessions = [[p for p, c in tr if c <= 100]]
    for t in range(10):
        cls = range(101 + 10 * t, 111 + 10 * t)
        sessions.append([p for c0 in cls for p in [p for p, c in tr if c == c0][:shot]])
    for t, s in enumerate(sessions, 1):
        _write(d / f"session_{t}.txt",
               "".join(f"CUB_200_2011/images/{p}\n" for p in s).encode())
    return sessions


# ---------------------------------------------------------------------------------- miniImageNet
def _mini_name(wnid: str, k: int) -> str:
    return f"{wnid}{k:08d}.jpg"


def mini_fscil(root: Path, train_per_class: int = 5, test_per_class: int = 1):
    """``<root>/miniimagenet/{images/, split/train.csv, split/test.csv}``."""
    d = Path(root) / "miniimagenet"
    blob = jpeg_bytes((84, 84))
    rows = {}
    for split, lo, n in (("train", 1, train_per_class),
                         ("test", 501, test_per_class)):
        rows[split] = [(_mini_name(w, lo + k), w) for w in mini_wnids() for k in range(n)]
        for f, _ in rows[split]:
            _write(d / "images" / f, blob)
        _csv(d / "split" / f"{split}.csv", rows[split])
    return rows


def mini_split_files(split_dir: Path, train_rows: list, shot: int = 5) -> list:
    d = Path(split_dir) / "mini_imagenet"
    w = mini_wnids()
    sessions = [[r for r in train_rows if r[1] in w[:60]]]
    for t in range(8):
        cls = w[60 + 5 * t: 65 + 5 * t]
        sessions.append([r for c in cls for r in [r for r in train_rows if r[1] == c][:shot]])
    for t, s in enumerate(sessions, 1):
        _write(d / f"session_{t}.txt",
               "".join(f"MINI-ImageNet/train/{wn}/{f}\n" for f, wn in s).encode())
    return sessions


def ravi_classes() -> dict:
    """A fabricated 64/16/20 assignment of the 100 wnids (every 5th to test, ...)."""
    w = mini_wnids()
    test = w[4::5]
    val = [x for x in w if x not in test][3::5][:16]
    train = [x for x in w if x not in test and x not in val]
    return {"train": train, "val": val, "test": test}


def mini_ravi(root: Path, per_class: int = 3):
    """``<root>/miniimagenet/{images/, train.csv, val.csv, test.csv}`` (64/16/20 classes)."""
    d = Path(root) / "miniimagenet"
    blob = jpeg_bytes((84, 84), (10, 200, 90))
    out = {}
    for split, classes in ravi_classes().items():
        rows = [(_mini_name(w, 1000 + k), w) for w in classes for k in range(per_class)]
        for f, _ in rows:
            _write(d / "images" / f, blob)
        _csv(d / f"{split}.csv", rows)
        out[split] = rows
    return out


def mini_pickle(root: Path, per_class: int = 2, size: int = 84, seed: int = 0):
    """``<root>/miniimagenet/mini-imagenet-cache-{train,validation,test}.pkl``."""
    d = Path(root) / "miniimagenet"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for split, fname in (("train", "train"), ("val", "validation"), ("test", "test")):
        classes = ravi_classes()[split]
        order = rng.permutation(len(classes) * per_class)
        x = rng.integers(0, 256, (len(order), size, size, 3), dtype=np.uint8)
        class_dict = {w: sorted(np.flatnonzero(order // per_class == i).tolist())
                      for i, w in enumerate(classes)}
        (d / f"mini-imagenet-cache-{fname}.pkl").write_bytes(
            pickle.dumps({"image_data": x, "class_dict": class_dict}, protocol=4))
        out[split] = (x, class_dict)
    return out


def _csv(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["filename", "label"])
        w.writerows(rows)


# ---------------------------------------------------------------------------------- tiered
def tiered(root: Path, per_class: int = 1, counts=(351, 97, 160), size: int = 6, seed: int = 0):
    """``<root>/tiered-imagenet/{split}_images_png.pkl`` (numpy arrays of PNG bytes, as in the
    real files) and ``{split}_labels.pkl``."""
    d = Path(root) / "tiered-imagenet"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for split, k in zip(("train", "val", "test"), counts):
        labels = np.repeat(np.arange(k), per_class)
        x = rng.integers(0, 256, (len(labels), size, size, 3), dtype=np.uint8)
        blobs = [np.frombuffer(png_bytes(im), dtype=np.uint8) for im in x]
        (d / f"{split}_images_png.pkl").write_bytes(pickle.dumps(blobs, protocol=4))
        (d / f"{split}_labels.pkl").write_bytes(pickle.dumps(
            {"label_specific": labels, "label_general": labels // 10,
             "label_specific_str": [f"n{split}{i:05d}" for i in range(k)]}, protocol=4))
        out[split] = (x, labels)
    return out


def tiered_ilsvrc(root: Path, per_class: int = 1, counts=(351, 97, 160),
                   image_dir: str = "ILSVRC2012/train") -> dict:
    """BECLR's layout: ``<root>/tiered-imagenet/{split}.csv`` (``filename,label``; the train file
    names carry a Windows folder prefix, as some copies do) and ILSVRC-style
    ``<root>/<image_dir>/<wnid>/<wnid>_<k>.JPEG`` files whose pixel size encodes the class
    (``8 + class % 5`` wide). Classes are listed in reverse wnid order, so first-appearance ids
    differ from sorted ids."""
    d = Path(root) / "tiered-imagenet"
    out = {}
    for split, k in zip(("train", "val", "test"), counts):
        wnids = [f"n{split[:2]}{i:06d}" for i in range(k)][::-1]
        rows = []
        for c, w in enumerate(wnids):
            for j in range(per_class):
                name = f"{w}_{j}.JPEG"
                _write(Path(root) / image_dir / w / name, jpeg_bytes((8 + c % 5, 6)))
                rows.append((f"{split}\\{name}" if split == "train" else name, w))
        _csv(d / f"{split}.csv", rows)
        out[split] = wnids
    return out


# ---------------------------------------------------------------------------------- Omniglot
def omniglot_alphabets() -> dict:
    """``{set: {alphabet: number of characters}}`` with the real Vinyals val/test alphabets and
    counts (made-up names for the train-only alphabets): 964 + 659 = 1,623 characters."""
    val = {"Armenian": 41, "Bengali": 46, "Early_Aramaic": 22, "Hebrew": 22,
           "Mkhedruli_(Georgian)": 41}
    background = {**{f"Background_{i:02d}": 32 for i in range(24)}, "Background_24": 24, **val}
    evaluation = {"Angelic": 20, "Atemayar_Qelisayer": 26, "Atlantean": 26, "Aurek-Besh": 26,
                  "Avesta": 26, "Ge_ez": 26, "Glagolitic": 45, "Gurmukhi": 45, "Kannada": 41,
                  "Keble": 26, "Malayalam": 47, "Manipuri": 40, "Mongolian": 30,
                  "Old_Church_Slavonic_(Cyrillic)": 45, "Oriya": 46, "Sylheti": 28,
                  "Syriac_(Serto)": 23, "Tengwar": 25, "Tibetan": 42, "ULOG": 26}
    return {"images_background": background, "images_evaluation": evaluation}


def omniglot(root: Path, drawers: int = 2, size: int = 10):
    """``<root>/omniglot/{images_background,images_evaluation}/<alphabet>/characterNN/*.png``
    (1-bit PNGs like the real ones). Returns the character names in label order."""
    d = Path(root) / "omniglot"
    names = []
    n = 0
    for s, alphabets in omniglot_alphabets().items():
        for alpha in sorted(alphabets):
            for c in range(1, alphabets[alpha] + 1):
                n += 1
                ch = d / s / alpha / f"character{c:02d}"
                ch.mkdir(parents=True)
                names.append(f"{s}/{alpha}/character{c:02d}")
                for k in range(1, drawers + 1):
                    im = np.zeros((size, size), dtype=bool)
                    im[: 1 + n % (size - 1), 0] = True  # an asymmetric mark (rotations differ)
                    im[0, : 1 + k] = True
                    buf = io.BytesIO()
                    Image.fromarray(im).save(buf, "PNG")
                    (ch / f"{n:04d}_{k:02d}.png").write_bytes(buf.getvalue())
    return names


# ---------------------------------------------------------------------------------- tree helpers
def snapshot(root: Path) -> dict:
    """``{relative path: (size, mtime_ns)}`` of everything under ``root`` (files and folders)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size if p.is_file() else 0, st.st_mtime_ns)
    st = Path(root).stat()
    out["."] = (0, st.st_mtime_ns)
    return out


def make_readonly(root: Path) -> None:
    """Remove write permission from the whole tree (a second guard besides :func:`snapshot`;
    it does not stop root)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            os.chmod(Path(dirpath) / name, 0o444)
        os.chmod(dirpath, 0o555)


def make_writable(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            os.chmod(Path(dirpath) / name, 0o644)

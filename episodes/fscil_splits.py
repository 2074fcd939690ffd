"""The official FSCIL split files (TOPIC/CEC ``data/index_list``): locate, verify, map to indices.

``split_dir`` is the ``index_list`` folder of the CEC repository (``cifar100/``, ``cub200/``,
``mini_imagenet/``, each with ``session_1.txt`` ... ``session_9.txt`` or ``session_11.txt``); a
dataset folder itself (``index_list/cub200``) works too, and ``<data root>/index_list`` is used
when no split folder is given (CEC's ``data/`` layout). Every file is checked against the SHA-256
table in ``fscil_checksums.json`` (the package ships the checksums, never the files).

Line formats (one entry per line):

* ``cifar100``: an integer row index into the CIFAR-100 **train** pickle arrays;
* ``cub200``: ``CUB_200_2011/images/<NNN.Class>/<file>.jpg`` (a path below the data root);
* ``mini_imagenet``: ``MINI-ImageNet/train/<wnid>/<file>.jpg``; only the file name is used, it
  names an image of ``miniimagenet/split/train.csv``.

``session_1.txt`` lists the base session's images, ``session_{t+1}.txt`` the ``way x shot``
images of incremental session ``t``. Test sets are not read from files: the protocol takes every
test image of every class seen so far (the CEC rule).

``split_id`` = SHA-256 over the verified files' checksums: two runs share it exactly when they
used byte-identical split files. Without split files a seeded split is generated and
``split_id`` is ``"generated"``.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fsbench.errors import UserError

from .protocol import PRESETS, SessionProtocol

log = logging.getLogger("fsbench.episodes")
#: fsbench dataset name -> folder in index_list
FOLDERS = {"cifar100": "cifar100", "cub200": "cub200", "miniimagenet": "mini_imagenet"}
OFFICIAL = "use the official index_list from the CEC repository (data/index_list/)"


@functools.lru_cache(maxsize=1)
def checksums() -> dict:
    """``{folder: {file name: {"sha256", "lines"}}}`` of the official files."""
    path = Path(__file__).with_name("fscil_checksums.json")
    return json.loads(path.read_text())["files"]


def num_sessions(dataset: str) -> int:
    return PRESETS[dataset]["num_sessions"]


def session_file(t: int) -> str:
    """File name of (1-based) session ``t``."""
    return f"session_{t}.txt"


def describe(folder: str, name: str) -> str:
    """What an official file is, e.g. 'the official TOPIC/CEC cub200 session 3 list'."""
    stem = name.rsplit(".", 1)[0]
    what = f"session {stem.split('_')[1]} list" if stem.startswith("session_") else f"{name}"
    return f"the official TOPIC/CEC {folder} {what}"


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    return file_digest(path, "sha256")


def default_split_dir(root: Path | None, dataset: str) -> Path | None:
    """``<root>/index_list`` when it holds this dataset's folder (CEC's ``data/`` layout)."""
    if root is not None and (Path(root) / "index_list" / FOLDERS[dataset]).is_dir():
        return Path(root) / "index_list"
    return None


def locate(split_dir, dataset: str) -> Path:
    """The folder holding ``dataset``'s session files below ``split_dir``."""
    folder = FOLDERS[dataset]
    d = Path(split_dir).expanduser()
    for cand in (d / folder, d / "index_list" / folder, d):
        if (cand / session_file(1)).is_file() or (cand.name == folder and cand.is_dir()):
            return cand
    if not d.is_dir():
        raise UserError(f"split folder {d} does not exist; expected {d}/{folder}/session_1.txt "
                        f"... (the index_list folder of the CEC repository, data/index_list/)")
    raise UserError(f"split folder {d} has no {folder}/ folder; expected {d}/{folder}/"
                    f"session_1.txt ... {session_file(num_sessions(dataset))} ({OFFICIAL})")


@dataclass
class FileCheck:
    path: Path
    name: str
    sha256: str | None  # None when missing
    expected: str

    @property
    def ok(self) -> bool:
        return self.sha256 == self.expected

    def message(self, folder: str) -> str:
        if self.sha256 is None:
            return f"{self.path} is missing; expected {describe(folder, self.name)}; {OFFICIAL}"
        return (f"{self.path} has sha256 {self.sha256[:16]}..., expected "
                f"{self.expected[:16]}... ({describe(folder, self.name)}); {OFFICIAL}")


def check_folder(split_dir, dataset: str, names=None) -> list[FileCheck]:
    """Checksum of each session file (or each of ``names``) against the official table."""
    folder = FOLDERS[dataset]
    d = locate(split_dir, dataset)
    table = checksums()[folder]
    names = names or [session_file(t) for t in range(1, num_sessions(dataset) + 1)]
    return [FileCheck(d / n, n, sha256_file(d / n) if (d / n).is_file() else None,
                      table[n]["sha256"]) for n in names]


@dataclass
class SplitFiles:
    """The session files of one dataset, read (and verified unless told otherwise)."""

    dataset: str
    folder: Path
    sessions: list  # list of list[str]: entries of session_1.txt, session_2.txt, ...
    sha256: list  # one per file
    verified: bool

    @property
    def split_id(self) -> str:
        h = hashlib.sha256()
        for t, sha in enumerate(self.sha256, 1):
            h.update(f"{FOLDERS[self.dataset]}/{session_file(t)} {sha}\n".encode())
        return h.hexdigest()


def read(split_dir, dataset: str, *, verify: bool = True) -> SplitFiles:
    """Read ``dataset``'s session files; with ``verify`` (always, outside tests) a file whose
    SHA-256 differs from the official one is a UserError naming the file and both checksums."""
    folder = FOLDERS[dataset]
    checks = check_folder(split_dir, dataset)
    for c in checks:
        if c.sha256 is None or (verify and not c.ok):
            raise UserError(c.message(folder))
    sessions = []
    for c in checks:
        text = c.path.read_bytes().decode("utf-8", errors="replace")
        sessions.append([ln.strip() for ln in text.splitlines() if ln.strip()])
    return SplitFiles(dataset, checks[0].path.parent, sessions, [c.sha256 for c in checks],
                      verify)


def entry_key(dataset: str, line: str):
    """The training-image identity an entry names: CIFAR row (int), CUB path below ``images/``,
    miniImageNet file name."""
    if dataset == "cifar100":
        return int(line)
    if dataset == "cub200":
        marker = "CUB_200_2011/images/"
        return line.split(marker, 1)[1] if marker in line else line.split("images/", 1)[-1]
    return line.replace("\\", "/").rsplit("/", 1)[-1]


def entry_class(dataset: str, line: str):
    """The class an entry names from its path alone: CUB 1-based class id, mini wnid."""
    parts = line.replace("\\", "/").split("/")
    if dataset == "cub200":
        return int(parts[-2].split(".", 1)[0])
    if dataset == "miniimagenet":
        return parts[-2]
    raise ValueError("cifar100 entries are row indices; their class comes from the pickle")


def session_indices(files: SplitFiles, train_keys) -> list:
    """Per session, the indices of its entries in the training set. ``train_keys``: the number
    of training rows (CIFAR) or the per-image keys of the training split (CUB, mini)."""
    folder = files.folder
    out = []
    if files.dataset == "cifar100":
        n = int(train_keys)
        for t, lines in enumerate(files.sessions, 1):
            try:
                idx = np.array([int(x) for x in lines], dtype=np.int64)
            except ValueError as e:
                raise UserError(f"{folder / session_file(t)}: {e}; CIFAR-100 split files list "
                                f"integer row indices ({OFFICIAL})") from None
            if len(idx) and (idx.min() < 0 or idx.max() >= n):
                raise UserError(f"{folder / session_file(t)} lists row {int(idx.max())}, but the "
                                f"CIFAR-100 train set has {n} rows")
            out.append(idx)
        return out
    lut = {k: i for i, k in enumerate(train_keys)}
    for t, lines in enumerate(files.sessions, 1):
        idx = []
        for ln, line in enumerate(lines, 1):
            i = lut.get(entry_key(files.dataset, line))
            if i is None:
                raise UserError(f"{folder / session_file(t)} line {ln}: {line} is not an image of "
                                f"the {files.dataset} training split on disk (missing, skipped as "
                                f"corrupt, or the data and split files do not belong together)")
            idx.append(i)
        out.append(np.array(idx, dtype=np.int64))
    return out


def build_protocol(dataset: str, train_labels, train_keys, *, split_dir=None,
                   verify: bool = True, seed: int = 0) -> tuple[SessionProtocol, dict]:
    """The FSCIL protocol of ``dataset`` in native class order: from the official split files
    when ``split_dir`` is given, else a seeded generated split (with one warning line)."""
    train_labels = np.asarray(train_labels, dtype=np.int64)
    need = PRESETS[dataset]["num_base"] + (PRESETS[dataset]["num_sessions"] - 1) * \
        PRESETS[dataset]["way"]
    classes = np.unique(train_labels)
    if len(classes) != need:
        raise UserError(f"{dataset}: the training split has {len(classes)} classes, the FSCIL "
                        f"protocol needs {need}; the dataset on disk is incomplete or not "
                        f"{dataset}")
    if split_dir is None:
        log.warning(f"{dataset}: no split files (--split-dir / data.options.split_dir), so the "
                    f"FSCIL sessions use a seeded generated split (split_id 'generated'), not the "
                    f"official TOPIC/CEC index_list; numbers are not comparable with papers")
        proto = SessionProtocol.from_preset(dataset, train_labels, seed=seed, class_order=classes)
        return proto, {"split": "generated", "split_id": proto.split_id, "split_seed": seed}
    files = read(split_dir, dataset, verify=verify)
    sessions = session_indices(files, train_keys)
    proto = SessionProtocol.from_preset(dataset, train_labels, class_order=classes,
                                        session_train_indices=sessions,
                                        split_id=files.split_id)
    info = {"split": "official" if verify else "unverified", "split_id": files.split_id,
            "split_dir": str(files.folder),
            "split_files": {session_file(t): s for t, s in enumerate(files.sha256, 1)}}
    return proto, info


def fscil_benchmark(name: str, root: Path, splits: dict, res, options: dict, info: dict, *,
                    verify: bool = True):
    """An :class:`FSCILBenchmark` from ``train``/``test`` splits and the split files."""
    from .base import FSCILBenchmark
    from .prepare import open_all

    opened, extra = open_all(splits, res, options)
    train = opened["train"]
    split_dir = options.get("split_dir") or default_split_dir(root, name)
    keys = len(train.data) if name == "cifar100" else train.keys
    proto, pinfo = build_protocol(name, train.data.labels, keys, split_dir=split_dir,
                                  verify=verify, seed=int(options.get("split_seed") or 0))
    return FSCILBenchmark(name, train.data, opened["test"].data, proto,
                          {"dataset": name, **info, **extra, **pinfo})

"""The official TOPIC/CEC split files (``shared/fscil-index-lists``, beside the clone or
``$FSBENCH_SHARED``); skipped when absent. The package ships only their checksums."""
import csv
import os
from pathlib import Path

import numpy as np
import pytest

import fabricate as F
from fsbench.episodes import fscil_splits
from fsbench.episodes.protocol import SessionProtocol
from fsbench.registry import DATASETS


def _shared() -> Path:
    env = os.environ.get("FSBENCH_SHARED")
    cands = [Path(env), Path(env) / "fscil-index-lists"] if env else []
    cands.append(Path(__file__).resolve().parents[1].parent / "shared" / "fscil-index-lists")
    for c in cands:
        if (c / "cub200" / "session_1.txt").is_file():
            return c
    return None


SHARED = _shared()
pytestmark = pytest.mark.skipif(SHARED is None, reason="shared/fscil-index-lists not present")


@pytest.mark.parametrize("dataset", ["cifar100", "cub200", "miniimagenet"])
def test_official_files_match_the_checksum_table(dataset):
    checks = fscil_splits.check_folder(SHARED, dataset)
    assert len(checks) == {"cifar100": 9, "cub200": 11, "miniimagenet": 9}[dataset]
    assert all(c.ok for c in checks), [c.message(dataset) for c in checks if not c.ok]
    files = fscil_splits.read(SHARED, dataset)
    table = fscil_splits.checksums()[fscil_splits.FOLDERS[dataset]]
    for t, lines in enumerate(files.sessions, 1):
        assert len(lines) == table[f"session_{t}.txt"]["lines"]
    assert files.split_id == fscil_splits.read(SHARED / fscil_splits.FOLDERS[dataset],
                                               dataset).split_id
    if dataset == "miniimagenet":
        extra = fscil_splits.check_folder(SHARED, dataset, ["train.csv", "test.csv",
                                                            "train.txt", "test.txt"])
        assert all(c.ok for c in extra)


def test_cub_sessions_map_to_the_right_classes():
    files = fscil_splits.read(SHARED, "cub200")
    base = [fscil_splits.entry_class("cub200", x) for x in files.sessions[0]]
    assert sorted(set(base)) == list(range(1, 101)) and len(base) == 3000
    for t in range(1, 11):
        cls = [fscil_splits.entry_class("cub200", x) for x in files.sessions[t]]
        lo = 101 + 10 * (t - 1)
        assert sorted(set(cls)) == list(range(lo, lo + 10))
        assert np.all(np.bincount(np.array(cls) - lo) == 5)


def test_mini_sessions_map_onto_train_csv():
    files = fscil_splits.read(SHARED, "miniimagenet")
    s2 = [fscil_splits.entry_class("miniimagenet", x) for x in files.sessions[1]]
    assert sorted(set(s2)) == ["n03544143", "n03584254", "n03676483", "n03770439", "n03773504"]
    with open(SHARED / "mini_imagenet" / "train.csv", newline="") as f:
        rows = list(csv.reader(f))[1:]
    keys = [r[0] for r in rows]
    wnids = F.mini_wnids()
    labels = np.array([wnids.index(r[1]) for r in rows])
    sessions = fscil_splits.session_indices(files, keys)
    proto = SessionProtocol.from_preset("miniimagenet", labels, class_order=np.arange(100),
                                        session_train_indices=sessions, split_id=files.split_id)
    assert len(proto.train_indices(0)) == 30000
    assert set(sessions[0].tolist()) == set(np.flatnonzero(labels < 60).tolist())
    assert sorted(set(labels[proto.train_indices(8)].tolist())) == list(range(95, 100))


def test_cifar_sessions_are_row_indices():
    files = fscil_splits.read(SHARED, "cifar100")
    idx = fscil_splits.session_indices(files, 50000)
    assert len(idx[0]) == 30000 and all(len(i) == 25 for i in idx[1:])
    assert len(np.unique(np.concatenate(idx))) == 30000 + 8 * 25


def test_cub_end_to_end_with_verified_official_files(tmp_path):
    """A fabricated CUB tree named after the official session files loads with verification."""
    files = fscil_splits.read(SHARED, "cub200")
    train_paths: dict = {}
    for line in (x for s in files.sessions for x in s):
        c = fscil_splits.entry_class("cub200", line)
        train_paths.setdefault(c, []).append(fscil_splits.entry_key("cub200", line))
    F.cub200(tmp_path, train_per_class=0, test_per_class=1, train_paths=train_paths)
    b = DATASETS.get("cub200").obj(tmp_path, "fscil", {"split_dir": str(SHARED)})
    assert b.info["split"] == "official" and b.protocol.split_id == files.split_id
    assert len(b.train) == 3500 and len(b.protocol.train_indices(0)) == 3000
    s2 = b.train.labels[b.protocol.train_indices(1)]
    assert sorted(set(s2.tolist())) == list(range(100, 110))  # CUB classes 101-110, 0-based
    assert np.all(np.bincount(s2 - 100) == 5)

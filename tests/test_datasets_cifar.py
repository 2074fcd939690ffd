"""CIFAR-100 pickles: cifar100 (FSCIL), cifarfs and fc100 (FSL)."""
import logging
import pickle

import numpy as np
import pytest

import fabricate as F
from fsbench.episodes import cifar
from fsbench.episodes.base import FSCILBenchmark, FSLBenchmark
from fsbench.errors import UserError
from fsbench.registry import DATASETS


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    return root, F.cifar100(root)


def test_cifar100_parses_pickles_labels_and_pixels(tree, caplog):
    root, fab = tree
    with caplog.at_level(logging.WARNING, logger="fsbench.episodes"):
        b = DATASETS.get("cifar100").obj(root, "fscil", {})
    assert isinstance(b, FSCILBenchmark) and b.name == "cifar100"
    x, fine, _ = fab["train"]
    assert len(b.train) == 600 and len(b.test) == 200
    assert b.train.labels.tolist() == fine.tolist()  # native fine ids, pickle row order
    img, label = b.train[7]
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    assert np.array_equal(img, x[7]) and img[0, 0, 0] == label  # planar -> HWC done right
    assert b.train.class_names[60:65] == ["plain", "plate", "poppy", "porcupine", "possum"]
    # class order = native fine ids; generated split, announced by exactly one warning line
    assert b.protocol.class_order.tolist() == list(range(100))
    assert b.protocol.split_id == "generated" and b.info["split"] == "generated"
    warnings = [r for r in caplog.records if "generated split" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()


def test_cifar100_official_format_split_files(tree, tmp_path):
    root, fab = tree
    rows = F.cifar_split_files(tmp_path / "index_list", fab["train"][1])
    b = cifar.build_cifar100(root, "fscil", {"split_dir": str(tmp_path / "index_list")},
                             verify_splits=False)
    p = b.protocol
    assert p.split_id != "generated" and len(p.split_id) == 64
    for t in range(9):
        assert p.train_indices(t).tolist() == rows[t].tolist()
    assert sorted(set(b.train.labels[p.train_indices(1)].tolist())) == [60, 61, 62, 63, 64]
    assert len(p.test_indices(0, b.test.labels)) == 60 * 2
    assert len(p.test_indices(8, b.test.labels)) == 100 * 2


def test_cifar100_split_file_checksum_failure_names_file(tree, tmp_path):
    root, fab = tree
    F.cifar_split_files(tmp_path / "index_list", fab["train"][1])
    with pytest.raises(UserError) as e:
        DATASETS.get("cifar100").obj(root, "fscil", {"split_dir": str(tmp_path / "index_list")})
    msg = str(e.value)
    assert "cifar100/session_1.txt has sha256" in msg and "expected 5f402fb2c5260a05" in msg
    assert "official TOPIC/CEC cifar100 session 1 list" in msg and "CEC repository" in msg
    assert "\n" not in msg


def test_cifarfs_and_fc100_class_splits(tree):
    root, fab = tree
    fs = DATASETS.get("cifarfs").obj(root, "fsl", {})
    assert isinstance(fs, FSLBenchmark)
    sizes = [len(np.unique(d.labels)) for d in (fs.train, fs.val, fs.test)]
    assert sizes == [64, 16, 20]
    assert len(fs.train) == 64 * 8  # train + test pickles merged (6 + 2 per class here)
    test_names = {fs.test.class_names[c] for c in np.unique(fs.test.labels)}
    assert {"whale", "worm", "rocket", "baby"} <= test_names
    fc = DATASETS.get("fc100").obj(root, "fsl", {})
    assert [len(np.unique(d.labels)) for d in (fc.train, fc.val, fc.test)] == [60, 20, 20]
    coarse = {n: c for c, v in F.CIFAR_SUPER.items() for n in v.split()}
    test_super = {coarse[fc.test.class_names[c]] for c in np.unique(fc.test.labels)}
    assert test_super == {"aquatic_mammals", "insects", "medium_mammals", "people"}
    for a, b in ((fs.train, fs.test), (fc.train, fc.val), (fc.val, fc.test)):
        assert not set(a.labels.tolist()) & set(b.labels.tolist())


def test_cifar_bad_inputs(tree, tmp_path):
    root, _ = tree
    build = DATASETS.get("cifar100").obj
    with pytest.raises(UserError, match=r"--data-root DIR or set FSBENCH_DATA; expected "
                                        r"DIR/cifar-100-python/train"):
        build(None, "fscil", {})
    with pytest.raises(UserError, match="does not exist"):
        build(tmp_path / "nope", "fscil", {})
    (tmp_path / "cifar-100-pyton").mkdir()  # misspelled
    with pytest.raises(UserError, match=r"expected .*cifar-100-python/train .*found .*"
                                        r"cifar-100-pyton: misspelled"):
        build(tmp_path, "fscil", {})
    with pytest.raises(UserError, match="use --dataset cifarfs"):
        build(root, "fsl", {})
    with pytest.raises(UserError, match=r"unknown option\(s\) \['bogus'\]"):
        build(root, "fscil", {"bogus": 1})


def test_cifar_truncated_pickle_and_wrong_content(tmp_path):
    F.cifar100(tmp_path, 1, 1)
    d = tmp_path / "cifar-100-python"
    data = (d / "train").read_bytes()
    (d / "train").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"cannot read .*train: .*truncated"):
        DATASETS.get("cifar100").obj(tmp_path, "fscil", {})
    (d / "train").write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8),
                                            "labels": [0, 1]}))
    with pytest.raises(UserError, match="not the CIFAR-100 python pickle"):
        DATASETS.get("cifar100").obj(tmp_path, "fscil", {})

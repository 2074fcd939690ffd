"""CUB-200-2011: index files, FSCIL and Closer-Look FSL splits, split files, bad input."""
import logging

import numpy as np
import pytest

import fabricate as F
from fsbench.episodes import cub, fscil_splits
from fsbench.episodes.base import FileDataset
from fsbench.errors import UserError
from fsbench.registry import DATASETS


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("cub")
    return root, F.cub200(root)


def build(root, task="fscil", **options):
    return DATASETS.get("cub200").obj(root, task, options)


def test_fscil_split_labels_order_and_counts(tree):
    root, fab = tree
    b = build(root)
    assert isinstance(b.train, FileDataset)
    assert len(b.train) == 1000 and len(b.test) == 200  # official train/test flag
    tr_paths = [p for p, t in zip(fab["paths"], fab["is_train"]) if t]
    assert [p.split("images/")[-1] for p in b.train.paths] == tr_paths
    assert b.train.labels.tolist() == [c - 1 for c, t in zip(fab["class_id"], fab["is_train"])
                                       if t]  # 0-based CUB ids
    assert b.train.class_names[0] == "001.Bird_1" and len(b.train.class_names) == 200
    assert b.protocol.class_order.tolist() == list(range(200))
    assert b.protocol.num_base == 100 and b.protocol.way == 10
    img, _ = b.train[0]
    assert img.shape == (7, 10, 3) and img.dtype == np.uint8  # native size by default
    assert b.info["bbox_crop"] is False


def test_resolution_and_bbox_crop_recorded(tree):
    root, _ = tree
    b = build(root, resolution=16)
    assert b.train.load(3).shape == (16, 16, 3)
    b = build(root, bbox_crop=True)
    assert b.info["bbox_crop"] is True
    assert b.train.load(0).shape == (4, 5, 3)  # box 1,2,5,4 -> 5 wide, 4 high


def test_closer_look_fsl_split(tree):
    root, _ = tree
    b = build(root, "fsl")
    ids = [sorted({int(c) + 1 for c in d.labels}) for d in (b.train, b.val, b.test)]
    assert ids[0] == list(range(1, 201, 2))
    assert ids[1] == list(range(2, 201, 4)) and ids[2] == list(range(4, 201, 4))
    assert len(b.train) == 100 * 6  # every image of the class (train + test flags)
    assert b.info["class_split"].startswith("closer-look")


def test_official_format_split_files(tree, tmp_path):
    root, fab = tree
    sessions = F.cub_split_files(tmp_path / "index_list", fab)
    b = cub.build_cub(root, "fscil", {"split_dir": str(tmp_path / "index_list")},
                      verify_splits=False)
    p = b.protocol
    assert b.info["split"] == "unverified" and len(b.info["split_files"]) == 11
    s2 = b.train.labels[p.train_indices(1)]
    assert sorted(set(s2.tolist())) == list(range(100, 110))
    assert np.all(np.bincount(s2 - 100) == 5)
    assert [b.train.paths[i].split("images/")[-1] for i in p.train_indices(10)] == sessions[10]
    assert len(p.train_indices(0)) == 500
    # verified (the default): the first file that differs is named with both checksums
    with pytest.raises(UserError, match=r"cub200/session_1.txt has sha256 [0-9a-f]{16}\.\.\., "
                                        r"expected 51ac011fc2cf87c3\.\.\. \(the official TOPIC/CEC "
                                        r"cub200 session 1 list\); use the official index_list"):
        build(root, split_dir=str(tmp_path / "index_list"))
    c = fscil_splits.check_folder(tmp_path / "index_list", "cub200")[2]
    assert not c.ok and ("expected 531b4cdc44b54d18... (the official TOPIC/CEC cub200 session 3 "
                         "list)") in c.message("cub200")


def test_index_list_inside_data_root_is_found(tmp_path):
    fab = F.cub200(tmp_path, 5, 1)
    F.cub_split_files(tmp_path / "index_list", fab)
    with pytest.raises(UserError, match="cub200/session_1.txt has sha256"):
        build(tmp_path)
    b = cub.build_cub(tmp_path, "fscil", {}, verify_splits=False)
    assert b.info["split_dir"] == str(tmp_path / "index_list" / "cub200")


def test_split_file_entry_not_in_data(tree, tmp_path):
    root, fab = tree
    F.cub_split_files(tmp_path / "il", fab)
    f = tmp_path / "il" / "cub200" / "session_2.txt"
    f.write_text(f.read_text().replace("Bird_101_0000", "Bird_101_9999"))
    with pytest.raises(UserError, match=r"session_2.txt line 1: .*Bird_101_9999.* is not an image"):
        cub.build_cub(root, "fscil", {"split_dir": str(tmp_path / "il")}, verify_splits=False)


def test_missing_and_misplaced_files(tmp_path):
    with pytest.raises(UserError, match=r"FSBENCH_DATA; expected DIR/CUB_200_2011/images.txt"):
        build(None)
    nested = tmp_path / "nested"
    F.cub200(nested / "CUB_200_2011", 5, 1)  # extracted one folder too deep
    with pytest.raises(UserError, match=r"expected .*CUB_200_2011/images.txt .*one folder too "
                                        r"deep"):
        build(nested)
    F.cub200(tmp_path / "p", 5, 1)
    with pytest.raises(UserError, match="looks like the CUB_200_2011 folder itself: pass its "
                                        "parent instead"):
        build(tmp_path / "p" / "CUB_200_2011")
    typo = tmp_path / "typo"
    F.cub200(typo, 5, 1)
    (typo / "CUB_200_2011").rename(typo / "cub_200_2011")
    with pytest.raises(UserError, match="differently cased"):
        build(typo)


def test_wrong_counts_and_class_count(tmp_path):
    F.cub200(tmp_path / "a", 5, 1)
    labels = tmp_path / "a" / "CUB_200_2011" / "image_class_labels.txt"
    labels.write_text("".join(labels.read_text().splitlines(keepends=True)[:-3]))
    with pytest.raises(UserError, match=r"image_class_labels.txt has 1197 entries and images.txt "
                                        r"1200"):
        build(tmp_path / "a")
    F.cub200(tmp_path / "b", 5, 1, classes=150)
    with pytest.raises(UserError, match=r"classes.txt lists 150 classes, CUB-200-2011 has 200"):
        build(tmp_path / "b")
    F.cub200(tmp_path / "c", 5, 1)
    (tmp_path / "c" / "CUB_200_2011" / "images" / "002.Bird_2" / "Bird_2_0001_201.jpg").unlink()
    with pytest.raises(UserError, match=r"1 of 1000 images listed in .*images.txt are missing "
                                        r"\(first: .*Bird_2_0001_201.jpg\)"):
        build(tmp_path / "c")


def test_corrupt_image_named_and_skip_corrupt(tmp_path, caplog):
    F.cub200(tmp_path, 6, 1)
    bad = tmp_path / "CUB_200_2011" / "images" / "001.Bird_1" / "Bird_1_0002_102.jpg"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    b = build(tmp_path)
    with pytest.raises(UserError, match=r"cannot read image .*Bird_1_0002_102.jpg: .*skip_corrupt"):
        b.train.load(2)
    with caplog.at_level(logging.WARNING, logger="fsbench.episodes"):
        b = build(tmp_path, skip_corrupt=True)
    assert len(b.train) == 6 * 200 - 1 and b.info["skipped_corrupt"] == {"train": 1, "test": 0}
    assert not any("Bird_1_0002_102" in p for p in b.train.paths)
    assert any("skipped 1 unreadable" in r.getMessage() for r in caplog.records)

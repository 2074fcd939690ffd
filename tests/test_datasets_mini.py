"""miniImageNet: FSCIL form, Ravi CSV form, pickle-cache form, split files, bad input."""
import numpy as np
import pytest

import fabricate as F
from fsbench.episodes import miniimagenet
from fsbench.episodes.base import FSCILBenchmark, FSLBenchmark
from fsbench.errors import UserError
from fsbench.registry import DATASETS


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini")
    fab = {"fscil": F.mini_fscil(root), "ravi": F.mini_ravi(root), "pickle": F.mini_pickle(root)}
    return root, fab


def build(root, task="fscil", **options):
    return DATASETS.get("miniimagenet").obj(root, task, options)


def test_fscil_form(tree):
    root, fab = tree
    b = build(root)
    assert isinstance(b, FSCILBenchmark) and b.info["form"] == "fscil"
    assert len(b.train) == 500 and len(b.test) == 100
    wnids = F.mini_wnids()
    assert b.train.class_names == wnids == sorted(wnids)
    # class index = first appearance in train.csv = sorted wnid order
    assert [b.train.class_names[c] for c in b.train.labels[::5]] == wnids
    assert [p.rsplit("/", 1)[-1] for p in b.train.paths] == [f for f, _ in fab["fscil"]["train"]]
    assert b.train.load(0).shape == (84, 84, 3)
    assert b.protocol.class_order.tolist() == list(range(100))


def test_fscil_split_files(tree, tmp_path):
    root, fab = tree
    F.mini_split_files(tmp_path / "il", fab["fscil"]["train"])
    b = miniimagenet.build_mini(root, "fscil", {"split_dir": str(tmp_path / "il")},
                                verify_splits=False)
    s2 = b.train.labels[b.protocol.train_indices(1)]
    assert [b.train.class_names[c] for c in sorted(set(s2.tolist()))] == \
        ["n03544143", "n03584254", "n03676483", "n03770439", "n03773504"]
    assert np.all(np.bincount(s2 - 60) == 5)
    with pytest.raises(UserError, match=r"mini_imagenet/session_1.txt has sha256 .*expected "
                                        r"af28c169b6289232"):
        build(root, split_dir=str(tmp_path / "il"))


def test_ravi_and_pickle_forms_agree_on_labels(tree):
    root, fab = tree
    ravi = build(root, "fsl")
    assert isinstance(ravi, FSLBenchmark) and ravi.info["form"] == "ravi"
    pick = build(root, "fsl", form="pickle")
    assert pick.info["form"] == "pickle"
    for split, a, b in (("train", ravi.train, pick.train), ("val", ravi.val, pick.val),
                        ("test", ravi.test, pick.test)):
        names = {a.class_names[c] for c in np.unique(a.labels)}
        assert names == set(F.ravi_classes()[split])
        assert np.array_equal(np.unique(a.labels), np.unique(b.labels))  # same label space
    x, class_dict = fab["pickle"]["val"]
    w = next(iter(class_dict))
    row = class_dict[w][0]
    img, label = pick.val[row]
    assert np.array_equal(img, x[row]) and pick.val.class_names[label] == w
    assert [len(np.unique(d.labels)) for d in (ravi.train, ravi.val, ravi.test)] == [64, 16, 20]


def test_forms_and_tasks_do_not_mix(tree, tmp_path):
    root, _ = tree
    with pytest.raises(UserError, match="form 'fscil' is for FSCIL, not FSL"):
        build(root, "fsl", form="fscil")
    with pytest.raises(UserError, match="must be one of"):
        build(root, "fsl", form="hdf5")
    F.mini_ravi(tmp_path)
    with pytest.raises(UserError, match=r"expected .*miniimagenet/\{split/train.csv, "
                                        r"split/test.csv\} \(found .*miniimagenet/ without them\)"):
        build(tmp_path)


def test_bad_csv_content(tmp_path):
    F.mini_fscil(tmp_path, 5, 1)
    csv = tmp_path / "miniimagenet" / "split" / "train.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[:3] + ["n9999999900000001.jpg,n99999999"] + lines[3:]) + "\n")
    with pytest.raises(UserError, match=r"names class 'n99999999', which is not one of the 100 "
                                        r"miniImageNet classes"):
        build(tmp_path)
    # 90 classes only: the FSCIL protocol needs 100
    keep = [ln for ln in lines[1:] if ln.split(",")[1] not in F.mini_wnids()[90:]]
    csv.write_text("\n".join(lines[:1] + keep) + "\n")
    with pytest.raises(UserError, match=r"training split has 90 classes, the FSCIL protocol "
                                        r"needs 100"):
        build(tmp_path)
    csv.write_text("file,wnid\nx.jpg,n01532829\n")
    with pytest.raises(UserError, match="expected the header 'filename,label'"):
        build(tmp_path)


def test_ravi_wrong_class_count_and_missing_images(tmp_path):
    F.mini_ravi(tmp_path, 2)
    d = tmp_path / "miniimagenet"
    val = (d / "val.csv").read_text().splitlines()
    (d / "val.csv").write_text("\n".join(val[:-2]) + "\n")  # drops the last val class
    with pytest.raises(UserError, match=r"miniimagenet val: 15 classes, the Ravi split has 16"):
        build(tmp_path, "fsl")
    (d / "val.csv").write_text("\n".join(val) + "\n")
    first = val[1].split(",")[0]
    (d / "images" / first).unlink()
    with pytest.raises(UserError, match=rf"1 of 32 images listed in .*val.csv are missing "
                                        rf"\(first: .*{first}\)"):
        build(tmp_path, "fsl")

"""tieredImageNet (Ren pickles) and Omniglot (Vinyals split, rotations)."""
import pickle

import numpy as np
import pytest

import fabricate as F
from fsbench.episodes.base import FSLBenchmark
from fsbench.errors import UserError
from fsbench.registry import DATASETS


def test_tiered_pickles(tmp_path):
    fab = F.tiered(tmp_path)
    b = DATASETS.get("tieredimagenet").obj(tmp_path, "fsl", {})
    assert isinstance(b, FSLBenchmark)
    assert [len(np.unique(d.labels)) for d in (b.train, b.val, b.test)] == [351, 97, 160]
    x, labels = fab["val"]
    img, label = b.val[5]
    assert img.shape == (84, 84, 3) and img.dtype == np.uint8  # fitted to the default 84
    assert label == labels[5] and b.val.class_names[label] == f"nval{label:05d}"
    native = DATASETS.get("tieredimagenet").obj(tmp_path, "fsl", {"resolution": 6})
    assert np.array_equal(native.val.load(5), x[5])  # PNG bytes decoded exactly
    sub = native.val.subset([5, 7])
    assert np.array_equal(sub.load_many([1]), x[7][None]) and sub.labels.tolist() == [5, 7]


def test_tiered_ilsvrc_layout_full_resolution(tmp_path):
    """form ilsvrc: BECLR's split CSVs + ILSVRC JPEG folders, native size, first-appearance ids."""
    wnids = F.tiered_ilsvrc(tmp_path, per_class=2)
    b = DATASETS.get("tieredimagenet").obj(tmp_path, "fsl", {"form": "ilsvrc"})
    assert [len(np.unique(d.labels)) for d in (b.train, b.val, b.test)] == [351, 97, 160]
    assert b.train.class_names == wnids["train"]  # ids in order of first appearance
    assert b.train.labels[:4].tolist() == [0, 0, 1, 1]
    img = b.train.load(2)  # class 1: 9 px wide, kept at its own size (the transforms resize)
    assert img.shape == (6, 9, 3) and img.dtype == np.uint8
    assert b.test.load(2 * 7).shape == (6, 8 + 7 % 5, 3)
    fixed = DATASETS.get("tieredimagenet").obj(tmp_path, "fsl", {"form": "ilsvrc",
                                                                 "resolution": 4})
    assert fixed.val.load(0).shape[:2] == (4, 4)
    # an explicit image_dir, and one-line errors naming the file or option
    F.tiered_ilsvrc(tmp_path / "other", per_class=1, image_dir="elsewhere/train")
    moved = DATASETS.get("tieredimagenet").obj(tmp_path / "other", "fsl", {
        "form": "ilsvrc", "image_dir": "elsewhere/train"})
    assert moved.val.load(0).shape[:2] == (6, 8)
    with pytest.raises(UserError, match="no ILSVRC-2012 train folder"):
        DATASETS.get("tieredimagenet").obj(tmp_path / "other", "fsl", {"form": "ilsvrc"})
    (tmp_path / "ILSVRC2012/train" / wnids["val"][0] / f"{wnids['val'][0]}_0.JPEG").unlink()
    with pytest.raises(UserError, match=r"images listed in .*val.csv are missing"):
        DATASETS.get("tieredimagenet").obj(tmp_path, "fsl", {"form": "ilsvrc"}).val.load(0)
    csv = tmp_path / "tiered-imagenet" / "test.csv"
    csv.write_text("\n".join(csv.read_text().splitlines()[:-2]) + "\n")  # last class gone
    with pytest.raises(UserError, match=r"test.csv: 159 classes, .* has 160"):
        DATASETS.get("tieredimagenet").obj(tmp_path, "fsl", {"form": "ilsvrc"})
    with pytest.raises(UserError, match="pickle or ilsvrc"):
        DATASETS.get("tieredimagenet").obj(tmp_path, "fsl", {"form": "jpg"})
    with pytest.raises(UserError, match="pickle or ilsvrc"):  # also `fsbench data check`'s path
        DATASETS.get("tieredimagenet").extra["splits"](tmp_path, "fsl", {"form": "jpg"})


def test_tiered_bad_input(tmp_path):
    with pytest.raises(UserError, match=r"expected .*tiered-imagenet/train_images_png.pkl"):
        DATASETS.get("tieredimagenet").obj(tmp_path, "fsl", {})
    F.tiered(tmp_path, counts=(351, 96, 160))
    with pytest.raises(UserError, match=r"val_labels.pkl: 96 classes .*has 97"):
        DATASETS.get("tieredimagenet").obj(tmp_path, "fsl", {})
    d = tmp_path / "tiered-imagenet"
    (d / "test_labels.pkl").unlink()
    with pytest.raises(UserError, match=r"lacks test_labels.pkl"):
        DATASETS.get("tieredimagenet").obj(tmp_path, "fsl", {})
    F.tiered(tmp_path / "b")
    blobs = pickle.loads((tmp_path / "b" / "tiered-imagenet" / "test_images_png.pkl").read_bytes())
    blobs[3] = blobs[3][:20]  # a truncated PNG
    (tmp_path / "b" / "tiered-imagenet" / "test_images_png.pkl").write_bytes(pickle.dumps(blobs))
    b = DATASETS.get("tieredimagenet").obj(tmp_path / "b", "fsl", {})
    with pytest.raises(UserError, match=r"cannot read image .*test_images_png.pkl item 3"):
        b.test.load(3)
    b = DATASETS.get("tieredimagenet").obj(tmp_path / "b", "fsl", {"skip_corrupt": True})
    assert len(b.test) == 159 and b.info["skipped_corrupt"]["test"] == 1


@pytest.fixture(scope="module")
def omni(tmp_path_factory):
    root = tmp_path_factory.mktemp("omniglot")
    return root, F.omniglot(root)


def test_omniglot_vinyals_split_and_rotations(omni):
    root, names = omni
    b = DATASETS.get("omniglot").obj(root, "fsl", {})
    chars = [np.unique(d.labels // 4) for d in (b.train, b.val, b.test)]
    assert [len(c) for c in chars] == [1028, 172, 423]
    val_alpha = {names[c].split("/")[1] for c in chars[1]}
    assert val_alpha == {"Armenian", "Bengali", "Early_Aramaic", "Hebrew", "Mkhedruli_(Georgian)"}
    test_names = [names[c] for c in chars[2]]
    assert "images_evaluation/Gurmukhi/character42" in test_names
    assert "images_evaluation/Gurmukhi/character41" not in test_names
    assert len(np.unique(b.test.labels)) == 4 * 423  # each rotation is a class
    img, label = b.test[0]
    assert img.shape == (28, 28, 1) and img.dtype == np.uint8
    assert b.test.class_names[label].endswith("/rot000")
    n = len(b.test) // 4
    raw = DATASETS.get("omniglot").obj(root, "fsl", {"rotations": False, "resolution": "native"})
    base = raw.test.load(0)
    assert base.shape == (10, 10, 1)
    rot = DATASETS.get("omniglot").obj(root, "fsl", {"resolution": "native"}).test
    assert np.array_equal(rot.load(n), np.rot90(base, 1))
    assert rot.labels[n] == raw.test.labels[0] * 4 + 1
    assert b.info["class_split"] == "vinyals" and b.info["rotations"] == [0, 90, 180, 270]


def test_omniglot_incomplete(tmp_path):
    with pytest.raises(UserError, match=r"expected .*omniglot/images_background"):
        DATASETS.get("omniglot").obj(tmp_path, "fsl", {})
    for s in ("images_background/Armenian/character01", "images_evaluation/Kannada/character01"):
        (tmp_path / "omniglot" / s).mkdir(parents=True)
    with pytest.raises(UserError, match=r"Hebrew is missing; the Vinyals split needs the "
                                        r"complete Omniglot|Bengali is missing"):
        DATASETS.get("omniglot").obj(tmp_path, "fsl", {})

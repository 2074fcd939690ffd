"""``fsbench data prepare|check|download`` and the prepared cache the loaders pick up."""
import hashlib
import io
import json
import logging
import tarfile

import numpy as np
import pytest

import fabricate as F
from fsbench.cli import main
from fsbench.episodes import cifar
from fsbench.episodes.base import ArrayDataset
from fsbench.episodes.prepare import ImageFiles
from fsbench.errors import UserError
from fsbench.registry import DATASETS


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("FSBENCH_CACHE", str(d))
    return d / "prepared"


@pytest.fixture
def cub_ro(tmp_path):
    """A read-only fabricated CUB tree and its snapshot."""
    root = tmp_path / "data"
    F.cub200(root, 5, 1)
    F.make_readonly(root)
    yield root, F.snapshot(root)
    F.make_writable(root)


def cub(root, task="fscil", **options):
    return DATASETS.get("cub200").obj(root, task, options)


def test_prepare_then_loads_memory_map_identical_pixels(cub_ro, cache, capsys):
    root, before = cub_ro
    live = cub(root, resolution=16)
    assert isinstance(live.train, ImageFiles) and live.info["prepared"]["train"] is None
    assert main(["data", "prepare", "--dataset", "cub200", "--data-root", str(root),
                 "--resolution", "16"]) == 0
    out = capsys.readouterr().out
    assert "cub200-train-16: 1,000 images 16x16x3" in out and "cub200-fsl_test-16" in out
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        f"cub200-{s}-16" for s in ("train", "test", "fsl_train", "fsl_val", "fsl_test"))
    d = cache / "cub200-train-16"
    assert sorted(p.name for p in d.iterdir()) == ["images.npy", "labels.npy", "meta.json"]
    meta = json.loads((d / "meta.json").read_text())
    assert meta["count"] == 1000 and meta["resolution"] == 16 and meta["dataset"] == "cub200"

    warm = cub(root, resolution=16)
    assert isinstance(warm.train, ArrayDataset) and isinstance(warm.train.images, np.memmap)
    assert warm.info["prepared"]["train"] == str(d)
    assert np.array_equal(warm.train.labels, live.train.labels)
    for i in (0, 17, 999):
        assert np.array_equal(warm.train.load(i), live.train.load(i))
    assert warm.train.class_names == live.train.class_names
    for t in range(11):
        assert np.array_equal(warm.protocol.train_indices(t), live.protocol.train_indices(t))
    fsl = cub(root, "fsl", resolution=16)
    assert isinstance(fsl.val, ArrayDataset) and np.array_equal(
        fsl.val.load(3), cub(root, "fsl", resolution=16, use_prepared=False).val.load(3))
    # another resolution or use_prepared=false decodes from the files again
    assert isinstance(cub(root, resolution=12).train, ImageFiles)
    assert isinstance(cub(root, resolution=16, use_prepared=False).train, ImageFiles)
    assert F.snapshot(root) == before  # the data root was never written


def test_prepare_cifar_default_resolution(tmp_path, cache, capsys):
    fab = F.cifar100(tmp_path, 5, 1)
    assert main(["data", "prepare", "--dataset", "cifar100", "--data-root", str(tmp_path)]) == 0
    assert (cache / "cifar100-train-32" / "images.npy").is_file()
    b = DATASETS.get("cifar100").obj(tmp_path, "fscil", {})
    assert isinstance(b.train.images, np.memmap)
    assert np.array_equal(np.asarray(b.train.images), fab["train"][0])
    assert b.train.labels.tolist() == fab["train"][1].tolist()


def test_stale_cache_is_ignored_with_a_warning(cub_ro, cache, caplog):
    root, _ = cub_ro
    assert main(["data", "prepare", "--dataset", "cub200", "--data-root", str(root),
                 "--resolution", "8", "--task", "fscil"]) == 0
    meta = cache / "cub200-train-8" / "meta.json"
    m = json.loads(meta.read_text())
    m["source_id"] = "0" * 64
    meta.write_text(json.dumps(m))
    with caplog.at_level(logging.WARNING, logger="fsbench.episodes"):
        b = cub(root, resolution=8)
    assert isinstance(b.train, ImageFiles) and isinstance(b.test, ArrayDataset)
    assert any("was made from a different copy" in r.getMessage() for r in caplog.records)


def test_prepare_corrupt_image(tmp_path, cache, capsys):
    F.cub200(tmp_path, 5, 1)
    bad = tmp_path / "CUB_200_2011" / "images" / "003.Bird_3" / "Bird_3_0001_301.jpg"
    bad.write_bytes(bad.read_bytes()[:50])
    args = ["data", "prepare", "--dataset", "cub200", "--data-root", str(tmp_path),
            "--resolution", "8", "--task", "fscil"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "cannot read image" in err and "Bird_3_0001_301.jpg" in err and err.count("\n") == 1
    assert not cache.exists() or not any(cache.iterdir())  # nothing half-written left behind
    assert main(args + ["--skip-corrupt"]) == 0
    assert "skipped 1 unreadable image(s) (first: 003.Bird_3/Bird_3_0001_301.jpg)" in \
        capsys.readouterr().out
    with pytest.raises(UserError, match="left out 1 unreadable image"):
        cub(tmp_path, resolution=8)
    b = cub(tmp_path, resolution=8, skip_corrupt=True)
    assert len(b.train) == 999 and b.info["skipped_corrupt"]["train"] == 1
    assert isinstance(b.train, ArrayDataset)


def test_data_check_exit_codes_and_table(tmp_path, cache, capsys):
    root = tmp_path / "data"
    fab = F.cub200(root, 5, 1)
    F.make_readonly(root)
    before = F.snapshot(root)
    assert main(["data", "check", "--dataset", "cub200", "--data-root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "all good" in out and "train counts" in out and "all 1,000 decode" in out
    assert main(["data", "check", "--dataset", "cub200", "--data-root", str(root),
                 "--strict"]) == 2  # partial copy: counts differ from the published 5,994
    F.make_writable(root)
    F.cub_split_files(tmp_path / "il", fab)
    assert main(["data", "check", "--dataset", "cub200", "--data-root", str(root),
                 "--split-dir", str(tmp_path / "il"), "--task", "fscil"]) == 2
    out = capsys.readouterr().out
    assert "FAIL    fscil session_3.txt" in out and "expected 531b4cdc44b54d18" in out
    assert "fix: use the official index_list from the CEC repository" in out
    assert "ok      fscil sessions" in out  # the files do fit the data
    bad = root / "CUB_200_2011" / "images" / "001.Bird_1" / "Bird_1_0000_100.jpg"
    bad.write_bytes(b"not a jpeg")
    assert main(["data", "check", "--dataset", "cub200", "--data-root", str(root),
                 "--task", "fsl"]) == 2
    out = capsys.readouterr().out
    assert "FAIL    fsl train images  1 of 600 unreadable" in out and "Bird_1_0000_100" in out
    assert "skip_corrupt" in out
    assert main(["data", "check", "--dataset", "cub200", "--data-root", str(tmp_path / "x")]) == 2
    assert "expected" in capsys.readouterr().err
    assert main(["data", "check", "--dataset", "glyphs", "--data-root", str(root)]) == 2
    assert "not read from a data root" in capsys.readouterr().err
    del before


def _tarball(tmp_path):
    src = tmp_path / "src"
    F.cifar100(src, 5, 1)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src / "cifar-100-python", arcname="cifar-100-python")
    path = tmp_path / "cifar-100-python.tar.gz"
    path.write_bytes(buf.getvalue())
    return path, hashlib.md5(buf.getvalue()).hexdigest()


@pytest.mark.parametrize("python_has_tar_filter", [True, False])
def test_download_verifies_md5_and_extracts_atomically(tmp_path, monkeypatch, capsys,
                                                       python_has_tar_filter):
    import tarfile
    if not python_has_tar_filter:  # Python < 3.11.4: fsbench's own member checks
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    archive, md5 = _tarball(tmp_path)
    monkeypatch.setattr(cifar, "URL", archive.as_uri())  # no network in tests
    dest = tmp_path / "root"
    assert main(["data", "download", "cifar100", "--data-root", str(dest)]) == 2
    assert "has md5 " + md5 in capsys.readouterr().err
    assert list(dest.iterdir()) == []  # the bad download was removed
    monkeypatch.setattr(cifar, "MD5", md5)
    assert main(["data", "download", "cifar100", "--data-root", str(dest)]) == 0
    assert sorted(p.name for p in dest.iterdir()) == ["cifar-100-python"]
    assert len(DATASETS.get("cifar100").obj(dest, "fscil", {}).train) == 500
    assert main(["data", "download", "cifar100", "--data-root", str(dest)]) == 0
    assert "already there" in capsys.readouterr().out
    assert main(["data", "download", "cub200", "--data-root", str(dest)]) == 2
    assert "data.caltech.edu" in capsys.readouterr().err


def test_archive_member_outside_its_folder_is_refused(tmp_path, monkeypatch, capsys):
    import io
    import tarfile
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    from fsbench.episodes.fscil_splits import file_digest
    monkeypatch.setattr(cifar, "URL", bad.as_uri())
    monkeypatch.setattr(cifar, "MD5", file_digest(bad, "md5"))
    dest = tmp_path / "root"
    assert main(["data", "download", "cifar100", "--data-root", str(dest)]) == 2
    assert "refusing to extract" in capsys.readouterr().err
    assert not (tmp_path / "escaped.txt").exists() and not (dest / "escaped.txt").exists()


def test_registered_names_tasks_and_missing_root():
    tasks = {e.name: e.task for e in DATASETS.entries()}
    assert {k: tasks[k] for k in ("cifar100", "cub200", "miniimagenet", "tieredimagenet",
                                  "cifarfs", "fc100", "omniglot")} == {
        "cifar100": "fscil", "cub200": "both", "miniimagenet": "both", "tieredimagenet": "fsl",
        "cifarfs": "fsl", "fc100": "fsl", "omniglot": "fsl"}
    expected = {"cub200": "CUB_200_2011/images.txt", "miniimagenet": "miniimagenet/split",
                "tieredimagenet": "tiered-imagenet/train_images_png.pkl",
                "omniglot": "omniglot/images_background", "cifarfs": "cifar-100-python/train"}
    for name, layout in expected.items():
        task = "fsl" if tasks[name] == "fsl" else "fscil"
        with pytest.raises(UserError, match="--data-root DIR or set FSBENCH_DATA; expected DIR/"
                                            + layout):
            DATASETS.get(name).obj(None, task, {})


def test_same_size_corruption_of_prepared_cache_is_detected(cub_ro, cache, capsys, caplog):
    """The cache's content hash is checked when the file changed since its last check (and always
    by `data check`): a flipped byte makes the loader fall back to the source files."""
    root, _ = cub_ro
    args = ["--dataset", "cub200", "--data-root", str(root), "--resolution", "16"]
    assert main(["data", "prepare", *args]) == 0
    d = cache / "cub200-train-16"
    assert isinstance(cub(root, resolution=16).train, ArrayDataset)
    assert (d / "verified.json").is_file()  # later opens of the unchanged file skip the hash
    size = (d / "images.npy").stat().st_size
    with open(d / "images.npy", "r+b") as f:
        f.seek(-1, 2)
        b = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([b[0] ^ 0xFF]))
    assert (d / "images.npy").stat().st_size == size
    with caplog.at_level(logging.WARNING, logger="fsbench"):
        again = cub(root, resolution=16)
    assert isinstance(again.train, ImageFiles)
    assert "fails its SHA-256 check" in caplog.text
    capsys.readouterr()
    main(["data", "check", *args, "--no-images"])
    out = capsys.readouterr().out
    assert "cub200-train-16 fails its SHA-256 check" in out and "data prepare" in out


def test_orphan_temporaries_of_dead_writers_are_removed(tmp_path, cache, cub_ro):
    """Temporaries left by killed writers go at the next prepare (and glyphs load); those of
    live processes and recent ones of older versions stay."""
    import os
    import subprocess
    import sys
    import time

    from fsbench.atomic import LEGACY_AGE_S, atomic_write_text, remove_orphans

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    cache.mkdir(parents=True)
    orphans = [cache / f".tmp-cub200-train-16-p{dead}-ab12_c", cache / f".old-x-p{dead}-old",
               cache / f".glyphs-v3-32px.npy.{dead}.k2j4.tmp", cache / ".legacy.npy.q1w2.tmp"]
    kept = [cache / f".tmp-other-p{os.getpid()}-zz9", cache / ".recent.npy.abcd.tmp",
            cache / "keep.txt"]
    for p in orphans[:2] + kept[:1]:
        p.mkdir()
        (p / "images.npy").write_bytes(b"x")
    for p in orphans[2:] + kept[1:]:
        p.write_bytes(b"")
    old = time.time() - LEGACY_AGE_S - 60
    os.utime(orphans[3], (old, old))
    atomic_write_text(cache / "written.json", "{}")  # the writer's own temporary is gone
    root, _ = cub_ro
    assert main(["data", "prepare", "--dataset", "cub200", "--data-root", str(root),
                 "--resolution", "16", "--task", "fsl"]) == 0
    assert not any(p.exists() for p in orphans)
    assert all(p.exists() for p in kept)
    assert remove_orphans(cache) == []
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp") and p not in kept]

"""The embedded ``glyphs`` dataset: rendering, de-duplication, cache, FSL and FSCIL splits."""
import hashlib
import json
import logging
import os
import shutil

import numpy as np
import pytest

from fsbench.episodes import glyphs as g
from fsbench.episodes.base import FSCILBenchmark, FSLBenchmark
from fsbench.errors import UserError


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("fsbench-cache")
        mp.setenv("FSBENCH_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def data(cache):
    return g.load_glyphs()


def _copy_cache(src_root, dst_root):
    """The cache files in ``dst_root``: the array hard-linked (replace it, never write into it)."""
    npy, side = g.cache_paths(32, src_root)
    try:
        os.link(npy, dst_root / npy.name)
    except OSError:
        shutil.copy(npy, dst_root / npy.name)
    shutil.copy(side, dst_root / side.name)
    return g.cache_paths(32, dst_root)


def _replace(path, content: bytes):
    path.unlink()
    path.write_bytes(content)


def test_shapes_and_dtypes(data, cache):
    n = len(data.labels)
    assert data.images.shape == (n, 32, 32) and data.images.dtype == np.uint8
    for a in (data.labels, data.sample_face, data.sample_variant):
        assert a.shape == (n,) and a.dtype == np.int64
    assert len(data.class_names) == len(data.class_scripts) == data.num_classes
    assert data.faces[0] == "DejaVuSans" and len(data.faces) == len(g.FACES)
    assert set(np.unique(data.labels)) == set(range(data.num_classes))
    assert data.sample_variant.max() == g.VARIANTS - 1
    assert data.images.max() == 255 and data.images.mean() > 5  # ink on every image set
    assert (data.images.reshape(n, -1).max(1) > 0).all()
    assert data.sha256 == hashlib.sha256(data.images.tobytes()).hexdigest()
    assert "GREEK SMALL LETTER ALPHA" in data.class_names
    per = np.bincount(data.labels)
    assert per.min() >= g.NUM_SHARED * g.VARIANTS  # every class has the 12 DejaVu faces
    assert f"{data.num_classes} classes (of {data.num_classes_before_dedup}" in data.summary()
    assert all(p.parent == cache for p in g.cache_paths())


def test_dedup(data):
    assert 500 < data.num_classes < data.num_classes_before_dedup
    assert set(data.class_scripts) >= {"LATIN", "GREEK", "CYRILLIC", "ARMENIAN", "GEORGIAN"}
    names = set(data.class_names)
    assert "LATIN SMALL LETTER O" in names  # the first of o / Cyrillic o / Greek omicron is kept
    assert "CYRILLIC SMALL LETTER O" not in names and "GREEK SMALL LETTER OMICRON" not in names
    # no two kept classes are near-identical: re-render a sample and compare
    idx = np.random.default_rng(0).choice(data.num_classes, 250, replace=False)
    ref = g._render([data.class_codepoints[i] for i in idx], 32)[:, :g.NUM_SHARED]
    x = ref.reshape(len(idx), -1).astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T - 2 * np.eye(len(idx))
    assert sim.max() <= g.SIM_THRESHOLD


def test_cache_round_trip(data, cache, monkeypatch):
    # No wall-time bound (timed unit tests fail on loaded machines): a cache hit must neither
    # render a glyph nor rewrite a cache file.
    monkeypatch.setattr(g, "_build", lambda size: pytest.fail("rendered again"))
    monkeypatch.setattr(g, "_render", lambda *a, **k: pytest.fail("rendered again"))
    stamps = {p: p.stat().st_mtime_ns for p in cache.iterdir()}
    again = g.load_glyphs()
    assert {p: p.stat().st_mtime_ns for p in cache.iterdir()} == stamps
    assert again.sha256 == data.sha256 and np.array_equal(again.images, data.images)
    assert np.array_equal(again.labels, data.labels)
    assert again.class_names == data.class_names and again.faces == data.faces
    assert list(cache.glob(".*.tmp")) == []  # atomic writes leave no temporary files


@pytest.mark.parametrize("damage", ["truncate", "version", "sidecar"])
def test_damaged_cache_is_detected(data, cache, tmp_path, monkeypatch, caplog, damage):
    npy, side = _copy_cache(cache, tmp_path)
    if damage == "truncate":
        _replace(npy, npy.read_bytes()[: npy.stat().st_size // 2])
    elif damage == "version":
        meta = json.loads(side.read_text())
        side.write_text(json.dumps({**meta, "version": g.GENERATOR_VERSION - 1}))
    else:
        side.write_text("{not json")

    def rebuild(size):
        raise RuntimeError("rebuild requested")
    monkeypatch.setattr(g, "_build", rebuild)
    with caplog.at_level(logging.WARNING, "fsbench.glyphs"), \
            pytest.raises(RuntimeError, match="rebuild requested"):
        g.load_glyphs(cache_dir=tmp_path)
    assert len(caplog.records) == 1 and "rebuilding" in caplog.records[0].getMessage()


def test_flipped_bytes_rebuild_identically(data, cache, tmp_path, caplog):
    npy, _ = _copy_cache(cache, tmp_path)
    raw = bytearray(npy.read_bytes())
    raw[-5000:-4990] = bytes(255 - b for b in raw[-5000:-4990])
    _replace(npy, bytes(raw))
    with caplog.at_level(logging.WARNING, "fsbench.glyphs"):
        rebuilt = g.load_glyphs(cache_dir=tmp_path)
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and "SHA-256" in msgs[0] and "\n" not in msgs[0]
    # a second render is byte-identical (deterministic), and the repaired cache now loads
    assert rebuilt.sha256 == data.sha256 and np.array_equal(rebuilt.images, data.images)
    caplog.clear()
    assert g.load_glyphs(cache_dir=tmp_path).sha256 == data.sha256 and not caplog.records


def test_fsl_split(data):
    bench = g.glyphs_fsl(data)
    assert isinstance(bench, FSLBenchmark)
    splits = {k: getattr(bench, k) for k in ("train", "val", "test")}
    names = {k: set(ds.class_names) for k, ds in splits.items()}
    assert not names["train"] & names["val"] and not names["train"] & names["test"]
    assert not names["val"] & names["test"]
    script = dict(zip(data.class_names, data.class_scripts))
    scripts = {k: {script[n] for n in v} for k, v in names.items()}
    assert not scripts["test"] & scripts["train"] and not scripts["val"] & scripts["train"]
    assert scripts["test"] == set(g.FSL_SCRIPTS["test"])
    assert sum(len(v) for v in names.values()) == data.num_classes
    for ds in splits.values():
        counts = np.bincount(ds.labels, minlength=ds.num_classes)
        assert len(counts) == ds.num_classes and counts.min() >= 20  # 5 shots + 15 queries
    assert splits["test"].num_classes >= 5
    assert bench.info["split_id"].startswith("glyphs-v") and not bench.info["generated"]
    assert bench.train.load(0).shape == (32, 32, 1)
    json.dumps(bench.info)  # goes into result files


def test_fscil_protocol(data):
    bench = g.glyphs_fscil(data)
    assert isinstance(bench, FSCILBenchmark)
    p = bench.protocol
    p.validate(bench.train.labels)
    assert p.num_classes == len(p.class_order) == 100 == len(np.unique(p.class_order))
    assert (p.num_base, p.way, p.shot, p.num_sessions) == (60, 5, 5, 9)
    assert p.split_id.startswith("glyphs-v") and p.split_id != "generated" and not p.generated
    assert set(np.unique(bench.train.labels)) == set(np.unique(bench.test.labels)) \
        == set(p.class_order)
    pos = p.position_of(bench.train.labels)
    s0 = p.train_indices(0)
    assert np.array_equal(s0, np.flatnonzero(pos < 60))  # base: every training image
    for t in range(1, 9):
        idx = p.train_indices(t)
        assert len(idx) == 25
        assert np.array_equal(np.bincount(pos[idx] - (60 + 5 * (t - 1)), minlength=5), [5] * 5)
    assert np.bincount(p.position_of(bench.test.labels)).min() >= 20
    # train and test share no image; test images come only from held-out faces
    digest = lambda ds: {hashlib.sha1(im.tobytes()).digest() for im in ds.images}  # noqa: E731
    assert not digest(bench.train) & digest(bench.test)
    held = np.isin(data.sample_face, g.HELD_OUT_FACES) & np.isin(data.labels, p.class_order)
    assert len(bench.test) == held.sum()
    # deterministic: same split from the same data
    assert g.glyphs_fscil(data).protocol.split_id == p.split_id
    json.dumps(bench.info)


def test_registry(data, monkeypatch):
    from fsbench.registry import DATASETS
    entry = DATASETS.get("glyphs")
    assert entry.task == "both"
    assert isinstance(entry.obj(None, "fsl", {}), FSLBenchmark)
    assert isinstance(entry.obj(None, "fscil", {"size": "32"}), FSCILBenchmark)
    with pytest.raises(UserError, match="unknown task"):
        entry.obj(None, "segmentation", {})
    with pytest.raises(UserError, match="unknown option"):
        entry.obj(None, "fsl", {"colour": 1})
    with pytest.raises(UserError, match="size"):
        g.load_glyphs(size=2)

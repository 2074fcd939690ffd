"""Tests for fsbench.episodes.sampler (episodic sampler, materialisation, manifests)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import fsbench.episodes.sampler as sampler_mod
from fsbench.episodes.base import ArrayDataset
from fsbench.episodes.sampler import (
    Episode,
    Episodes,
    EpisodeSampler,
    episode_labels,
    labels_sha256,
    load_manifest,
    materialize,
    save_manifest,
)
from fsbench.errors import UserError


def make_labels(num_classes=20, per_class=30, shuffle_seed=0):
    """Labels with non-contiguous class ids, shuffled order (not sorted by class)."""
    ids = np.arange(num_classes) * 3 + 7
    labels = np.repeat(ids, per_class)
    return np.random.default_rng(shuffle_seed).permutation(labels)


@pytest.fixture(scope="module")
def labels():
    return make_labels()


@pytest.fixture(scope="module")
def eps(labels):
    return EpisodeSampler(labels, way=5, shot=5, query=15, seed=0).sample(0, 3000)


# -- structure --------------------------------------------------------------------------------
def test_shapes_and_dtypes(eps):
    assert len(eps) == 3000 and eps.start == 0
    assert eps.classes.shape == (3000, 5)
    assert eps.support.shape == (3000, 5, 5)
    assert eps.query.shape == (3000, 5, 15)
    assert (eps.way, eps.shot, eps.n_query) == (5, 5, 15)
    for a in (eps.classes, eps.support, eps.query):
        assert a.dtype == np.int64


def test_indices_belong_to_their_class(eps, labels):
    assert (labels[eps.support] == eps.classes[:, :, None]).all()
    assert (labels[eps.query] == eps.classes[:, :, None]).all()


def test_classes_distinct_within_episode(eps):
    c = np.sort(eps.classes, axis=1)
    assert (c[:, 1:] != c[:, :-1]).all()


def test_support_query_disjoint_and_samples_distinct(eps):
    both = np.sort(np.concatenate([eps.support, eps.query], axis=2).reshape(len(eps), -1), axis=1)
    assert (both[:, 1:] != both[:, :-1]).all()  # no index twice in an episode (support or query)


def test_class_ids_are_dataset_ids(eps):
    assert set(np.unique(eps.classes)) == set(np.arange(20) * 3 + 7)


def test_excluded_small_classes():
    labels = np.concatenate([np.repeat(np.arange(8), 25), np.repeat([100, 101, 102], 10)])
    s = EpisodeSampler(labels, way=3, shot=5, query=10, seed=1)
    assert s.num_excluded == 3
    assert sorted(s.excluded_classes.tolist()) == [100, 101, 102]
    assert s.num_classes == 8
    e = s.sample(0, 500)
    assert not np.isin(e.classes, [100, 101, 102]).any()


def test_class_exactly_shot_plus_query():
    labels = np.repeat(np.arange(6), 20)
    e = EpisodeSampler(labels, 5, 5, 15).sample(0, 50)
    both = np.concatenate([e.support, e.query], axis=2)
    for i in range(len(e)):
        for c in range(5):  # every sample of the class, each once
            assert sorted(both[i, c]) == sorted(np.flatnonzero(labels == e.classes[i, c]))


# -- determinism ------------------------------------------------------------------------------
def test_deterministic_across_instances(labels):
    a = EpisodeSampler(labels, 5, 5, 15, seed=3).sample(0, 200)
    b = EpisodeSampler(labels.copy(), 5, 5, 15, seed=3).sample(0, 200)
    assert a.equals(b)


def test_invariant_to_sharding(labels):
    s = EpisodeSampler(labels, 5, 5, 15, seed=0)
    whole = s.sample(0, 100)
    parts = Episodes.concat([s.sample(0, 37), s.sample(37, 63)])
    assert whole.equals(parts)
    shards = Episodes.concat([s.shard(100, 3, k) for k in range(3)])
    assert whole.equals(shards)


def test_invariant_to_internal_blocks(labels, monkeypatch):
    s = EpisodeSampler(labels, 5, 5, 15, seed=0)
    ref = s.sample(5, 60)
    monkeypatch.setattr(sampler_mod, "_BLOCK", 7)
    assert s.sample(5, 60).equals(ref)


def test_invariant_to_number_drawn(labels):
    s = EpisodeSampler(labels, 5, 5, 15, seed=0)
    e51, e1000 = s.sample(0, 51), s.sample(0, 1000)
    one = s.episode(50)
    for other in (e51[50], e1000[50]):
        assert other.index == one.index == 50
        np.testing.assert_array_equal(other.classes, one.classes)
        np.testing.assert_array_equal(other.support, one.support)
        np.testing.assert_array_equal(other.query, one.query)


def test_single_episodes_from_cached_blocks(labels):
    """episode(i) is served from cached blocks: any access order (across block boundaries, with
    evictions) gives sample(i, 1)[0], and the cached arrays cannot be modified by a caller."""
    s = EpisodeSampler(labels, 5, 5, 15, seed=3)
    fresh = EpisodeSampler(labels, 5, 5, 15, seed=3)
    order = [0, 63, 64, 1, 700, 65, 128, 192, 256, 320, 0, 5000, 63]
    for i in order:
        got, ref = s.episode(i), fresh.sample(i, 1)[0]
        assert got.index == i
        for a, b in ((got.classes, ref.classes), (got.support, ref.support),
                     (got.query, ref.query)):
            np.testing.assert_array_equal(a, b)
    assert len(s._single) <= sampler_mod._SINGLE_CACHE
    with pytest.raises(ValueError):
        s.episode(3).support[0, 0] = -1
    with pytest.raises(UserError):
        s.episode(-1)


def test_iteration_matches_sample(labels):
    s = EpisodeSampler(labels, 5, 1, 3, seed=2)
    ref = s.sample(0, 300)
    it = iter(s)
    for i in range(300):
        ep = next(it)
        assert ep.index == i and np.array_equal(ep.support, ref.support[i])
    blocks = list(s.batches(300, batch_size=128))
    assert [len(b) for b in blocks] == [128, 128, 44]
    assert Episodes.concat(blocks).equals(ref)


def test_seeds_differ(labels):
    a = EpisodeSampler(labels, 5, 5, 15, seed=0).sample(0, 50)
    b = EpisodeSampler(labels, 5, 5, 15, seed=1).sample(0, 50)
    assert not np.array_equal(a.classes, b.classes)
    assert not np.array_equal(a.support, b.support)


def test_golden_values():
    """Pins the (seed, episode) -> indices mapping: saved manifests and papers rely on it."""
    s = EpisodeSampler(np.repeat(np.arange(10), 30), 3, 2, 3, seed=7)
    e = s.episode(5)
    assert e.classes.tolist() == [2, 6, 8]
    assert e.support.tolist() == [[68, 73], [188, 187], [267, 263]]
    assert e.query.tolist() == [[72, 63, 81], [201, 200, 195], [264, 266, 241]]
    assert s.meta["algorithm"] == sampler_mod.ALGORITHM


# -- uniformity -------------------------------------------------------------------------------
def chi2(counts):
    counts = np.asarray(counts, dtype=float)
    expected = counts.sum() / counts.size
    return float(((counts - expected) ** 2 / expected).sum())


def test_class_frequencies_roughly_uniform(eps, labels):
    ids = np.unique(labels)
    counts = [(eps.classes == c).sum() for c in ids]  # 15,000 draws over 20 classes
    assert chi2(counts) < 60  # df = 19: p < 1e-5 for a correct sampler
    slot0 = [(eps.classes[:, 0] == c).sum() for c in ids]  # label order is random too
    assert chi2(slot0) < 60


def test_sample_positions_roughly_uniform():
    # 4 classes of 12; 2-way 2-shot 4-query: per class 6 of 12 samples, in random order.
    labels = np.repeat(np.arange(4), 12)
    e = EpisodeSampler(labels, 2, 2, 4, seed=5).sample(0, 6000)
    within = e.support % 12  # position inside the class (labels are sorted here)
    assert chi2(np.bincount(within[:, :, 0].ravel(), minlength=12)) < 45  # df = 11
    assert chi2(np.bincount(within[:, :, 1].ravel(), minlength=12)) < 45
    last_q = e.query[:, :, -1] % 12  # Floyd alone would put large values last
    assert chi2(np.bincount(last_q.ravel(), minlength=12)) < 45


# -- labels and lower shots -------------------------------------------------------------------
def test_episode_labels(eps):
    ys = eps.support_labels()
    assert ys.shape == (3000, 25)
    np.testing.assert_array_equal(ys[0], np.repeat(np.arange(5), 5))
    np.testing.assert_array_equal(eps.query_labels()[7], np.repeat(np.arange(5), 15))
    np.testing.assert_array_equal(episode_labels(3, 2), [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(eps.support_indices()[0], eps.support[0].reshape(-1))


def test_with_shot(eps):
    one = eps.with_shot(1)
    assert one.support.shape == (3000, 5, 1)
    np.testing.assert_array_equal(one.support[:, :, 0], eps.support[:, :, 0])
    assert one.query is eps.query and one.classes is eps.classes
    np.testing.assert_array_equal(eps.with_shot(3).support, eps.support[:, :, :3])
    with pytest.raises(UserError, match="6-shot"):
        eps.with_shot(6)
    with pytest.raises(UserError):
        eps.with_shot(0)


# -- input errors -----------------------------------------------------------------------------
def one_line(exc_info):
    msg = str(exc_info.value)
    assert "\n" not in msg and msg
    return msg


def test_error_way_too_large():
    labels = np.concatenate([np.repeat(np.arange(4), 20), np.repeat([9], 3)])
    with pytest.raises(UserError) as ei:
        EpisodeSampler(labels, way=5, shot=5, query=15)
    msg = one_line(ei)
    assert "N-way larger than the classes available" in msg and "4" in msg


def test_error_shot_query_larger_than_every_class():
    labels = np.repeat(np.arange(10), [5, 6, 7, 8, 9, 10, 11, 12, 12, 12])
    with pytest.raises(UserError) as ei:
        EpisodeSampler(labels, way=5, shot=5, query=15)
    msg = one_line(ei)
    assert "20" in msg and "12" in msg and "5..12" in msg  # needed, largest, sizes available
    assert "lower" in msg  # how to fix


@pytest.mark.parametrize("kw", [dict(way=0), dict(shot=0), dict(query=-1), dict(way=2.5),
                                dict(shot=True)])
def test_error_non_positive(labels, kw):
    args = dict(way=5, shot=5, query=15)
    args.update(kw)
    with pytest.raises(UserError) as ei:
        EpisodeSampler(labels, **args)
    assert "positive integer" in one_line(ei)


def test_error_bad_labels_and_range(labels):
    with pytest.raises(UserError):
        EpisodeSampler(np.array([], dtype=np.int64), 1, 1, 1)
    with pytest.raises(UserError):
        EpisodeSampler(labels.astype(float) + 0.5, 1, 1, 1)
    s = EpisodeSampler(labels, 5, 5, 15)
    with pytest.raises(UserError):
        s.sample(-1, 3)
    assert len(s.sample(4, 0)) == 0


# -- materialize ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_ds():
    rng = np.random.default_rng(1)
    lab = np.repeat(np.arange(12), 10)
    imgs = rng.integers(0, 256, size=(lab.size, 6, 5, 3), dtype=np.uint8)
    return ArrayDataset(imgs, lab)


def loop_materialize(ds, e: Episodes):
    """Reference: per-item loop, torchvision ToTensor style."""
    def img(i):
        return torch.from_numpy(ds.load(int(i))).permute(2, 0, 1).float() / 255

    xs = torch.stack([torch.stack([img(i) for i in row]) for row in e.support_indices()])
    xq = torch.stack([torch.stack([img(i) for i in row]) for row in e.query_indices()])
    ys = torch.tensor([[k for k in range(e.way) for _ in range(e.shot)]] * len(e))
    yq = torch.tensor([[k for k in range(e.way) for _ in range(e.n_query)]] * len(e))
    return xs, ys, xq, yq


def test_materialize_matches_loop(small_ds):
    e = EpisodeSampler(small_ds.labels, 4, 2, 3, seed=9).sample(0, 6)
    got = materialize(small_ds, e)
    ref = loop_materialize(small_ds, e)
    assert got[0].shape == (6, 8, 3, 6, 5) and got[2].shape == (6, 12, 3, 6, 5)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.int64
    for g, r in zip(got, ref):
        assert g.is_contiguous()
        torch.testing.assert_close(g, r, rtol=0, atol=1e-6)
    # labels agree with the images' true classes
    true = small_ds.labels[e.support_indices()]
    assert (e.classes[np.arange(6)[:, None], got[1].numpy()] == true).all()


def test_materialize_single_episode_normalised_and_gray(small_ds):
    e = EpisodeSampler(small_ds.labels, 3, 1, 2, seed=4).sample(0, 2)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.5]
    xs, ys, xq, yq = materialize(small_ds, e[1], mean=mean, std=std)
    rxs, rys, rxq, ryq = loop_materialize(small_ds, e[1:2])
    m, sd = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(xs, (rxs[0] - m) / sd, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xq, (rxq[0] - m) / sd, rtol=1e-5, atol=1e-5)
    assert torch.equal(ys, rys[0]) and torch.equal(yq, ryq[0])
    gray = ArrayDataset(small_ds.images[..., 0], small_ds.labels)  # (N, H, W)
    gxs = materialize(gray, e)[0]
    assert gxs.shape == (2, 3, 1, 6, 5)
    torch.testing.assert_close(gxs[:, :, 0], loop_materialize(small_ds, e)[0][:, :, 0])


def test_channel_first_copy_is_made_once_and_labels_are_fresh(small_ds):
    ds = ArrayDataset(small_ds.images, small_ds.labels)
    chw = ds.channels_first()
    assert chw is ds.channels_first() and chw.shape == (120, 3, 6, 5)  # cached
    assert torch.equal(chw, torch.from_numpy(small_ds.images).permute(0, 3, 1, 2))
    gray = ArrayDataset(small_ds.images[..., 0], small_ds.labels)
    assert gray.channels_first().data_ptr() == torch.from_numpy(gray.images).data_ptr()  # a view
    e = EpisodeSampler(ds.labels, 3, 1, 2, seed=1).sample(0, 1)[0]
    ys = materialize(ds, e)[1]
    ys += 7  # a caller's in-place change does not reach the next episode's labels
    assert materialize(ds, e)[1].tolist() == [0, 1, 2]


def test_materialize_channels_last(small_ds):
    e = EpisodeSampler(small_ds.labels, 4, 2, 3, seed=2).sample(3, 5)
    ref = materialize(small_ds, e)
    got = materialize(small_ds, e, channels_last=True, mean=[0.0] * 3, std=[1.0] * 3)
    for g, r in zip(got, ref):
        assert g.shape == r.shape
        torch.testing.assert_close(g, r, rtol=0, atol=1e-6)
    batch = got[2].flatten(0, 1)
    assert batch.shape == (5 * 12, 3, 6, 5)
    assert batch.is_contiguous(memory_format=torch.channels_last)


def test_materialize_memmap_and_generic_dataset(small_ds, tmp_path):
    e = EpisodeSampler(small_ds.labels, 3, 2, 2, seed=8).sample(0, 3)
    ref = materialize(small_ds, e)
    mm = np.lib.format.open_memmap(tmp_path / "imgs.npy", mode="w+", dtype=np.uint8,
                                   shape=small_ds.images.shape)
    mm[:] = small_ds.images
    mm.flush()
    on_disk = ArrayDataset(np.load(tmp_path / "imgs.npy", mmap_mode="r"), small_ds.labels)

    class LoadOnly:  # e.g. a FileDataset: only per-item load()
        labels = small_ds.labels

        def load(self, i):
            return small_ds.load(i)

    for ds in (on_disk, LoadOnly()):
        for g, r in zip(materialize(ds, e), ref):
            assert torch.equal(g, r)


# -- manifests --------------------------------------------------------------------------------
def test_manifest_round_trip(tmp_path, labels):
    s = EpisodeSampler(labels, 5, 5, 15, seed=11)
    e = s.sample(10, 40)
    path = tmp_path / "sub" / "test-5w5s.npz"
    save_manifest(path, e, labels, {**s.meta, "dataset": "toy", "split": "test"})
    assert os.listdir(path.parent) == ["test-5w5s.npz"]  # no temp file left behind
    back, meta = load_manifest(path, labels)
    assert back.equals(e) and back.start == 10
    assert meta["dataset"] == "toy" and meta["way"] == 5 and meta["seed"] == 11
    assert meta["labels_sha256"] == labels_sha256(labels)
    with np.load(path, allow_pickle=False) as z:  # plain arrays only, loadable without pickle
        assert all(z[k].dtype != object for k in z.files)


def test_manifest_other_dataset(tmp_path, labels):
    e = EpisodeSampler(labels, 5, 5, 15).sample(0, 5)
    path = tmp_path / "m.npz"
    save_manifest(path, e, labels, {})
    other_split = make_labels(shuffle_seed=1)  # same classes and sizes, other order
    for other in (other_split, labels[:-1]):
        with pytest.raises(UserError) as ei:
            load_manifest(path, other)
        msg = one_line(ei)
        assert str(path) in msg and "another dataset/split" in msg


def test_manifest_bad_files(tmp_path, labels):
    with pytest.raises(UserError, match="not found"):
        load_manifest(tmp_path / "missing.npz", labels)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"<html>quota exceeded</html>")
    with pytest.raises(UserError, match="junk.npz"):
        load_manifest(junk, labels)
    # tampered indices: checksum mismatch
    e = EpisodeSampler(labels, 5, 5, 15).sample(0, 5)
    path = tmp_path / "m.npz"
    save_manifest(path, e, labels, {})
    with np.load(path) as z:
        data = {k: z[k] for k in z.files}
    data["support"] = data["support"].copy()
    data["support"][0, 0, 0] += 1
    np.savez(path, **data)
    with pytest.raises(UserError, match="corrupt"):
        load_manifest(path, labels)

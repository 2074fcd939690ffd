import numpy as np
import pytest

from fsbench.episodes.protocol import PRESETS, SessionProtocol, fingerprint
from fsbench.errors import UserError


def labels(num_classes=100, per_class=20, shuffle_seed=None):
    y = np.repeat(np.arange(num_classes), per_class)
    if shuffle_seed is not None:
        y = np.random.default_rng(shuffle_seed).permutation(y)
    return y


def test_session_sizes_and_classes():
    y = labels(shuffle_seed=1)
    p = SessionProtocol.from_preset("cifar100", y, seed=3)
    assert p.num_sessions == 9 and p.num_classes == 100
    assert len(p.train_indices(0)) == 60 * 20
    for t in range(1, 9):
        idx = p.train_indices(t)
        assert len(idx) == 25
        pos = p.position_of(y[idx])
        assert sorted(set(pos.tolist())) == list(range(60 + 5 * (t - 1), 60 + 5 * t))
        assert np.all(np.bincount(pos - pos.min()) == 5)
    assert p.num_seen(0) == 60 and p.num_seen(8) == 100
    assert p.session_classes(3).tolist() == list(range(70, 75))


def test_cumulative_test_sets():
    y_train, y_test = labels(), labels(per_class=7, shuffle_seed=2)
    p = SessionProtocol.from_preset("cub200", labels(200, 10))
    prev = set()
    for t in range(p.num_sessions):
        cur = set(p.test_indices(t, labels(200, 7)).tolist())
        assert prev < cur or t == 0
        assert len(cur) == 7 * p.num_seen(t)
        prev = cur
    assert p.num_seen(10) == 200
    del y_train, y_test


def test_class_order_is_respected():
    y = labels(30, 10)
    order = np.random.default_rng(0).permutation(30)
    p = SessionProtocol.generate(y, name="t", num_base=10, way=5, shot=2, num_sessions=5,
                                 class_order=order)
    assert p.position_of(np.array([order[0], order[12], 999])).tolist() == [0, 12, -1]
    assert set(y[p.train_indices(0)].tolist()) == set(order[:10].tolist())
    assert set(y[p.train_indices(2)].tolist()) == set(order[15:20].tolist())


def test_generated_is_deterministic_and_seeded():
    y = labels()
    a = SessionProtocol.from_preset("miniimagenet", y, seed=0)
    b = SessionProtocol.from_preset("miniimagenet", y, seed=0)
    c = SessionProtocol.from_preset("miniimagenet", y, seed=1)
    assert fingerprint(a.session_train_indices) == fingerprint(b.session_train_indices)
    assert fingerprint(a.session_train_indices) != fingerprint(c.session_train_indices)
    assert a.split_id == "generated" and a.generated


def test_official_style_indices_accepted_and_validated():
    y = labels()
    gen = SessionProtocol.from_preset("cifar100", y, seed=5)
    p = SessionProtocol.from_preset("cifar100", y, session_train_indices=gen.session_train_indices,
                                    split_id="abc")
    assert p.split_id == "abc" and not p.generated
    bad = list(gen.session_train_indices)
    bad[2] = bad[3]  # session 2 listing session 3's classes
    with pytest.raises(UserError, match="session 2"):
        SessionProtocol.from_preset("cifar100", y, session_train_indices=bad)
    short = list(gen.session_train_indices)
    short[4] = short[4][:-1]
    with pytest.raises(UserError, match="5 images"):
        SessionProtocol.from_preset("cifar100", y, session_train_indices=short)


def test_too_few_classes_or_shots():
    with pytest.raises(UserError, match="needs 100"):
        SessionProtocol.from_preset("cifar100", labels(50))
    with pytest.raises(UserError, match="fewer than"):
        SessionProtocol.from_preset("cifar100", labels(100, 3))
    assert set(PRESETS) >= {"cifar100", "miniimagenet", "cub200", "glyphs"}

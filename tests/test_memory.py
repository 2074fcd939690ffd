"""fsbench.memory: glibc malloc tuning that keeps freed tensor memory in the process."""
from __future__ import annotations

import sys

import pytest

import fsbench.memory as memory
from fsbench.errors import UserError


def fake_libc(mallopt):
    """A stand-in for ctypes.CDLL("libc.so.6") whose ``mallopt`` is ``mallopt(param, value)``."""
    def fn(k, v):
        return mallopt(k, v)
    return type("Libc", (), {"mallopt": staticmethod(fn)})()


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(memory, "_state", None)
    return memory


def test_opt_out_leaves_malloc_alone(fresh, monkeypatch):
    monkeypatch.setenv(memory.ENV, "system")
    calls = []
    monkeypatch.setattr(memory.ctypes, "CDLL", lambda *a, **k: calls.append(a))
    assert fresh.keep_freed_memory() == "system"
    assert calls == []


def test_bad_choice_is_one_line(fresh, monkeypatch):
    monkeypatch.setenv(memory.ENV, "lots")
    with pytest.raises(UserError, match="FSBENCH_MALLOC='lots': use keep"):
        fresh.keep_freed_memory()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
@pytest.mark.parametrize("value", ["keep", None])  # None: the default
def test_settings_are_applied_once(fresh, monkeypatch, value):
    if value is None:
        monkeypatch.delenv(memory.ENV, raising=False)
    else:
        monkeypatch.setenv(memory.ENV, value)
    seen = []
    monkeypatch.setattr(memory.ctypes, "CDLL",
                        lambda *a, **k: fake_libc(lambda k, v: seen.append((k, v)) or 1))
    assert fresh.keep_freed_memory() == "kept"
    assert fresh.keep_freed_memory() == "kept"  # cached: mallopt runs once per process
    assert dict(seen) == memory.SETTINGS and len(seen) == len(memory.SETTINGS)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_refused_setting_is_reported(fresh, monkeypatch):
    monkeypatch.setenv(memory.ENV, "keep")
    monkeypatch.setattr(memory.ctypes, "CDLL", lambda *a, **k: fake_libc(
        lambda k, v: 0 if k == memory.M_MMAP_THRESHOLD else 1))
    assert fresh.keep_freed_memory() == "unavailable"


def test_channels_last_training_is_opt_in_and_learns():
    """``channels_last: true`` trains the backbone in NHWC order (weights stay channels_last) and
    still fits a separable toy problem; the default keeps NCHW."""
    import numpy as np
    import torch

    from fsbench import api
    from fsbench.baselines.backbones import Conv4
    from fsbench.baselines.training import accuracy, train_supervised
    from fsbench.episodes.base import ArrayDataset
    from fsbench.baselines.protos import CosineClassifier

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(2), 32)
    images = rng.integers(0, 60, (64, 16, 16)).astype(np.uint8)
    images[labels == 0, ::2, :] += 180  # class 0: horizontal stripes, class 1: vertical
    images[labels == 1, :, ::2] += 180
    data = ArrayDataset(images, labels)
    t = {"epochs": 3, "batch_size": 16, "lr": 0.1, "select": "last"}
    for flag in (False, True):
        torch.manual_seed(0)
        cfg = {"channels_last": flag, "train": t}
        ctx = api.build_context(cfg, 1, torch.device("cpu"), 0, progress=False)
        net, head = Conv4(1, 32), CosineClassifier(32, 2)
        train_supervised(net, head, data, ctx, t, 2)
        w = net.features[4].weight  # (32, 32, 3, 3): NHWC strides differ from NCHW ones
        assert w.is_contiguous(memory_format=torch.channels_last) == flag
        assert accuracy(net, head, data, ctx, 2) >= 90.0  # chance is 50

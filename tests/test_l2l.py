"""learn2learn inside fsbench: the maml / anil / metasgd learners, the episode interop, the install.

CI installs learn2learn (`.ci/run` calls `fsbench install-extra learn2learn`), so these tests run
there; without learn2learn the ones that need it skip and say how to install it. The
missing-learn2learn error path and the import-free listing run everywhere.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fsbench import api
from fsbench.cli import main
from fsbench.errors import UserError

NEEDS_L2L = "learn2learn is not installed; run `fsbench install-extra learn2learn`"


@pytest.fixture(scope="module")
def l2l():
    return pytest.importorskip("learn2learn", reason=NEEDS_L2L)


def _learner(method, channels=1, size=16, **opts):
    from fsbench.learner import DataInfo
    from fsbench.registry import METHODS

    cfg = {"backbone": {"name": "conv4", "hidden": 8}, "train": {"way": 5}, method: opts}
    return METHODS.get(method).obj(cfg, DataInfo(channels=channels, image_size=size,
                                                 num_classes=10))


def _task(shot=2, query=3, size=16, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(5, 1, size, size, generator=g)
    ys = torch.arange(5).repeat_interleave(shot)
    yq = torch.arange(5).repeat_interleave(query)
    noise = 0.2
    xs = protos[ys] + noise * torch.randn(len(ys), 1, size, size, generator=g)
    xq = protos[yq] + noise * torch.randn(len(yq), 1, size, size, generator=g)
    return xs, ys, xq, yq


def test_methods_are_listed_without_learn2learn_or_torch():
    code = ("import sys; from fsbench.registry import METHODS; "
            "rows = {n: (t, s) for n, t, s in METHODS.listing()}; "
            "assert all(rows[m][0] == 'fsl' for m in ('maml', 'anil', 'metasgd')), rows; "
            "assert 'learn2learn' not in sys.modules and 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_learn2learn_is_one_line_naming_the_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "learn2learn", None)  # `import learn2learn` now fails
    rc = main(["run", "--method", "maml", "--dataset", "synthetic", "--no-progress",
               "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1
    assert "fsbench install-extra learn2learn" in err and "maml" in err
    assert not any(tmp_path.iterdir())  # nothing left behind


def test_adaptation_changes_the_head_and_lowers_the_support_loss(l2l):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    learner = _learner("maml", inner_lr=0.1)
    xs, ys, _, _ = _task()
    head0 = learner.meta.module[1].weight.detach().clone()
    before = F.cross_entropy(learner.meta(xs), ys).item()
    adapted = learner.adapt(xs, ys, steps=5, first_order=True)
    after = F.cross_entropy(adapted(xs), ys).item()
    assert not torch.equal(adapted.module[1].weight, head0)
    assert torch.equal(learner.meta.module[1].weight, head0)  # the meta-parameters stay put
    assert after < before - 0.05, (before, after)


@pytest.mark.parametrize("method", ["maml", "anil", "metasgd"])
def test_first_and_second_order_meta_gradients(l2l, method):
    """Both orders give finite meta-gradients on every parameter; with second derivatives the
    body's gradients differ from the first-order approximation (ANIL: the head's inner loop)."""
    import torch
    import torch.nn.functional as F

    xs, ys, xq, yq = _task()
    grads = {}
    for first_order in (True, False):
        torch.manual_seed(0)
        learner = _learner(method, inner_lr=0.1)
        loss = F.cross_entropy(
            learner.adapt(xs, ys, 2, first_order)(learner._features(xq)), yq)
        loss.backward()
        params = [p for m in learner.modules().values() for p in m.parameters()]
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
        grads[first_order] = torch.cat([p.grad.flatten() for p in params])
    assert not torch.allclose(grads[True], grads[False])


def test_eval_way_must_match_the_head(l2l):
    from fsbench.learner import DataInfo
    from fsbench.registry import METHODS

    cfg = {"train": {"way": 5}, "eval": {"way": 10}, "maml": {}}
    with pytest.raises(UserError, match="eval.way=10 but train.way=5"):
        METHODS.get("maml").obj(cfg, DataInfo(channels=1, image_size=16, num_classes=10))
    with pytest.raises(UserError, match="maml.features"):
        _learner("maml", features="max")


def test_manifest_taskset_yields_the_manifest_episodes(l2l, tmp_path):
    import torch

    from fsbench.episodes.l2l import manifest_taskset, meta_dataset
    from fsbench.episodes.sampler import EpisodeSampler, materialize, save_manifest
    from fsbench.episodes.synthetic import build_synthetic

    test = build_synthetic(None, "fsl", {}).test
    sampler = EpisodeSampler(test.labels, way=5, shot=3, query=4, seed=7)
    eps = sampler.sample(0, 6)
    path = save_manifest(tmp_path / "episodes.npz", eps, test.labels, sampler.meta)
    assert sorted(meta_dataset(test).labels) == np.unique(test.labels).tolist()
    for shot in (3, 1):
        tasks = manifest_taskset(test, path, shot=shot)
        assert len(tasks) == 6
        for i in (0, 5):
            x, y = tasks[i]
            xs, ys, xq, yq = materialize(test, eps.with_shot(shot)[i])
            assert torch.equal(x, torch.cat([xs, xq]))
            assert torch.equal(y, torch.cat([ys, yq]))
    x, y = tasks[2]
    assert torch.equal(tasks[2][0], x)  # frozen: the same episode every time
    with pytest.raises(UserError, match="another dataset"):
        manifest_taskset(build_synthetic(None, "fsl", {}).train, path)


def test_maml_glyphs_end_to_end(l2l, tmp_path):
    """The glyphs preset on a tiny budget: trains, adapts on the fixed episodes with gradients
    (the runner's needs_grad_at_eval), and is above chance (20%) by 5 points at 5 shots."""
    r = api.run("maml", "glyphs", out_dir=tmp_path, progress=False,
                overrides={"train.iterations": 4, "train.meta_batch": 2, "eval.episodes": 20,
                           "maml.steps_test": 5})
    shots = r["metrics"]["shots"]
    assert set(shots) == {"1", "5"} and shots["5"]["n_episodes"] == 20
    assert shots["5"]["mean"] > 25.0, shots
    assert r["config"]["maml"]["first_order"] is False


def test_install_extra_does_nothing_when_learn2learn_imports(l2l, capsys):
    from fsbench import extras

    assert extras.install("learn2learn") is False
    assert "nothing to do" in capsys.readouterr().out
    with pytest.raises(UserError, match="unknown extra 'gym'"):
        extras.install("gym")

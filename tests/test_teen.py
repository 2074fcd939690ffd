"""TEEN: the calibration function, the learner's session semantics, configuration errors and the
runner end to end on the in-memory ``synthetic`` dataset (a few seconds in all)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fsbench import api
from fsbench.baselines import ncm as ncm_module
from fsbench.baselines.backbones import ResNet20
from fsbench.cli import main
from fsbench.incremental.teen import TEEN, calibrate
from fsbench.learner import DataInfo, Session

FAST = {"train.epochs": 1}


# ----------------------------------------------------------------------------- calibrate()
def test_calibrate_hand_computed_example():
    # Three base prototypes along the axes (lengths 2, 3, 1: calibrate must normalise them) and
    # one novel prototype (3, 4, 0), |p| = 5 -> p_hat = (0.6, 0.8, 0).
    base = torch.tensor([[2.0, 0, 0], [0, 3.0, 0], [0, 0, 1.0]])
    novel = torch.tensor([[3.0, 4.0, 0.0]])
    alpha, tau = 0.25, 2.0
    # cos(p_hat, b_hat_i) = (0.6, 0.8, 0); softmax of tau * cos = softmax(1.2, 1.6, 0).
    e = [math.exp(1.2), math.exp(1.6), math.exp(0.0)]
    w = [v / sum(e) for v in e]  # (0.35804, 0.53413, 0.10784)
    # b_hat are the unit axes, so sum_i w_i b_hat_i = w; normalise it.
    n = math.sqrt(sum(v * v for v in w))
    delta = [v / n for v in w]  # (0.54913, 0.81921, 0.16539)
    expected = [(1 - alpha) * p + alpha * d for p, d in zip([0.6, 0.8, 0.0], delta)]
    assert expected == pytest.approx([0.587283, 0.804802, 0.041348], abs=1e-5)  # by hand
    got = calibrate(novel, base, alpha, tau)
    assert got.shape == (1, 3)
    assert got[0].tolist() == pytest.approx(expected, abs=1e-6)
    # The paper's form: raw prototypes, weighted sum of raw base prototypes, no re-normalisation.
    raw_delta = [w[0] * 2.0, w[1] * 3.0, w[2] * 1.0]
    paper = [(1 - alpha) * p + alpha * d for p, d in zip([3.0, 4.0, 0.0], raw_delta)]
    assert calibrate(novel, base, alpha, tau, "paper")[0].tolist() == pytest.approx(paper, abs=1e-6)


def test_calibrate_invariants():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(12, 8, generator=g).abs()
    novel = torch.randn(4, 8, generator=g).abs()
    out = calibrate(novel, base, 0.5, 16.0)
    # Scale of the inputs does not matter (both are normalised inside).
    scaled = calibrate(novel * torch.tensor([[0.1], [3.0], [7.0], [0.5]]), base * 42.0, 0.5, 16.0)
    assert torch.allclose(out, scaled, atol=1e-6)
    # alpha = 0: plain NCM (the new prototypes' directions); alpha = 1: the base-derived term.
    assert torch.allclose(calibrate(novel, base, 0.0, 16.0), F.normalize(novel, dim=-1), atol=1e-6)
    one = calibrate(novel, base, 1.0, 16.0)
    assert torch.allclose(one.norm(dim=-1), torch.ones(4), atol=1e-6)
    # Each novel prototype is calibrated independently of the others.
    assert torch.allclose(calibrate(novel[2:3], base, 0.5, 16.0), out[2:3], atol=1e-6)
    # The calibrated prototype moves toward its most similar base prototype.
    nearest = (F.normalize(novel, dim=-1) @ F.normalize(base, dim=-1).T).argmax(1)
    b = F.normalize(base[nearest], dim=-1)
    before = (F.normalize(novel, dim=-1) * b).sum(-1)
    after = (F.normalize(out, dim=-1) * b).sum(-1)
    assert (after > before).all()
    # A huge tau makes the softmax one-hot: the shift is the nearest base prototype itself.
    hard = calibrate(novel, base, 1.0, 1e4)
    assert torch.allclose(hard, b, atol=1e-4)


# ----------------------------------------------------------------------------- the learner
def _features_session(t, classes, feats, num_seen):
    class Rows:  # just the labels of a session's images
        labels = np.repeat(classes, 5)
    return Session(index=t, data=Rows(), new_classes=np.asarray(classes), num_seen=num_seen,
                   features=feats)


def test_learner_session_semantics():
    info = DataInfo(channels=1, image_size=16, num_classes=16, num_base=6, way=5, shot=5)
    cfg = {"backbone": {"name": "conv4", "hidden": 8}, "classifier": {"scale": 16},
           "teen": {"alpha": 0.5, "tau": 16, "variant": "code"}}
    g = torch.Generator().manual_seed(1)
    base_means = torch.randn(6, 8, generator=g).abs()
    s1 = torch.randn(25, 8, generator=g).abs()
    s2 = torch.randn(25, 8, generator=g).abs()

    def fresh():
        m = TEEN(cfg, info)
        m.set_rows(np.arange(6), base_means)
        m.num_seen = 6
        return m

    m = fresh()
    w0 = m.classifier.weight.detach().clone()
    m.learn_session(_features_session(1, np.arange(6, 11), s1, 11), None)
    w1 = m.classifier.weight.detach().clone()
    changed = (w1 != w0).any(1)
    assert changed[6:11].all() and not changed[:6].any() and not changed[11:].any()
    m.learn_session(_features_session(2, np.arange(11, 16), s2, 16), None)
    w2 = m.classifier.weight.detach().clone()
    changed = (w2 != w1).any(1)
    assert changed[11:16].all() and not changed[:11].any()  # earlier calibrated rows stay
    assert torch.equal(w2[:6], F.normalize(base_means, dim=-1))  # base rows never change
    # Rows are the calibrated class means of the session's shots.
    means = torch.stack([s1[5 * i:5 * i + 5].mean(0) for i in range(5)])
    assert torch.allclose(w1[6:11], F.normalize(calibrate(means, base_means, 0.5, 16.0), dim=-1),
                          atol=1e-6)
    # Session 2 is calibrated against the base prototypes only, not session 1's classes.
    other = fresh()
    other.learn_session(_features_session(1, np.arange(6, 11), s1 * -3.0 + 1.0, 11), None)
    other.learn_session(_features_session(2, np.arange(11, 16), s2, 16), None)
    assert torch.allclose(other.classifier.weight[11:16], w2[11:16], atol=1e-6)
    # Checkpoint round trip keeps the raw base prototypes (the paper variant needs them).
    again = TEEN(cfg, info)
    again.load_state_dict(m.state_dict())
    assert torch.equal(again.raw_prototypes[:6], base_means) and again.num_seen == 16


# ----------------------------------------------------------------------------- the runner
def test_alpha_zero_is_ncm_and_select_on_test_flag(tmp_path, monkeypatch):
    selects = []
    original = ncm_module.train_supervised

    def spy(*a, **kw):
        log = original(*a, **kw)
        selects.append(log["select"])
        return log
    monkeypatch.setattr(ncm_module, "train_supervised", spy)
    t0 = api.run("teen", "synthetic", overrides={**FAST, "teen.alpha": 0.0},
                 out_dir=tmp_path / "a", progress=False)
    n = api.run("ncm", "synthetic", overrides=FAST, out_dir=tmp_path / "b", progress=False)
    strip = lambda r: [{k: v for k, v in s.items() if k != "seconds"}  # noqa: E731
                       for s in r["metrics"]["sessions"]]
    assert strip(t0) == strip(n)
    assert t0["flags"]["selected_on_test"] is False and selects == ["val", "val"]
    t = api.run("teen", "synthetic", overrides={**FAST, "select_on_test": True},
                out_dir=tmp_path / "c", progress=False)
    assert selects[-1] == "test" and t["flags"]["selected_on_test"] is True
    assert t["method"] == "teen" and t["config"]["teen"] == {"alpha": 0.5, "tau": 16,
                                                           "variant": "code"}
    assert len(t["metrics"]["sessions"]) == 5


def test_resume_restores_base_prototypes(tmp_path):
    # Sessions after a resume calibrate against the base prototypes saved in the checkpoint.
    full = api.run("teen", "synthetic", overrides=FAST, out_dir=tmp_path / "a", progress=False)
    part = api.run("teen", "synthetic", overrides=FAST, out_dir=tmp_path / "b", progress=False,
                   stop_after=1)
    resumed = api.run(None, None, resume=part["run_dir"], progress=False)
    strip = lambda r: [{k: v for k, v in s.items() if k != "seconds"}  # noqa: E731
                       for s in r["metrics"]["sessions"]]
    assert resumed["status"] == "complete" and strip(resumed) == strip(full)


# ----------------------------------------------------------------------------- bad input
def _state_file(tmp_path, name, obj):
    p = tmp_path / name
    torch.save(obj, p)
    return p


@pytest.mark.parametrize("sets,needle", [
    (["teen.alpha=1.5"], "teen.alpha = 1.5: input should be less than or equal to 1"),
    (["teen.alpha=-0.1"], "teen.alpha = -0.1: input should be greater than or equal to 0"),
    (["teen.tau=0"], "teen.tau = 0: input should be greater than 0"),
    (["teen.tau=-2"], "teen.tau = -2: input should be greater than 0"),
    (["teen.variant=both"], "teen.variant = 'both': input should be 'code' or 'paper'"),
    (["backbone={name: resnet18, weights: WEIGHTS/missing.pth}"], "not found; download"),
    (["backbone={name: resnet18, weights: WEIGHTS/resnet20.pth}"],
     "not a torchvision ResNet-18 checkpoint"),
    (["backbone={name: resnet18, weights: WEIGHTS/list.pth}"], "does not hold a state dict"),
    (["backbone={name: resnet18, weights: WEIGHTS/text.pth}"], "not a loadable weights-only"),
    (["pretraining=imagenet", "backbone={name: resnet18, weights: null}"],
     "needs ImageNet weights"),
])
def test_bad_input_one_line_exit_2(tmp_path, capsys, sets, needle):
    weights = tmp_path / "weights"
    weights.mkdir()
    _state_file(weights, "resnet20.pth", ResNet20(3).state_dict())
    _state_file(weights, "list.pth", [torch.zeros(2), torch.ones(2)])
    (weights / "text.pth").write_text("not a checkpoint\n")
    out = tmp_path / "runs"
    argv = ["run", "--method", "teen", "--dataset", "synthetic", "--out", str(out),
            "--no-progress"]
    for s in sets:
        argv += ["--set", s.replace("WEIGHTS", str(weights))]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


# ----------------------------------------------------------------------------- CUB end to end
def test_cub_end_to_end_official_format_splits(tmp_path, monkeypatch):
    """A fabricated CUB_200_2011 tree + index_list/cub200/session_{1..11}.txt in the official
    format (their checksums made the expected ones), torchvision-format ResNet-18 weights, the
    cub200 preset with a one-epoch budget and 16 px images (ResNet-18 at 224 px is minutes on a
    CPU): every session runs, the split is the files' and the ImageNet weights are recorded."""
    import fabricate
    import torchvision

    from fsbench.episodes import fscil_splits

    root = tmp_path / "data"
    fab = fabricate.cub200(root, train_per_class=5, test_per_class=1)
    fabricate.cub_split_files(tmp_path / "index_list", fab)
    table = {k: dict(v) for k, v in fscil_splits.checksums().items()}
    table["cub200"] = {n: {"sha256": fscil_splits.sha256_file(tmp_path / "index_list" / "cub200"
                                                              / n)}
                       for n in (f"session_{t}.txt" for t in range(1, 12))}
    monkeypatch.setattr(fscil_splits, "checksums", lambda: table)
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    r = api.run("teen", "cub200", data_root=root, split_dir=tmp_path / "index_list",
                overrides={"train.epochs": 1, "backbone.weights": str(weights),
                           "transforms.train": [{"name": "random_resized_crop", "size": 16},
                                                {"name": "hflip"}],
                           "transforms.test": [{"name": "resize", "size": 18},
                                               {"name": "center_crop", "size": 16}]},
                out_dir=tmp_path / "runs", progress=False)
    s = r["metrics"]["sessions"]
    assert [x["num_seen"] for x in s] == list(range(100, 201, 10))
    assert [x["num_test"] for x in s] == list(range(100, 201, 10))  # one test image per class
    assert all(x["novel_acc"] is not None for x in s[1:])
    assert r["split"]["generated"] is False and r["flags"]["generated_split"] is False
    assert r["split"]["protocol"] == {"name": "cub200", "num_base": 100, "way": 10, "shot": 5,
                                      "num_sessions": 11}
    assert r["pretraining"] == "imagenet" and r["backbone"] == "resnet18"
    assert r["flags"]["nonstandard_backbone"] is False and r["flags"]["selected_on_test"] is False
    assert r["config"]["teen"] == {"alpha": 0.5, "tau": 16, "variant": "code"}
    assert r["config"]["classifier"]["scale"] == 32 and r["config"]["train"]["lr"] == 0.004

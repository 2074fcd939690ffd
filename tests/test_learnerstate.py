"""Checkpoints keep a learner's tensor, NumPy and plain attributes (fsbench/learnerstate.py):
a plug-in that keeps its prototypes in a plain tensor resumes to identical numbers."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from test_plugins import PLAIN_LEARNER, _sessions, write_plugin

from fsbench import api
from fsbench.errors import UserError
from fsbench.learner import DataInfo, FSCILLearner
from fsbench.learnerstate import remember_initial


def test_plain_tensor_state_survives_a_resume_mid_run(tmp_path):
    path = tmp_path / "means_method.py"
    write_plugin(tmp_path)
    path.write_text(PLAIN_LEARNER)  # no extra_state: protos and num_seen are plain attributes
    spec = f"{path}:Means"
    full = api.run(spec, "synthetic", out_dir=tmp_path / "a", progress=False)
    part = api.run(spec, "synthetic", out_dir=tmp_path / "b", progress=False, stop_after=2)
    resumed = api.run(None, None, resume=part["run_dir"], progress=False)
    assert resumed["status"] == "complete"
    assert _sessions(resumed) == _sessions(full)
    assert resumed["metrics"]["sessions"][4]["base_acc"] > 20  # lost prototypes gave 0.0


class Stateful(FSCILLearner):
    def __init__(self, config, info):
        super().__init__(config, info)
        self.net = torch.nn.Linear(2, 2)
        self.protos = torch.zeros(3, 2)
        self.weight = torch.nn.Parameter(torch.ones(2))
        self.counts = np.zeros(3, dtype=np.int32)
        self.opts = {"alpha": config.get("alpha", 0.5)}  # derived from the configuration
        self.frozen = torch.arange(4.0)                   # set once, never changed

    def fit_base(self, session, ctx): ...
    def learn_session(self, session, ctx): ...
    def predict(self, x): ...


def _trained(alpha=0.5) -> Stateful:
    learner = Stateful({"alpha": alpha}, DataInfo(channels=1, image_size=4, num_classes=3))
    remember_initial(learner)
    learner.protos[1] = torch.tensor([1.0, 2.0])
    with torch.no_grad():
        learner.weight.mul_(3)
    learner.counts[2] = 7
    learner.num_seen = 2
    learner.scale = np.float32(1.5)
    learner.names = ["a", ("b", None)]
    learner.history = {"loss": [0.5, 0.25], "best": {"epoch": 1}}
    learner.labels = np.array(["x", "yy"])
    return learner


def _round_trip(state) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_attributes_round_trip_with_their_types_under_weights_only():
    state = _round_trip(_trained().state_dict())
    assert set(state["attributes"]) == {"protos", "weight", "counts", "num_seen", "scale",
                                        "names", "history", "labels"}  # not opts, frozen
    fresh = Stateful({"alpha": 0.1}, DataInfo(channels=1, image_size=4, num_classes=3))
    weight = fresh.weight
    fresh.load_state_dict(state)
    assert torch.equal(fresh.protos, torch.tensor([[0.0, 0], [1, 2], [0, 0]]))
    assert fresh.weight is weight and isinstance(fresh.weight, torch.nn.Parameter)
    assert torch.equal(fresh.weight.detach(), torch.full((2,), 3.0))
    assert isinstance(fresh.counts, np.ndarray) and fresh.counts.dtype == np.int32
    assert fresh.counts.tolist() == [0, 0, 7]
    assert isinstance(fresh.scale, np.float32) and fresh.scale == 1.5
    assert fresh.labels.tolist() == ["x", "yy"] and fresh.labels.dtype == np.dtype("<U2")
    assert fresh.names == ["a", ("b", None)] and fresh.num_seen == 2
    assert fresh.history == {"loss": [0.5, 0.25], "best": {"epoch": 1}}
    assert fresh.opts == {"alpha": 0.1}  # the new configuration's value is kept


def test_an_attribute_that_cannot_be_saved_is_refused_by_name():
    learner = _trained()
    learner.opt = torch.optim.SGD(learner.net.parameters(), lr=0.1)
    with pytest.raises(UserError, match=r"Stateful\.opt \(SGD\) cannot be checkpointed"):
        learner.state_dict()
    Stateful.checkpoint_exclude = ("opt",)
    try:
        assert "opt" not in learner.state_dict()["attributes"]
    finally:
        del Stateful.checkpoint_exclude


def test_a_learner_built_from_python_snapshots_itself():
    """A learner used from Python (no runner) snapshots its constructor's values itself: they are
    not saved, so loading one learner's state into another built with another configuration
    keeps the other's own (TEEN's ``opts`` with another alpha)."""
    learner = Stateful({"alpha": 0.1}, DataInfo(channels=1, image_size=4, num_classes=3))
    learner.protos[0] = torch.tensor([3.0, 4.0])
    saved = learner.state_dict()["attributes"]
    assert "protos" in saved and not {"opts", "frozen", "counts"} & set(saved)
    other = Stateful({"alpha": 0.0}, DataInfo(channels=1, image_size=4, num_classes=3))
    other.load_state_dict(learner.state_dict())
    assert other.opts == {"alpha": 0.0} and torch.equal(other.protos, learner.protos)


def test_without_a_snapshot_every_plain_attribute_is_saved():
    """A learner without a constructor of its own has no snapshot: everything plain is saved."""
    class Bare(FSCILLearner):
        def fit_base(self, session, ctx): ...
        def learn_session(self, session, ctx): ...
        def predict(self, x): ...

    learner = Bare({}, DataInfo(channels=1, image_size=4, num_classes=3))
    learner.protos, learner.opts = torch.zeros(2), {"alpha": 0.5}
    assert {"protos", "opts"} <= set(learner.state_dict()["attributes"])
"""Backbones beyond the built-ins: ``register_backbone`` and timm models by name
(``backbone.name: timm/<model>``) with weights from a local file only."""
import pytest
import torch
import torch.nn as nn

from fsbench import api
from fsbench.baselines import backbones
from fsbench.baselines.backbones import build_backbone, register_backbone
from fsbench.errors import UserError

FAST = {"train.episodes": 2, "eval.episodes": 20}


class _Tiny(nn.Module):
    def __init__(self, in_channels, hidden):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.out_dim = hidden

    def forward(self, x):
        return self.conv(x).relu().mean((2, 3))


@pytest.fixture
def tiny_registered(monkeypatch):
    from fsbench.registry import BACKBONES

    monkeypatch.setattr(BACKBONES, "_entries", dict(BACKBONES._entries))
    register_backbone("tiny")(lambda c, hidden=64: _Tiny(c, hidden))
    return "tiny"


def test_registered_backbone_runs_from_the_config(tiny_registered, tmp_path):
    assert "tiny" in backbones.available()
    net = build_backbone({"name": "tiny", "hidden": 16}, 1)
    assert net(torch.zeros(2, 1, 8, 8)).shape == (2, 16)
    r = api.run("protonet", "synthetic", overrides={**FAST, "backbone.name": "tiny"},
                out_dir=tmp_path, progress=False, loggers=[])
    assert r["backbone"] == "tiny" and r["metrics"]["shots"]["5"]["mean"] > 0
    with pytest.raises(ValueError):
        register_backbone("timm/mine")


def test_timm_model_by_name_and_local_weights(tmp_path):
    net = build_backbone({"name": "timm/test_resnet"}, 1).eval()
    x = torch.randn(2, 1, 32, 32)
    assert net(x).shape == (2, net.out_dim) and net.feature_map(x).shape[:2] == (2, net.out_dim)
    path = tmp_path / "w.pt"
    torch.save(net.net.state_dict(), path)
    again = build_backbone({"name": "timm/test_resnet", "weights": str(path)}, 1).eval()
    with torch.no_grad():
        assert torch.equal(again(x), net(x))  # the file's weights, not fresh ones


@pytest.mark.parametrize("cfg, needle", [
    ({"name": "timm/no_such_net"}, "timm has no model 'no_such_net'"),
    ({"name": "timm/test_resnet", "pretrained": True}, "never downloads weights"),
    ({"name": "timm/test_resnet", "weights": "/nonexistent/w.pt"}, "never downloads"),
    ({"name": "timm/test_resnet", "depth": 3}, "bad option for timm/test_resnet"),
])
def test_timm_refusals_are_one_line(cfg, needle):
    with pytest.raises(UserError, match=needle):
        build_backbone(cfg, 3)


def test_timm_backbone_in_a_run(tmp_path):
    r = api.run("protonet", "synthetic", overrides={
        **FAST, "backbone.name": "timm/test_resnet", "backbone.hidden": None},
        out_dir=tmp_path, progress=False, loggers=[])
    assert r["backbone"] == "timm/test_resnet" and r["metrics"]["shots"]["1"]["mean"] > 0

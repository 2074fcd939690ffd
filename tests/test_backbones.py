import pytest
import torch

from fsbench.baselines.backbones import available, build_backbone
from fsbench.errors import UserError


@pytest.mark.parametrize("name,cfg,channels,size,dim", [
    ("conv4", {}, 1, 32, 64),
    ("resnet12", {}, 3, 32, 640),
    ("resnet18", {"cifar_stem": True}, 1, 32, 512),
    ("resnet18", {}, 3, 64, 512),
    ("resnet20", {}, 3, 32, 64),
    ("resnet50", {}, 3, 64, 2048),
])
def test_backbone_output_dims(name, cfg, channels, size, dim):
    net = build_backbone({"name": name, **cfg}, channels).eval()
    with torch.no_grad():
        out = net(torch.zeros(2, channels, size, size))
    assert out.shape == (2, dim) and net.out_dim == dim


def test_unknown_backbone_and_option():
    assert set(available()) >= {"conv4", "resnet12", "resnet18", "resnet20", "resnet50"}
    with pytest.raises(UserError, match="unknown backbone 'vgg'"):
        build_backbone({"name": "vgg"}, 3)
    with pytest.raises(UserError, match="bad option for conv4"):
        build_backbone({"name": "conv4", "depth": 9}, 3)

"""Backbones used by the FSL and FSCIL literature, one factory: :func:`build_backbone`.

* ``conv4``    - 4 x [3x3 conv, BN, ReLU, 2x2 max-pool] (Vinyals et al. 2016; Snell et al. 2017).
* ``resnet12`` - the FSL ResNet-12 (Lee et al. 2019, MetaOptNet; 64-160-320-640), no DropBlock.
* ``resnet18`` - torchvision's ResNet-18 (He et al. 2016), 512-d; ``cifar_stem: true`` swaps the
  7x7/stride-2 stem and max-pool for a 3x3/stride-1 stem. Loads torchvision checkpoints.
* ``resnet50`` - torchvision's ResNet-50 trunk, 2048-d (BECLR).
* ``resnet20`` - the CIFAR ResNet-20 of TOPIC/CEC/TEEN (3 stages x 3 basic blocks, 16-32-64).
* ``timm/<model>`` - any timm model by name, without its classifier (:class:`TimmBackbone`);
  weights from a local file only.

More: :func:`register_backbone`.

Every backbone maps ``(B, C, H, W)`` to ``(B, out_dim)`` (global average pooling);
``feature_map(x)`` gives the map before that pooling, ``(B, out_dim, h, w)`` (Mamba-FSCIL's neck).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from fsbench.errors import UserError


class Conv4(nn.Module):
    def __init__(self, in_channels: int = 3, hidden: int = 64, pool_last: bool = True):
        super().__init__()
        layers = []
        for i in range(4):
            layers += [nn.Conv2d(in_channels if i == 0 else hidden, hidden, 3, padding=1, bias=False),
                       nn.BatchNorm2d(hidden), nn.ReLU(inplace=True)]
            if i < 3 or pool_last:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.out_dim = hidden

    def feature_map(self, x):
        return self.features(x)

    def forward(self, x):
        return F.adaptive_avg_pool2d(self.feature_map(x), 1).flatten(1)


class _Res12Block(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.1),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.1),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))
        self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        return self.pool(F.leaky_relu(self.body(x) + self.short(x), 0.1))


class ResNet12(nn.Module):
    def __init__(self, in_channels: int = 3, widths=(64, 160, 320, 640)):
        super().__init__()
        chans = [in_channels, *widths]
        self.layers = nn.Sequential(*[_Res12Block(chans[i], chans[i + 1]) for i in range(4)])
        self.out_dim = widths[-1]

    def feature_map(self, x):
        return self.layers(x)

    def forward(self, x):
        return F.adaptive_avg_pool2d(self.feature_map(x), 1).flatten(1)


class _BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.down is None else self.down(x)))


class ResNet20(nn.Module):
    """CIFAR ResNet-20 (He et al. 2016, §4.2): 3 stages of 3 basic blocks, 16/32/64 channels."""

    def __init__(self, in_channels: int = 3, widths=(16, 32, 64), blocks: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            for b in range(blocks):
                layers.append(_BasicBlock(cin, w, 2 if (b == 0 and i > 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.out_dim = widths[-1]

    def feature_map(self, x):
        return self.layers(F.relu(self.bn1(self.conv1(x))))

    def forward(self, x):
        return F.adaptive_avg_pool2d(self.feature_map(x), 1).flatten(1)


class TorchvisionResNet(nn.Module):
    """A torchvision ResNet trunk (same parameter names, so torchvision checkpoints load)."""

    depth = 18
    out_dim = 512

    def __init__(self, in_channels: int = 3, cifar_stem: bool = False, frozen_stages: int = -1):
        """``frozen_stages`` as mmcls' ResNet: -1 none, 0 the stem, k the stem and ``layer1..k``
        (no gradient, BatchNorm kept in eval mode; Mamba-FSCIL's CUB config uses 1)."""
        super().__init__()
        if not isinstance(frozen_stages, int) or isinstance(frozen_stages, bool) \
                or not -1 <= frozen_stages <= 4:
            raise UserError(f"backbone.frozen_stages: {frozen_stages!r} is not -1..4")
        self.frozen_stages = frozen_stages
        net = getattr(torchvision.models, f"resnet{self.depth}")(weights=None)
        if cifar_stem or in_channels != 3:
            k, s, p = (3, 1, 1) if cifar_stem else (7, 2, 3)
            net.conv1 = nn.Conv2d(in_channels, 64, k, s, p, bias=False)
        if cifar_stem:
            net.maxpool = nn.Identity()
        net.fc = nn.Identity()
        self.net = net
        for m in self._frozen():
            m.requires_grad_(False)

    def _frozen(self) -> list:
        n = self.net
        stem = [n.conv1, n.bn1] if self.frozen_stages >= 0 else []
        return stem + [getattr(n, f"layer{i}") for i in range(1, self.frozen_stages + 1)]

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self._frozen():
            m.eval()
        return self

    def feature_map(self, x):
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))

    def forward(self, x):
        return self.net(x)


class ResNet50(TorchvisionResNet):
    """torchvision ResNet-50 trunk, 2048-d (BECLR's RN-50 encoder)."""

    depth = 50
    out_dim = 2048


class ResNet18(TorchvisionResNet):
    """torchvision ResNet-18 trunk, 512-d; loads torchvision's ImageNet checkpoint."""

    depth = 18
    out_dim = 512

    def load_torchvision(self, path: str | Path) -> None:
        """Load a torchvision ``resnet18`` state dict (``fc.*`` is ignored)."""
        state = load_state_dict_file(path, "backbone.weights")
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        own = self.net.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        wrong = [k for k in state if k in own and state[k].shape != own[k].shape]
        if missing or unexpected or wrong:
            detail = (f"missing {missing[:3]}" if missing else
                      f"unexpected {unexpected[:3]}" if unexpected else f"wrong shape {wrong[:3]}")
            raise UserError(f"backbone.weights {path}: not a torchvision ResNet-18 checkpoint "
                            f"({detail}); use the file torchvision's resnet18 "
                            f"(ResNet18_Weights.IMAGENET1K_V1) downloads")
        self.net.load_state_dict(state, strict=False)


def load_state_dict_file(path: str | Path, field: str,
                         fix: str = "download torchvision's ImageNet ResNet-18 weights "
                                    "(resnet18-f37072fd.pth) and pass its path") -> dict:
    """``torch.load(weights_only=True)`` with one-line errors; unwraps ``{"state_dict": ...}``.
    ``fix`` says what to do when the file is missing."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{field}: file {path} not found; {fix}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a user error here
        raise UserError(f"{field}: {path} is not a loadable weights-only PyTorch file "
                        f"({type(e).__name__}); pass a state dict saved with torch.save") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{field}: {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "conv4": lambda c, **kw: Conv4(c, **kw),
    "resnet12": lambda c, **kw: ResNet12(c, **kw),
    "resnet18": lambda c, **kw: ResNet18(c, **kw),
    "resnet20": lambda c, **kw: ResNet20(c, **kw),
    "resnet50": lambda c, **kw: ResNet50(c, **kw),
}


def register_backbone(name: str, *, summary: str = ""):
    """Make ``factory(in_channels, **options) -> nn.Module`` available as ``backbone.name``
    (:func:`fsbench.registry.register_backbone`, where entry points also land). The module maps
    ``(B, C, H, W)`` to ``(B, out_dim)`` and has an ``out_dim`` attribute (``feature_map`` where a
    method needs the map before pooling)::

        @register_backbone("conv6")
        def conv6(in_channels, hidden=64):
            return MyConv6(in_channels, hidden)
    """
    if not name or "/" in name:
        raise ValueError(f"backbone name {name!r}: use a plain name (timm/... is reserved)")
    from fsbench.registry import register_backbone as register

    return register(name, summary=summary)


class TimmBackbone(nn.Module):
    """A `timm <https://github.com/huggingface/pytorch-image-models>`_ model by name
    (``backbone.name: timm/<model>``), without its classifier: ``forward`` gives the pooled
    ``(B, num_features)`` features, ``feature_map`` timm's ``forward_features`` (``(B, C, h, w)``
    for CNNs, tokens for ViTs). Built with ``pretrained=False``: weights come from a local file
    (``backbone.weights``) only, never from the network."""

    def __init__(self, model: str, in_channels: int, **options):
        super().__init__()
        try:
            import timm
        except ImportError:
            raise UserError("backbone.name: timm/... needs timm: pip install timm") from None
        if not timm.is_model(model):
            close = timm.list_models(f"*{model.split('_')[0]}*")[:5]
            raise UserError(f"backbone.name: timm has no model {model!r}"
                            + (f"; similar: {', '.join(close)}" if close else ""))
        self.net = timm.create_model(model, pretrained=False, num_classes=0,
                                     in_chans=in_channels, **options)
        self.out_dim = int(self.net.num_features)

    def feature_map(self, x):
        return self.net.forward_features(x)

    def forward(self, x):
        return self.net(x)

    def load_weights(self, path: str | Path) -> None:
        """A timm / PyTorch state dict for this model from a local file; classifier weights
        (``head``, ``fc``, ``classifier``) are dropped."""
        state = load_state_dict_file(path, "backbone.weights", "pass the path of a local "
                                     "state dict of this timm model (fsbench never downloads)")
        drop = {k for k in state if k.split(".")[0] in ("head", "fc", "classifier")
                and k not in self.net.state_dict()}
        state = {k: v for k, v in state.items() if k not in drop}
        try:
            self.net.load_state_dict(state)
        except RuntimeError as e:
            first = " ".join(str(e).split())[:200]
            raise UserError(f"backbone.weights {path}: does not fit this timm model ({first})") \
                from None


def check_pretraining(config: dict) -> None:
    """``pretraining: imagenet`` needs ``backbone.weights`` (a one-line UserError otherwise)."""
    if config.get("pretraining") == "imagenet" and not (config.get("backbone") or {}).get(
            "weights"):
        raise UserError("pretraining: imagenet needs ImageNet weights: pass --set "
                        "backbone.weights=PATH (torchvision's resnet18-f37072fd.pth), or "
                        "--set pretraining=none to train the backbone from scratch")


def available() -> list[str]:
    """Built-in and registered backbone names (and the timm pattern)."""
    from fsbench.registry import BACKBONES

    return sorted(set(_BUILDERS) | set(BACKBONES.names())) + ["timm/<model>"]


def _plugin_backbone(name: str):
    """A backbone registered with ``fsbench.registry.register_backbone`` or an entry point."""
    from fsbench.registry import BACKBONES

    if not isinstance(name, str) or name not in BACKBONES:
        raise UserError(f"backbone.name: unknown backbone {name!r}; valid: "
                        f"{', '.join(available())}")
    return BACKBONES.get(name).obj


def build_backbone(cfg: dict, in_channels: int) -> nn.Module:
    """``cfg``: ``{name: resnet18 | timm/<model> | a registered name, weights: PATH|null,
    **architecture kwargs}``."""
    cfg = {k: v for k, v in (cfg or {}).items() if v is not None}  # null: not given
    name = cfg.pop("name", "conv4")
    weights = cfg.pop("weights", None)
    if cfg.pop("pretrained", None):
        raise UserError("backbone.pretrained: fsbench never downloads weights; pass "
                        "backbone.weights=PATH (a local file) instead")
    if isinstance(name, str) and name.startswith("timm/"):
        try:
            net = TimmBackbone(name[len("timm/"):], in_channels, **cfg)
        except TypeError as e:
            raise UserError(f"backbone: bad option for {name}: {e}") from None
        if weights:
            net.load_weights(weights)
        return net
    builder = _BUILDERS.get(name) or _plugin_backbone(name)
    try:
        net = builder(in_channels, **cfg)
    except TypeError as e:
        raise UserError(f"backbone: bad option for {name}: {e}") from e
    if weights:
        if not hasattr(net, "load_torchvision"):
            raise UserError(f"backbone.weights: pretrained weights are supported for resnet18 "
                            f"and timm/... only, not {name}")
        net.load_torchvision(weights)
    return net

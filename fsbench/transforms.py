"""Image transforms built from preset data (names + arguments), applied to ``HxWxC`` uint8 arrays.

A preset lists them, e.g.::

    transforms:
      train: [{name: random_resized_crop, size: 84}, {name: hflip}]
      test:  [{name: resize, size: 92}, {name: center_crop, size: 84}]
      normalize: {mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}

Every pipeline ends with conversion to ``float32`` in [0, 1] and the normalisation.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torchvision.transforms import v2

from fsbench.errors import UserError


def _autoaugment(policy: str = "cifar10"):
    pol = {"cifar10": v2.AutoAugmentPolicy.CIFAR10, "imagenet": v2.AutoAugmentPolicy.IMAGENET,
           "svhn": v2.AutoAugmentPolicy.SVHN}
    if policy not in pol:
        raise UserError(f"transform autoaugment: policy must be one of {sorted(pol)}, not {policy!r}")
    return v2.AutoAugment(pol[policy])


def _cutout(size: int = 16):
    # Cutout (DeVries & Taylor 2017): one square hole of ``size`` pixels, always applied.
    def cut(img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        cy, cx = np.random.randint(h), np.random.randint(w)
        y0, y1 = max(0, cy - size // 2), min(h, cy + size // 2)
        x0, x1 = max(0, cx - size // 2), min(w, cx + size // 2)
        img = img.clone()
        img[..., y0:y1, x0:x1] = 0
        return img
    return cut


_IMAGENET_MEAN_255 = (124, 116, 104)  # round(255 * (0.485, 0.456, 0.406))


def _timm_rand_augment(config: str = "rand-n2-m10-mstd0.5", translate_const: int = 100,
                       fill: list | tuple = _IMAGENET_MEAN_255):
    """timm's RandAugment (``timm.data.auto_augment.rand_augment_transform``), as BECLR's code
    uses it: ``rand-n2-m10-mstd0.5`` draws 2 of timm's 15 ops (Invert and SolarizeAdd among them),
    each applied with probability 0.5 at a magnitude drawn around 10 (std 0.5); geometric ops fill
    with the ImageNet mean; ``translate_const`` = int(224 * 0.45). timm works on PIL images, so
    the uint8 tensor goes through PIL and back (lossless)."""
    from timm.data.auto_augment import rand_augment_transform
    from torchvision.transforms.v2 import functional as F

    try:
        ra = rand_augment_transform(str(config), {"translate_const": int(translate_const),
                                                   "img_mean": tuple(int(v) for v in fill)})
        ra_gray = rand_augment_transform(str(config), {"translate_const": int(translate_const),
                                                        "img_mean": int(fill[0])})
    except (ValueError, AssertionError, KeyError, IndexError) as e:
        raise UserError(f"transform timm_rand_augment: bad config {config!r} ({e}); e.g. "
                        f"rand-n2-m10-mstd0.5") from None

    def apply(img: torch.Tensor) -> torch.Tensor:
        pil = F.to_pil_image(img)
        return F.pil_to_tensor((ra_gray if pil.mode == "L" else ra)(pil))
    apply.timm = ra  # for inspection (tests)
    return apply


def _resize(size, interpolation: str = "bilinear"):
    modes = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC,
             "nearest": v2.InterpolationMode.NEAREST}
    if interpolation not in modes:
        raise UserError(f"transform resize: interpolation must be one of {sorted(modes)}, not "
                        f"{interpolation!r}")
    return v2.Resize(size, interpolation=modes[interpolation], antialias=True)


_FACTORIES: dict[str, Callable] = {
    "resize": _resize,
    "center_crop": lambda size: v2.CenterCrop(size),
    "random_crop": lambda size, padding=0: v2.RandomCrop(size, padding=padding),
    "random_resized_crop": lambda size, scale=(0.08, 1.0): v2.RandomResizedCrop(
        size, scale=tuple(scale), antialias=True),
    "hflip": lambda p=0.5: v2.RandomHorizontalFlip(p),
    "vflip": lambda p=0.5: v2.RandomVerticalFlip(p),
    "rand_augment": lambda num_ops=2, magnitude=9, num_magnitude_bins=31: v2.RandAugment(
        num_ops, magnitude, num_magnitude_bins),
    "color_jitter": lambda brightness=0.4, contrast=0.4, saturation=0.4, hue=0.0, p=1.0:
        v2.RandomApply([v2.ColorJitter(brightness, contrast, saturation, hue)], p=p),
    "grayscale": lambda p=1.0, channels=3: v2.RandomApply(
        [v2.Grayscale(num_output_channels=channels)], p=p),
    "random_affine": lambda degrees=10, translate=None, scale=None, shear=None: v2.RandomAffine(
        degrees, translate=None if translate is None else tuple(translate),
        scale=None if scale is None else tuple(scale), shear=shear),
    "gaussian_blur": lambda kernel_size=3, sigma=(0.1, 2.0), p=0.5: v2.RandomApply(
        [v2.GaussianBlur(kernel_size, tuple(sigma))], p=p),
    "timm_rand_augment": _timm_rand_augment,
    "autoaugment": _autoaugment,
    "cutout": _cutout,
}


def available() -> list[str]:
    return sorted(_FACTORIES)


class Pipeline:
    """uint8 ``HxWxC`` array -> normalised float ``CxHxW`` tensor."""

    def __init__(self, steps: list, mean, std):
        self.steps = steps
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, img: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.require(img, requirements=("C", "W"))).permute(2, 0, 1)
        for s in self.steps:
            t = s(t)
        return (t.float().div_(255.0) - self.mean) / self.std

    @property
    def is_identity(self) -> bool:
        """True when only the conversion and normalisation remain (batch fast path)."""
        return not self.steps

    def batch(self, imgs: np.ndarray) -> torch.Tensor:
        """Apply an identity pipeline to a ``(N,H,W,C)`` uint8 batch at once."""
        t = torch.from_numpy(np.require(imgs, requirements=("C", "W"))).permute(0, 3, 1, 2)
        return (t.float().div_(255.0) - self.mean) / self.std


def build(spec: list | None, normalize: dict | None, channels: int, where: str = "transforms"
          ) -> Pipeline:
    """Build a pipeline from a preset list of ``{name: ..., **kwargs}`` entries."""
    steps = []
    for i, item in enumerate(spec or []):
        if not isinstance(item, dict) or "name" not in item:
            raise UserError(f"{where}[{i}]: each transform is a mapping with a 'name' key, "
                            f"got {item!r}")
        kwargs = {k: v for k, v in item.items() if k != "name"}
        name = item["name"]
        if name not in _FACTORIES:
            raise UserError(f"{where}[{i}]: unknown transform {name!r}; valid: "
                            f"{', '.join(available())}")
        try:
            steps.append(_FACTORIES[name](**kwargs))
        except TypeError as e:
            raise UserError(f"{where}[{i}] ({name}): {e}") from e
    normalize = normalize or {}
    mean = normalize.get("mean", [0.5] * channels)
    std = normalize.get("std", [0.5] * channels)
    if len(mean) != channels or len(std) != channels:
        raise UserError(f"{where}.normalize: mean/std need {channels} values for "
                        f"{channels}-channel images, got {len(mean)}/{len(std)}")
    return Pipeline(steps, mean, std)

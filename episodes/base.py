"""Dataset containers shared by every loader, sampler and runner.

A dataset is an indexable set of uint8 images with integer labels. Two concrete kinds:

* :class:`ArrayDataset` - images already decoded in one ``uint8`` array (in memory or ``np.memmap``),
  shape ``(N, H, W)`` for grayscale or ``(N, H, W, C)``;
* :class:`FileDataset` - image files decoded with PIL on access (the standard on-disk formats).

Both return ``(image, label)`` from ``ds[i]`` where ``image`` is an ``(H, W, C)`` uint8 array, and
expose ``labels`` (int64 array), ``class_names`` (index = label) and ``subset(indices)``.

A *benchmark* bundles datasets with their protocol: :class:`FSLBenchmark` (disjoint train / val /
test classes) or :class:`FSCILBenchmark` (train and test images of all classes + a
:class:`~fsbench.episodes.protocol.SessionProtocol`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np


class ImageDataset:
    """Base class: ``labels``, ``class_names``, ``ds[i] -> (HxWxC uint8 array, int)``."""

    labels: np.ndarray
    class_names: list[str]
    name: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def load(self, i: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, i: int):
        return self.load(int(i)), int(self.labels[i])

    def subset(self, indices) -> "ImageDataset":  # pragma: no cover - abstract
        raise NotImplementedError

    def with_labels(self, labels: np.ndarray, class_names: Sequence[str]) -> "ImageDataset":
        """The same images with new labels (e.g. remapped to session order)."""
        raise NotImplementedError  # pragma: no cover

    @property
    def channels(self) -> int:
        return int(self.load(0).shape[-1]) if len(self) else 3

    def identity(self) -> dict:
        """A small description used in result files (name, size, classes)."""
        return {"name": self.name, "size": len(self), "classes": self.num_classes}


class ArrayDataset(ImageDataset):
    """Decoded images in one uint8 array: ``(N, H, W)`` or ``(N, H, W, C)``."""

    def __init__(self, images: np.ndarray, labels, class_names: Sequence[str] | None = None,
                 name: str = ""):
        images = np.asarray(images) if not isinstance(images, np.memmap) else images
        if images.dtype != np.uint8:
            raise ValueError(f"images must be uint8, got {images.dtype}")
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4:
            raise ValueError(f"images must have shape (N,H,W) or (N,H,W,C), got {images.shape}")
        labels = np.asarray(labels, dtype=np.int64)
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if class_names is None:
            class_names = [str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0)]
        self.images = images
        self.labels = labels
        self.class_names = list(class_names)
        self.name = name

    def load(self, i: int) -> np.ndarray:
        return np.asarray(self.images[i])

    def channels_first(self):
        """The images as one channel-first uint8 torch tensor ``(N, C, H, W)``, made once and
        cached (episode materialisation then gathers whole CHW images; the per-episode HWC -> CHW
        copy was its most expensive step). One channel: a view of :attr:`images`, no copy. Several
        channels: a second copy of the array (as many bytes as :attr:`images`) unless the array
        is a memmap, for which None is returned (the gather transposes per episode instead)."""
        cached = getattr(self, "_chw", None)
        if cached is None:
            import torch

            if self.images.shape[-1] == 1:
                cached = torch.from_numpy(np.asarray(self.images)).permute(0, 3, 1, 2)
            elif isinstance(self.images, np.memmap):
                return None
            else:
                cached = torch.from_numpy(np.ascontiguousarray(self.images.transpose(0, 3, 1, 2)))
            self._chw = cached
        return cached

    def load_many(self, indices) -> np.ndarray:
        """Images at ``indices`` as one ``(n, H, W, C)`` array (fast path for array datasets)."""
        return np.asarray(self.images[np.asarray(indices)])

    @property
    def channels(self) -> int:
        return int(self.images.shape[-1])

    def subset(self, indices) -> "ArrayDataset":
        idx = np.asarray(indices, dtype=np.int64)
        return ArrayDataset(self.images[idx], self.labels[idx], self.class_names, self.name)

    def with_labels(self, labels, class_names) -> "ArrayDataset":
        return ArrayDataset(self.images, labels, class_names, self.name)


class FileDataset(ImageDataset):
    """Image files decoded with PIL on access, converted to ``mode`` ("RGB" or "L")."""

    def __init__(self, paths: Sequence[str | Path], labels, class_names: Sequence[str],
                 name: str = "", mode: str = "RGB", crop_boxes: np.ndarray | None = None):
        self.paths = [str(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.labels) != len(self.paths):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")
        self.class_names = list(class_names)
        self.name = name
        self.mode = mode
        self.crop_boxes = crop_boxes  # optional (N, 4) x, y, w, h

    def load(self, i: int) -> np.ndarray:
        from PIL import Image

        from fsbench.errors import UserError

        try:
            with Image.open(self.paths[i]) as im:
                im = im.convert(self.mode)
                if self.crop_boxes is not None:
                    x, y, w, h = (float(v) for v in self.crop_boxes[i])
                    im = im.crop((int(x), int(y), int(x + w), int(y + h)))
                arr = np.asarray(im, dtype=np.uint8)
        except (OSError, SyntaxError, ValueError) as e:
            raise UserError(f"cannot read image {self.paths[i]}: {e}; replace the file or rerun "
                            f"with --skip-corrupt") from e
        return arr[..., None] if arr.ndim == 2 else arr

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3

    def subset(self, indices) -> "FileDataset":
        idx = np.asarray(indices, dtype=np.int64)
        boxes = None if self.crop_boxes is None else self.crop_boxes[idx]
        return FileDataset([self.paths[i] for i in idx], self.labels[idx], self.class_names,
                           self.name, self.mode, boxes)

    def with_labels(self, labels, class_names) -> "FileDataset":
        return FileDataset(self.paths, labels, class_names, self.name, self.mode, self.crop_boxes)


@dataclass
class FSLBenchmark:
    """Disjoint-class splits for episodic few-shot learning."""

    name: str
    train: ImageDataset
    val: ImageDataset | None
    test: ImageDataset
    info: dict[str, Any] = field(default_factory=dict)  # provenance: split source, options

    task = "fsl"


@dataclass
class FSCILBenchmark:
    """Train and test images of all classes plus the session protocol over them.

    Labels are the dataset's native class ids; ``protocol.class_order`` says in which order the
    classes arrive. The runner remaps labels to session positions (base classes first).
    """

    name: str
    train: ImageDataset
    test: ImageDataset
    protocol: Any  # fsbench.episodes.protocol.SessionProtocol
    info: dict[str, Any] = field(default_factory=dict)

    task = "fscil"

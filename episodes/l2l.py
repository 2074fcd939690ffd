"""fsbench datasets and frozen episodes as learn2learn objects (``fsbench install-extra learn2learn``).

* :func:`meta_dataset` - an fsbench :class:`~fsbench.episodes.base.ImageDataset` as a
  ``learn2learn.data.MetaDataset`` (its class index is built from the label array, so no image is
  decoded to build it), for learn2learn's own task transforms (``NWays``, ``KShots``, ...).
* :func:`manifest_taskset` - a fixed fsbench episode manifest (``episodes.npz`` of a run, or any
  file written by :func:`~fsbench.episodes.sampler.save_manifest`) as a ``learn2learn.data.
  Taskset`` (the class learn2learn also calls ``TaskDataset``) with one task per episode: ``taskset[i]`` is episode ``i``, as ``(X, y)`` with
  the ``way * shot`` support images first (class by class, in the episode's class order), then the
  ``way * query`` queries, and labels ``0..way-1`` in that class order. These are exactly the
  images and labels fsbench evaluates on (:func:`~fsbench.episodes.sampler.materialize`), so a
  learn2learn loop scores itself on fsbench's frozen episodes.

Images are float tensors ``(C, H, W)`` scaled to [0, 1], unless ``transform`` (a callable on the
dataset's ``load(i)`` array) says otherwise. learn2learn is imported when a function is called.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from fsbench.episodes.sampler import load_manifest
from fsbench.extras import require


def to_tensor(image):
    """``load(i)`` array (H, W) or (H, W, C) uint8 -> float tensor (C, H, W) in [0, 1]."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[..., None]
    chw = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))
    return chw.float().mul_(1 / 255)  # the same arithmetic as materialize


class TorchView(Dataset):
    """A map-style torch ``(image, label)`` dataset over an fsbench dataset."""

    def __init__(self, dataset, transform=None):
        self.dataset = dataset
        self.transform = transform or to_tensor
        self.labels = np.asarray(dataset.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.dataset.load(int(i))), int(self.labels[i])


def meta_dataset(dataset, transform=None):
    """``learn2learn.data.MetaDataset`` over ``dataset`` (labels are the dataset's class ids)."""
    l2l = require("learn2learn", "fsbench.episodes.l2l")
    view = TorchView(dataset, transform)
    by_class = {int(c): np.flatnonzero(view.labels == c).tolist()
                for c in np.unique(view.labels)}
    return l2l.data.MetaDataset(view, labels_to_indices=by_class)


class _Relabel:
    """Data transform of one task sample: ``(image, class id) -> (image, label in the episode)``."""

    def __init__(self, label: int):
        self.label = label

    def __call__(self, item):
        return item[0], self.label


def manifest_taskset(dataset, manifest, shot: int | None = None, transform=None):
    """``learn2learn.data.Taskset`` whose task ``i`` is episode ``i`` of ``manifest``.

    ``dataset`` must be the split the manifest was made for (checked by the label checksum);
    ``shot`` keeps the first ``shot`` support images per class, as fsbench evaluates smaller shots
    (default: the manifest's shot)."""
    l2l = require("learn2learn", "fsbench.episodes.l2l")
    meta = meta_dataset(dataset, transform)
    episodes, _ = load_manifest(manifest, dataset.labels)
    if shot is not None:
        episodes = episodes.with_shot(int(shot))
    load = l2l.data.transforms.LoadData(meta)  # learn2learn's index -> (image, class id)
    tasks = {}
    for i in range(len(episodes.classes)):
        indices, labels = [], []
        for part in (episodes.support[i], episodes.query[i]):  # (way, n) sample indices
            for label, row in enumerate(part):
                indices.extend(int(j) for j in row)
                labels.extend([label] * len(row))
        description = load([l2l.data.DataDescription(j) for j in indices])
        for dd, label in zip(description, labels):
            dd.transforms.append(_Relabel(label))
        tasks[i] = description
    taskset = l2l.data.Taskset(meta, task_transforms=[], num_tasks=len(tasks))
    taskset.sampled_descriptions = tasks  # the frozen episodes, never resampled
    return taskset

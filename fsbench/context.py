"""What a runner hands a learner: device, configuration, transforms, loaders and feature extraction."""
from __future__ import annotations

import hashlib
import logging
import random
import sys
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from fsbench import config as _config
from fsbench.curves import Curves
from fsbench.episodes.base import ArrayDataset, ImageDataset
from fsbench.transforms import Pipeline

log = logging.getLogger("fsbench")


# Progress bars of this process (None: automatic), set by fsbench.api.run from --progress /
# --no-progress; bars outside a RunContext (the first glyphs render, re-clustering) follow it.
_progress: bool | None = None


def bars_wanted(progress: bool | None = None) -> bool:
    """Whether to draw progress bars: ``True`` / ``False`` force them (``--progress`` /
    ``--no-progress``); ``None`` follows the command's choice, else draws them only when stdout and
    stderr are both terminals (not in Slurm logs, pipes or redirected output)."""
    if progress is None:
        progress = _progress
    if progress is not None:
        return bool(progress)
    return sys.stdout.isatty() and sys.stderr.isatty()


def set_progress(progress: bool | None) -> None:
    """The default of :func:`bars_wanted` for this process (``fsbench.api.run`` sets it)."""
    global _progress
    _progress = progress


def progress_bar(iterable=None, desc: str = "", total: int | None = None, leave: bool = False,
                 progress: bool | None = None, **kw):
    """A tqdm bar, drawn only when :func:`bars_wanted`."""
    return tqdm(iterable, desc=desc, total=total, leave=leave,
                disable=not bars_wanted(progress), dynamic_ncols=True, **kw)


def derive_seed(seed: int, *parts) -> int:
    """A 31-bit seed derived from ``seed`` and labels (e.g. the session index)."""
    h = hashlib.sha256(repr((int(seed),) + tuple(parts)).encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class TransformedDataset(Dataset):
    def __init__(self, data: ImageDataset, transform: Pipeline):
        self.data, self.transform = data, transform

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        img, label = self.data[i]
        return self.transform(img), label


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        from fsbench.errors import UserError
        raise UserError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        from fsbench.errors import UserError
        raise UserError(f"--device {name!r}: fsbench runs on cpu or cuda[:N]; use --device cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        from fsbench.errors import UserError
        raise UserError("--device cuda: no CUDA device is available here; use --device cpu")
    return dev


@dataclass
class RunContext:
    config: dict
    device: torch.device
    seed: int
    train_transform: Pipeline
    test_transform: Pipeline
    progress: bool = True
    num_workers: int = 0
    extras: dict = field(default_factory=dict)
    curves: Curves | None = None  # set by the runner; None: reports go nowhere

    def log_epoch(self, stage: str, epoch: int, **values) -> None:
        """Report one finished epoch of a training loop (``loss``, ``val_acc``, ``lr``...): it goes
        to the loggers (``on_epoch``), ``metrics.jsonl`` and ``result.json``'s ``history``."""
        if self.curves is not None:
            self.curves.epoch(stage, epoch, values)

    def log_step(self, stage: str, step: int, **values) -> None:
        """Report one optimisation step (loggers' ``on_step``, e.g. TensorBoard; not stored)."""
        if self.curves is not None:
            self.curves.step(stage, step, values)

    def log_selection(self, stage: str, epoch: int | None, rule: str) -> None:
        """Report which epoch's weights the trainer kept and by which rule (val, last, test)."""
        if self.curves is not None:
            self.curves.selection(stage, epoch, rule)

    def get(self, path: str, default=None):
        """A configuration value by dotted path, e.g. ``ctx.get("train.epochs")``."""
        return _config.get(self.config, path, default)

    def bar(self, iterable: Iterable, desc: str, total: int | None = None, leave: bool = False):
        """A progress bar over ``iterable`` (``set_postfix(loss=...)`` shows running values); drawn
        when the run's ``progress`` is on (:func:`bars_wanted`)."""
        return progress_bar(iterable, desc, total, leave, self.progress)

    def loader(self, data: ImageDataset, *, train: bool, batch_size: int,
               shuffle: bool | None = None, drop_last: bool = False,
               transform: Pipeline | None = None) -> DataLoader:
        """A DataLoader over ``data`` with the train or test transform (seeded shuffling)."""
        tf = transform or (self.train_transform if train else self.test_transform)
        g = torch.Generator()
        g.manual_seed(int(torch.randint(0, 2**31 - 1, (1,)).item()))
        return DataLoader(TransformedDataset(data, tf), batch_size=batch_size,
                          shuffle=train if shuffle is None else shuffle, drop_last=drop_last,
                          num_workers=self.num_workers, generator=g,
                          pin_memory=self.device.type == "cuda")

    def batches(self, data: ImageDataset, batch_size: int = 256,
                transform: Pipeline | None = None) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """Deterministic (images, labels) batches with the test transform, in dataset order."""
        tf = transform or self.test_transform
        n = len(data)
        if isinstance(data, ArrayDataset) and tf.is_identity:
            for s in range(0, n, batch_size):
                idx = np.arange(s, min(n, s + batch_size))
                yield tf.batch(data.load_many(idx)), torch.from_numpy(data.labels[idx])
            return
        for x, y in DataLoader(TransformedDataset(data, tf), batch_size=batch_size,
                               shuffle=False, num_workers=self.num_workers):
            yield x, y

    @torch.no_grad()
    def extract(self, embed: Callable[[torch.Tensor], torch.Tensor], data: ImageDataset,
                batch_size: int = 256, desc: str = "features") -> torch.Tensor:
        """Features of every image of ``data`` (test transform), on the CPU, in dataset order."""
        out = []
        n_batches = (len(data) + batch_size - 1) // batch_size
        for x, _ in self.bar(self.batches(data, batch_size), desc, total=n_batches):
            out.append(embed(x.to(self.device, non_blocking=True)).float().cpu())
        if not out:
            return torch.empty(0)
        return torch.cat(out)

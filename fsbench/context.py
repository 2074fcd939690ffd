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
from fsbench import distributed as dist
from fsbench.curves import Curves
from fsbench.episodes.base import ArrayDataset, ImageDataset
from fsbench.errors import UserError
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
        raise UserError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name!r}: fsbench runs on cpu or cuda[:N]; use --device cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
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
               transform: Pipeline | None = None, shard: bool = False) -> DataLoader:
        """A DataLoader over ``data`` with the train or test transform (seeded shuffling).

        ``shard=True`` opts in to data parallelism: under torchrun each process gets its share of
        ``data`` through a :class:`~torch.utils.data.DistributedSampler` seeded from the run seed
        (call :meth:`set_epoch` every epoch), and its own augmentation random stream. Use it with
        :meth:`wrap` and a per-process ``batch_size`` (:meth:`per_rank_batch`). In one process it
        is the plain loader."""
        tf = transform or (self.train_transform if train else self.test_transform)
        g = torch.Generator()
        g.manual_seed(int(torch.randint(0, 2**31 - 1, (1,)).item()))
        shuffle = train if shuffle is None else shuffle
        ds, sampler = TransformedDataset(data, tf), None
        if shard and dist.world_size() > 1:
            sampler = torch.utils.data.DistributedSampler(
                ds, num_replicas=dist.world_size(), rank=dist.rank(), shuffle=shuffle,
                seed=derive_seed(self.seed, "sampler"), drop_last=drop_last)
            # Each process augments its images with its own random draws.
            seed_everything(derive_seed(int(torch.randint(0, 2**31 - 1, (1,))), "rank",
                                        dist.rank()))
            shuffle = False
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, sampler=sampler,
                          drop_last=drop_last, num_workers=self.num_workers, generator=g,
                          pin_memory=self.device.type == "cuda")

    @staticmethod
    def set_epoch(loader: DataLoader, epoch: int) -> None:
        """Tell a sharded loader's sampler the epoch (a new shuffle each epoch)."""
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)

    def wrap(self, module: torch.nn.Module, find_unused_parameters: bool = False):
        """``module`` in :class:`~torch.nn.parallel.DistributedDataParallel` under torchrun
        (gradients averaged over the processes after each backward), ``module`` itself in one
        process. Train through the returned object; the parameters are ``module``'s own."""
        if dist.world_size() == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids,
                                       find_unused_parameters=find_unused_parameters)

    def per_rank_batch(self, total: int, key: str) -> int:
        """The batch of one process for the preset's total batch ``total`` (config ``key``).

        ``total`` is split evenly over the processes; it must divide. ``distributed.per_rank_batch``
        fixes the per-process batch instead (the total is then that times the processes, with a
        warning when it is not the preset's). Recorded in ``result.json``."""
        world = dist.world_size()
        override = self.get("distributed.per_rank_batch")
        if override:
            per = int(override)
            if per * world != total and dist.is_main():
                log.warning("distributed.per_rank_batch=%d on %d process(es) makes the total "
                            "batch %d, not %s=%d: the optimisation (and the numbers) differ from "
                            "the preset's", per, world, per * world, key, total)
        elif total % world:
            raise UserError(f"{key}={total} is the total batch over all processes and does not "
                            f"divide by {world} processes; use a multiple of {world} (--set "
                            f"{key}=...) or another --nproc_per_node")
        else:
            per = total // world
        self.extras["batch"] = {"per_rank_batch": per, "total_batch": per * world}
        return per

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
        """Features of every image of ``data`` (test transform), on the CPU, in dataset order.

        Under torchrun batch ``b`` is computed on rank ``b mod world`` and the batches are
        gathered: the same batches as in one process, so the same numbers, on every rank."""
        n = len(data)
        if dist.world_size() == 1:
            out = [embed(x.to(self.device, non_blocking=True)).float().cpu() for x, _ in
                   self.bar(self.batches(data, batch_size), desc, total=-(-n // batch_size))]
            return torch.cat(out) if out else torch.empty(0)
        def one(b):
            idx = np.arange(b * batch_size, min(n, (b + 1) * batch_size))
            ((x, _),) = self.batches(data.subset(idx), len(idx))
            return embed(x.to(self.device, non_blocking=True)).float().cpu()

        out = dist.map_in_order(one, -(-n // batch_size), lambda it: self.bar(it, desc))
        return torch.cat(out) if out else torch.empty(0)

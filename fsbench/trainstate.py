"""Checkpoints inside a training loop: a run killed in epoch 5 of 6 resumes at epoch 5.

The runner puts a :class:`EpochCheckpoint` in ``ctx.extras["epochs"]`` (file
``RUN_DIR/training.pt``) before a learner trains; a trainer asks it for its own slot::

    ckpt = EpochCheckpoint.of(ctx, "base")
    start, extra = ckpt.restore({"backbone": net, "opt": opt, "sched": sched}, loader)
    for epoch in range(start, epochs):
        ...
        ckpt.save(epoch + 1, {"backbone": net, "opt": opt, "sched": sched}, loader, extra)

What is saved after every epoch: the ``state_dict`` of every object given (modules, optimizer,
scheduler), the global RNG states (Python, NumPy, torch, CUDA), the DataLoader's shuffling
generator, ``extra`` (tensors and plain values: the history, the best-so-far selection state) and
the epochs reported so far in this session (``ctx.log_epoch``, replayed to the loggers on restore).
The file is written atomically and read with ``weights_only=True``. A resumed run therefore
continues with the same batches and random draws and, on a CPU in the reproducible mode, ends
with identical numbers. The runner deletes the file once the session's own checkpoint is written.
Without a runner (a learner used from Python) :meth:`EpochCheckpoint.of` returns a no-op.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fsbench import distributed as dist

FILE = "training.pt"
ELAPSED = "_elapsed_s"  # a key of the file beside the trainers' slots


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                       "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": {"version": py[0], "state": list(py[1]),
                        "gauss": py[2]}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class EpochCheckpoint:
    """Per-epoch state of the trainers of one run (one file, one slot per trainer ``key``)."""

    def __init__(self, path: str | Path | None, key: str = "", curves=None, clock=None):
        self.path = Path(path) if path else None
        self.key = key
        self.curves = curves  # fsbench.curves.Curves: the reported epochs travel with the slot
        # The runner's clock: seconds this run has taken so far, over all its processes; saved
        # with every epoch, so a run resumed mid-training still reports its whole time.
        self.clock = clock

    @classmethod
    def of(cls, ctx, key: str) -> "EpochCheckpoint":
        base = ctx.extras.get("epochs") if ctx is not None else None
        return cls(base.path if base else None, key, getattr(ctx, "curves", None),
                   base.clock if base else None)

    def elapsed(self) -> float | None:
        """The run's seconds at the last epoch saved in the file (None without one)."""
        v = self._load_all().get(ELAPSED)
        return float(v) if v is not None else None

    def _load_all(self) -> dict:
        from fsbench.results import load_checkpoint

        if self.path is None or not self.path.is_file():
            return {}
        return load_checkpoint(self.path)

    def restore(self, objects: dict[str, Any], loader=None) -> tuple[int, dict]:
        """Load the saved slot into ``objects`` (and the loader's generator); returns
        ``(first epoch to run, extra)`` - ``(0, {})`` when nothing was saved."""
        slot = self._load_all().get(self.key)
        if not slot:
            return 0, {}
        from fsbench.errors import UserError

        try:
            for name, obj in objects.items():
                obj.load_state_dict(slot["objects"][name])
            if loader is not None and slot.get("loader") is not None:
                loader.generator.set_state(slot["loader"])
            ranks = slot.get("rng_ranks")
            _set_rng_state(ranks[dist.rank()] if ranks and len(ranks) == dist.world_size()
                           else slot["rng"])
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise UserError(f"{self.path} ({self.key}) does not fit this training "
                            f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); delete it "
                            f"to restart the training from its first epoch") from None
        if self.curves is not None:
            self.curves.restore(slot.get("curves", []), replay=True)
        return int(slot["epoch"]), slot.get("extra", {})

    def save(self, epoch: int, objects: dict[str, Any], loader=None, extra: dict | None = None
             ) -> None:
        """Record that ``epoch`` epochs are done, with everything needed to continue.

        Under torchrun every process calls it (the random states of all processes are gathered:
        each augments with its own) and rank 0 writes the file."""
        if self.path is None:
            return
        from fsbench.results import atomic_torch_save

        ranks = dist.all_gather_object(_rng_state())
        if not dist.is_main():
            return
        slots = self._load_all()
        slots[self.key] = {
            "epoch": int(epoch),
            "objects": {name: obj.state_dict() for name, obj in objects.items()},
            "loader": loader.generator.get_state() if loader is not None
            and loader.generator is not None else None,
            "rng": ranks[0], "extra": dict(extra or {}),
            "curves": self.curves.state(self.curves.session) if self.curves is not None else []}
        if len(ranks) > 1:
            slots[self.key]["rng_ranks"] = ranks
        if self.clock is not None:
            slots[ELAPSED] = float(self.clock())
        atomic_torch_save(self.path, slots)

    def clear(self) -> None:
        if self.path is not None and dist.is_main():
            self.path.unlink(missing_ok=True)

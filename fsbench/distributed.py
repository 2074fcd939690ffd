"""Data parallelism across processes started by ``torchrun`` (``torch.distributed``), in one place.

``torchrun --nproc_per_node N -m fsbench run ...`` starts N copies of ``fsbench run`` with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their
environment. :func:`init` joins them in one process group - gloo on a CPU, nccl on CUDA (one GPU per
local rank) - with a timeout, so a process that failed or hangs ends the others' waits with one line
instead of a silent hang. Without torchrun (``WORLD_SIZE`` unset or 1) nothing is initialised and
every helper here is the identity: ``fsbench run`` in one process is unchanged.

What the rest of fsbench uses:

* :func:`rank`, :func:`world_size`, :func:`is_main`, :func:`backend`, :func:`barrier`;
* :func:`broadcast_object` (rank 0's value everywhere: the run folder, the fixed episodes, a model
  selection decision), :func:`all_gather_object` (every rank's value, in rank order);
* :func:`all_reduce_sum` for methods that need global batch statistics or class counts (the
  identity on one process);
* :func:`broadcast_module` (rank 0's parameters and buffers everywhere, e.g. BatchNorm running
  statistics after an epoch) and :func:`shard` (the items of this rank, ``i mod world``).

A failed collective (a peer died, or ``distributed.timeout_s`` passed) is a :class:`PeerFailure`,
a :class:`~fsbench.errors.UserError`: one line, exit code 2.
"""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, Sequence

from fsbench.errors import UserError

#: Seconds a collective may wait for the other processes (``distributed.timeout_s``).
DEFAULT_TIMEOUT_S = 600


class PeerFailure(UserError):
    """Another process of the group failed or did not answer in time."""


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun set it (1 without torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise UserError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a whole number; start "
                        f"the run with torchrun, which sets it") from None


def _dist():
    import torch.distributed as dist

    return dist


def active() -> bool:
    """Whether this process is part of an initialised group of more than one process."""
    dist = _dist()
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return _dist().get_rank() if active() else 0


def world_size() -> int:
    return _dist().get_world_size() if active() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if active() else 0


def is_main() -> bool:
    return rank() == 0


def backend() -> str | None:
    """``gloo`` or ``nccl`` in a group, None in one process."""
    return str(_dist().get_backend()) if active() else None


def label() -> str:
    """``[rank 1/2] `` under torchrun (the prefix of error lines), empty in one process. From
    the environment, so it also names the rank before the group is joined or after it is left."""
    world = os.environ.get("WORLD_SIZE", "1")
    return f"[rank {os.environ.get('RANK', '?')}/{world}] " if world not in ("", "1") else ""


def init(device_type: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Join torchrun's process group (gloo on ``cpu``, nccl on ``cuda``); returns whether a group
    of more than one process is active. Idempotent; a no-op without torchrun."""
    if active():
        return True
    if env_world_size() <= 1:
        return False
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise UserError(f"WORLD_SIZE={env_world_size()} but {', '.join(missing)} not set; start "
                        f"several processes with `torchrun --nproc_per_node N -m fsbench run ...`")
    dist = _dist()
    if device_type == "cuda":
        import torch

        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo",
                                timeout=timedelta(seconds=float(timeout_s)))
    except (RuntimeError, ValueError) as e:
        raise PeerFailure(f"cannot join the torchrun process group at "
                          f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} "
                          f"({' '.join(str(e).split())[:200]})") from None
    return True


def shutdown() -> None:
    """Leave the process group (end of a run)."""
    if active():
        _dist().destroy_process_group()


def _collective(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except (RuntimeError, ValueError) as e:  # DistBackendError is a RuntimeError
        raise PeerFailure(f"another process of this run failed or stopped answering "
                          f"({' '.join(str(e).split())[:160]}); its own error line says why") \
            from None


def barrier() -> None:
    if active():
        _collective(_dist().barrier)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself in one process)."""
    if not active():
        return obj
    box = [obj if rank() == src else None]
    _collective(_dist().broadcast_object_list, box, src=src)
    return box[0]


def on_main(fn, what: str) -> Any:
    """``fn()`` computed on rank 0 and handed to every rank (``fn()`` itself in one process).
    A :class:`UserError` on rank 0 is raised there and ends the other ranks with one line saying
    that rank 0 could not ``what``."""
    made = None
    if is_main():
        try:
            made = fn()
        except UserError as e:
            made = e
    made = broadcast_object(made)
    if isinstance(made, UserError):
        raise made if is_main() else PeerFailure(f"rank 0 could not {what}")
    return made


def all_gather_object(obj: Any) -> list:
    """Every rank's ``obj``, in rank order (``[obj]`` in one process)."""
    if not active():
        return [obj]
    out = [None] * world_size()
    _collective(_dist().all_gather_object, out, obj)
    return out


def all_reduce_sum(tensor):
    """The element-wise sum of ``tensor`` over all ranks (in place; ``tensor`` in one process).
    For statistics a method needs over the global batch, e.g. class counts."""
    if active():
        _collective(_dist().all_reduce, tensor)
    return tensor


def broadcast_module(*modules) -> None:
    """Copy rank 0's parameters and buffers into ``modules`` on every rank."""
    if not active():
        return
    for t in [t for m in modules for t in list(m.parameters()) + list(m.buffers())]:
        buf = t.data if t.data.is_contiguous() else t.data.contiguous()
        _collective(_dist().broadcast, buf, src=0)
        if buf is not t.data:
            t.data.copy_(buf)


def shard(items: Sequence | range) -> list:
    """The items of this rank: item ``i`` on rank ``i mod world``."""
    return list(items)[rank()::world_size()]


def map_in_order(fn, n: int, progress=iter) -> list:
    """``[fn(0), ..., fn(n-1)]`` on every rank, item ``i`` computed on rank ``i mod world``.
    ``progress`` wraps the iteration over this rank's items (a progress bar)."""
    return gather_in_order({i: fn(i) for i in progress(shard(range(n)))}, n)


def gather_in_order(mine: dict[int, Any], n: int) -> list:
    """Items ``0..n-1`` computed on several ranks (``mine``: this rank's ``{index: value}``) as
    one list in index order, on every rank."""
    merged: dict[int, Any] = {}
    for part in all_gather_object(mine):
        merged.update(part)
    return [merged[i] for i in range(n)]

"""Keep freed tensor memory in the process (glibc malloc tuning) to stop page-fault churn.

PyTorch's CPU allocator takes every tensor from ``malloc``. With glibc's defaults, blocks above the
(dynamic, at most 32 MiB) mmap threshold are mapped and unmapped on each allocation, and the top of
the heap is trimmed back to the OS whenever more than the trim threshold is free. A training step
allocates and frees the same activation sizes every time, so each step faults the same memory in
again: ``fsbench run --method teen --dataset glyphs`` spent about a quarter of its CPU time in the
kernel on millions of page faults (issue 17).

:func:`keep_freed_memory` sets, through ``mallopt``:

* ``M_MMAP_THRESHOLD`` = 32 MiB (glibc's maximum): blocks up to that size come from the heap;
* ``M_TRIM_THRESHOLD`` = 1 GiB: free memory at the heap top is kept, not returned;
* ``M_TOP_PAD`` = 64 MiB: the heap grows in large steps.

The trade: the process keeps the memory it has freed (peak resident set up by about 55 MiB on the
glyphs TEEN training, 1.03 GiB against 0.98 GiB; see ``benchmarks/bench_train.py``), in exchange
for 4.7x fewer page faults and 1.36x the training images/s there. The embedded regression's numbers
are identical with it, and each of its nine entries ran faster (141 s in all against about 200 s),
also with another process competing for a core. It is the **default** (``FSBENCH_MALLOC=keep``);
``FSBENCH_MALLOC=system`` keeps glibc's own settings. (An earlier measurement on a heavily loaded
machine had dvla_rl and beclr 4-5x slower with it; that did not reproduce on a quiet machine or with
one competing process.) Other C libraries (musl, macOS) are left alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 1 << 30, M_TOP_PAD: 64 << 20}
ENV = "FSBENCH_MALLOC"
_state: str | None = None


def keep_freed_memory() -> str:
    """Apply :data:`SETTINGS` once per process unless ``FSBENCH_MALLOC=system``; returns
    ``"kept"`` (the default), ``"system"`` or ``"unavailable"`` (not glibc)."""
    global _state
    if _state is not None:
        return _state
    choice = os.environ.get(ENV, "keep").strip().lower()
    if choice == "system":
        _state = "system"
        return _state
    if choice != "keep":
        from fsbench.errors import UserError
        raise UserError(f"{ENV}={choice!r}: use keep (the default) or system")
    _state = "unavailable"
    if not sys.platform.startswith("linux"):
        return _state
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return _state
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if all(mallopt(k, v) == 1 for k, v in SETTINGS.items()):
        _state = "kept"
    return _state

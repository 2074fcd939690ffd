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

The trade: the process keeps the memory it has freed (peak resident set up by a few hundred MiB on
the glyphs runs; see ``benchmarks/bench_train.py``), in exchange for far fewer page faults. The
embedded regression's numbers were unchanged with it. It is **opt-in** (``FSBENCH_MALLOC=keep``;
default ``system``, glibc's own settings): measured on the glyphs regression entries it made the
transformer-style learners much slower (dvla_rl 71.5 s against 15.9 s), which is not understood
yet. Other C libraries (musl, macOS) are left alone.
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
    """Apply :data:`SETTINGS` once per process when ``FSBENCH_MALLOC=keep``; returns ``"kept"``,
    ``"system"`` (the default) or ``"unavailable"`` (not glibc)."""
    global _state
    if _state is not None:
        return _state
    choice = os.environ.get(ENV, "system").strip().lower()
    if choice == "system":
        _state = "system"
        return _state
    if choice != "keep":
        from fsbench.errors import UserError
        raise UserError(f"{ENV}={choice!r}: use keep or system (the default)")
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

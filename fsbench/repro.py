"""Reproducible CPU mode: the same command gives the same numbers whatever the machine's
instruction set and core count (checked on an AVX2-only and an AVX-512 AMD EPYC; see the README
for what is still open).

Why it is needed. On a CPU, PyTorch picks its kernels at run time from the instruction set it finds:
ATen's own vectorised kernels (``ATEN_CPU_CAPABILITY``), oneDNN's convolutions
(``ONEDNN_MAX_CPU_ISA``) and MKL's GEMM (``MKL_CBWR``), and NumPy/OpenBLAS do the same for the
scikit-learn heads. An AVX-512 machine therefore sums in another order than an AVX2 machine, a
trained network drifts apart after a few hundred steps, and an embedded regression made on one
machine fails on another. Thread counts change the order of parallel reductions the same way.

What the mode does (:func:`environment` lists every variable):

- pins every library above to its AVX2 code path (every x86-64 server of the last ten years has
  AVX2; an older CPU gets a one-line refusal), with MKL's conditional numerical reproducibility in
  strict mode (``MKL_CBWR=AVX2,STRICT``: fixed cache sizes, deterministic reductions, static
  scheduling);
- fixes the thread count of PyTorch, OpenMP, MKL and OpenBLAS (default :data:`DEFAULT_THREADS`,
  ``--threads N`` to choose; the count is part of the numbers, so it is recorded);
- turns on ``torch.use_deterministic_algorithms`` and deterministic cuDNN.

These variables are read when the libraries load, so they must be in the environment *before*
``import torch``: :func:`ensure` re-executes the process with them when they are missing. The
:func:`fingerprint` of the machine (CPU model, the capability PyTorch uses, MKL/oneDNN builds,
threads) goes into every ``result.json`` and into ``leaderboard/expected/glyphs.json``.

The mode is on in ``fsbench run --reproducible``, always in ``fsbench regress --embedded``, and in
the test suite (``tests/conftest.py``). It is off by default for ``fsbench run`` because the
AVX-512 kernels are faster where they exist.
"""
from __future__ import annotations

import os
import platform
import re
import sys

from fsbench.errors import UserError

#: Threads in reproducible mode unless ``--threads`` says otherwise: the CI machines have 2 cores.
DEFAULT_THREADS = 2
#: Set (to the thread count) in a process whose environment is pinned.
MARK = "FSBENCH_REPRODUCIBLE"

_X86 = ("x86_64", "amd64", "i686", "x86")
_NUMPY_AVX512 = ("AVX512F AVX512CD AVX512_KNL AVX512_KNM AVX512_SKX AVX512_CLX AVX512_CNL "
                 "AVX512_ICL AVX512_SPR AVX512FP16")


def _is_x86() -> bool:
    return platform.machine().lower() in _X86


def environment(threads: int = DEFAULT_THREADS) -> dict[str, str]:
    """The environment variables of the reproducible mode for ``threads`` threads."""
    threads = check_threads(threads)
    env = {
        MARK: str(threads),
        "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
        "OPENBLAS_NUM_THREADS": str(threads),
        "MKL_DYNAMIC": "FALSE",  # MKL may otherwise use fewer threads than asked
        "CUBLAS_WORKSPACE_CONFIG": ":4096:8",  # deterministic cuBLAS, for completeness on GPUs
    }
    if _is_x86():
        env.update({
            "ATEN_CPU_CAPABILITY": "avx2",  # ATen's vectorised kernels
            "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN (convolutions)
            "DNNL_MAX_CPU_ISA": "AVX2",  # the same, older name
            "MKL_CBWR": "AVX2,STRICT",  # MKL GEMM: conditional numerical reproducibility
            "MKL_ENABLE_INSTRUCTIONS": "AVX2",
            "OPENBLAS_CORETYPE": "Haswell",  # NumPy/SciPy's OpenBLAS (scikit-learn heads)
            "NPY_DISABLE_CPU_FEATURES": _NUMPY_AVX512,  # NumPy's own SIMD dispatch
        })
    return env


def check_threads(threads) -> int:
    try:
        n = int(threads)
    except (TypeError, ValueError):
        raise UserError(f"--threads {threads!r} is not a whole number; use e.g. --threads 2") \
            from None
    if not 1 <= n <= 1024:
        raise UserError(f"--threads {n} is out of range; use a number from 1 to the cores you have")
    return n


def active() -> int | None:
    """The pinned thread count when this process runs in reproducible mode, else None."""
    raw = os.environ.get(MARK)
    if not raw:
        return None
    try:
        threads = int(raw)
    except ValueError:
        return None
    want = environment(threads)
    return threads if all(os.environ.get(k) == v for k, v in want.items()) else None


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def ensure(argv: list[str], threads: int = DEFAULT_THREADS) -> None:
    """Make sure this process runs pinned; re-execute ``python -m fsbench.cli ARGV`` if not.

    Returns normally when the environment is already pinned for ``threads``."""
    threads = check_threads(threads)
    if active() == threads:
        return
    if _is_x86():
        flags = _cpu_flags()
        if flags and not {"avx2", "fma"} <= flags:
            raise UserError("reproducible mode pins the AVX2 code paths, and this CPU has no AVX2; "
                            "run without --reproducible (numbers will be machine-specific)")
    env = {**os.environ, **environment(threads)}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "fsbench.cli", *argv], env)


def apply_runtime(threads: int | None) -> None:
    """In-process settings: thread count and deterministic algorithms (call before training)."""
    import torch

    if threads is not None:
        torch.set_num_threads(int(threads))
    if active() is not None:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def fingerprint() -> dict:
    """What decides the CPU numbers: recorded in results and in the expected file."""
    import torch

    cfg = torch.__config__.show()
    mkl = re.search(r"Math Kernel Library Version ([\w.\-]+)", cfg)
    dnn = re.search(r"MKL-DNN v([\w.\-]+)", cfg)
    threads = active()
    pinned = environment(threads or DEFAULT_THREADS)
    return {  # flat scalars: the leaderboard schema keeps environments flat
        "cpu_model": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_avx512": "avx512f" in _cpu_flags(),
        "mkl": mkl.group(1) if mkl else None,
        "onednn": dnn.group(1) if dnn else None,
        "threads": torch.get_num_threads(),
        "reproducible": threads is not None,
        "pinned_env": " ".join(f"{k}={os.environ[k]}" for k in sorted(pinned)
                               if k in os.environ and k != MARK) or None,
    }

"""fsbench: few-shot learning (FSL) and few-shot class-incremental learning (FSCIL) benchmarks.

The Python API (imported on first use, so ``import fsbench`` stays light)::

    fsbench.run(method, dataset, ...)        # fsbench.api.run: what `fsbench run` does
    fsbench.load_result(run_dir)             # a checked result.json
    fsbench.table(results, as_frame=False)   # rows per session / shot (list of dicts or DataFrame)
"""

__all__ = ["__version__", "run", "load_result", "table"]

_API = {"run": "fsbench.api", "load_result": "fsbench.frames", "table": "fsbench.frames"}


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("fsbench")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"


__version__ = _version()


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'fsbench' has no attribute {name!r}")

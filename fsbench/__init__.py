"""fsbench: few-shot learning (FSL) and few-shot class-incremental learning (FSCIL) benchmarks."""


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("fsbench")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"


__version__ = _version()

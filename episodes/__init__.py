"""Datasets, the episodic sampler and FSCIL session protocols (``fsbench.episodes``)."""
from . import synthetic  # noqa: F401  (registration)

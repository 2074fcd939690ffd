"""Datasets, the episodic sampler and FSCIL session protocols (``fsbench.episodes``)."""
from . import synthetic  # noqa: F401  (registration)
from . import glyphs  # noqa: F401
from . import cifar, cub, miniimagenet, omniglot, tiered  # noqa: F401  (standard datasets on disk)

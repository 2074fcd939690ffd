"""Baselines: ``protonet`` (FSL), ``ncm`` and ``finetune`` (FSCIL), and the shared backbones."""
from . import finetune, ncm, protonet  # noqa: F401  (registration)

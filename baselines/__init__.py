"""Baselines: ``protonet``, ``maml``, ``anil``, ``metasgd`` (FSL), ``ncm`` and ``finetune`` (FSCIL),
and the shared backbones."""
from . import finetune, meta, ncm, protonet  # noqa: F401  (registration)

"""Mamba-FSCIL (arXiv:2407.06136): the selective-SSM neck, the ETF head and losses, the learner."""
from . import learner  # noqa: F401  (registration)

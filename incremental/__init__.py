"""Few-shot class-incremental learning methods (FSCIL)."""
from . import teen  # noqa: F401  (registration)
from . import mamba_fscil  # noqa: F401  (registration)

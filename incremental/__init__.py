"""Few-shot class-incremental learning methods (FSCIL)."""
from . import teen  # noqa: F401  (registration)
from . import cpe_clip  # noqa: F401  (registration)

"""Few-shot class-incremental learning methods (FSCIL)."""
from . import cpe_clip, mamba_fscil, teen  # noqa: F401  (registration)

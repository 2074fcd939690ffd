"""Few-shot learning methods (episodic, FSL)."""
from . import beclr, opta  # noqa: F401  (registration: method ``beclr``, head ``opta``)

"""Few-shot learning methods (episodic, FSL)."""
from . import beclr, opta  # noqa: F401  (registration: method ``beclr``, head ``opta``)
from . import dvla_rl  # noqa: F401  (registration: method ``dvla_rl``)

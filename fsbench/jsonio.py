"""JSON helpers shared by result files and episode manifests."""
from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np


def json_default(o):
    """``json.dumps(default=...)`` for numpy scalars and arrays and paths."""
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"value of type {type(o).__name__} is not JSON-serialisable")


def now_iso() -> str:
    """The time stamp of result files, run files and sweep summaries (UTC, ISO 8601, seconds)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

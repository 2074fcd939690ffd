"""Results from Python: :func:`load_result` (a checked ``result.json``) and :func:`table` (rows
of one or more results, as a list of dicts or a pandas DataFrame).

>>> import fsbench
>>> r = fsbench.load_result("runs/20250101-120000-teen-glyphs")
>>> rows = fsbench.table([r])                  # [{"method": "teen", "session": 0, "acc": ...}]
>>> df = fsbench.table([r], as_frame=True)     # needs pandas
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from fsbench.errors import UserError

_RUN_KEYS = ("method", "dataset", "seed", "status")
_SESSION_KEYS = ("session", "num_seen", "acc", "base_acc", "novel_acc", "hm")
_SHOT_KEYS = ("mean", "ci95", "n_episodes")


def load_result(run_dir: str | Path) -> dict:
    """The result of a run folder (or a ``result.json`` path), checked like ``fsbench show``
    checks it; a missing or malformed file is a one-line :class:`~fsbench.errors.UserError`."""
    from fsbench.results import check_result_shape, read_json

    path = Path(run_dir)
    path = path / "result.json" if path.is_dir() else path
    result = read_json(path, "result file")
    check_result_shape(result, path)
    return result


def rows(result: dict) -> list[dict]:
    """One row per FSCIL session or per FSL shot, with the run's method, dataset, seed, status."""
    run = {k: result.get(k) for k in _RUN_KEYS}
    run["run_dir"] = result.get("run_dir")
    m = result["metrics"]
    if result["task"] == "fscil":
        return [{**run, **{k: s.get(k) for k in _SESSION_KEYS}} for s in m["sessions"]]
    return [{**run, "shot": int(k), **{kk: v.get(kk) for kk in _SHOT_KEYS}}
            for k, v in m["shots"].items()]


def table(results: Iterable[dict | str | Path] | dict | str | Path, as_frame: bool = False):
    """Rows of every result (a result dict, or a run folder / ``result.json`` to load): a list
    of dicts, or with ``as_frame=True`` a pandas DataFrame (pandas is then required)."""
    if isinstance(results, (dict, str, Path)):
        results = [results]
    out = []
    for r in results:
        out.extend(rows(r if isinstance(r, dict) else load_result(r)))
    if not as_frame:
        return out
    try:
        import pandas as pd
    except ImportError:
        raise UserError("as_frame=True needs pandas: pip install pandas (or use the default "
                        "list of dicts)") from None
    return pd.DataFrame(out)

"""Views of finished runs: ``fsbench show RUN_DIR...`` (one run's table, several side by side, or
tidy CSV / JSON) and ``fsbench runs [DIR]`` (one line per run folder). Read-only.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from fsbench.errors import UserError
from fsbench.loggers import result_table

FORMATS = ("table", "csv", "json")


def load_result(path: str | Path) -> dict:
    """The checked ``result.json`` of a run folder (or the file itself)."""
    from fsbench.results import check_result_shape, read_json

    path = Path(path)
    path = path / "result.json" if path.is_dir() else path
    result = read_json(path, "result file")
    check_result_shape(result, path)
    return result


def _label(result: dict) -> str:
    return f"{result['method']}/{result['dataset']}/s{result['seed']}"


def _fmt(v, nd=2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def tidy_rows(result: dict, run: str) -> list[dict]:
    """One row per session (FSCIL) or shot (FSL) of a run, for CSV."""
    head = {"run": run, "method": result["method"], "dataset": result["dataset"],
            "seed": result["seed"], "task": result["task"]}
    m = result["metrics"]
    if result["task"] == "fscil":
        return [{**head, "session": s["session"], "num_seen": s.get("num_seen"), "acc": s["acc"],
                 "base_acc": s.get("base_acc"), "novel_acc": s.get("novel_acc"),
                 "hm": s.get("hm")} for s in m["sessions"]]
    return [{**head, "shot": int(k), "acc": v["mean"], "ci95": v["ci95"],
             "n_episodes": v.get("n_episodes")} for k, v in m["shots"].items()]


def brief(result: dict, run: str) -> dict:
    """What JSON output keeps of a run: identity, status and metrics (no per-episode lists)."""
    m = result["metrics"]
    if result["task"] == "fsl":
        m = {**m, "shots": {k: {kk: vv for kk, vv in v.items() if kk != "per_episode"}
                            for k, v in m["shots"].items()}}
    return {"run": run, "method": result["method"], "dataset": result["dataset"],
            "seed": result["seed"], "task": result["task"], "status": result.get("status"),
            "split": result["split"].get("id"), "metrics": m}


def side_by_side(results: list[tuple[str, dict]]) -> str:
    """Several runs of one task, a column each: accuracy per session and AVG / PD / last
    (FSCIL), or mean ± 95% CI per shot (FSL)."""
    labels = [_label(r) for _, r in results]
    width = max(10, *(len(x) for x in labels)) + 1
    lines = [f"{'':>8}" + "".join(f"{x:>{width}}" for x in labels)]
    task = results[0][1]["task"]
    if task == "fscil":
        n = max(len(r["metrics"]["sessions"]) for _, r in results)
        for i in range(n):
            cells = [_fmt(r["metrics"]["sessions"][i]["acc"])
                     if i < len(r["metrics"]["sessions"]) else "" for _, r in results]
            lines.append(f"{'s' + str(i):>8}" + "".join(f"{c:>{width}}" for c in cells))
        for key in ("avg", "pd", "last"):
            cells = [_fmt(r["metrics"].get(key)) for _, r in results]
            lines.append(f"{key.upper():>8}" + "".join(f"{c:>{width}}" for c in cells))
    else:
        shots = sorted({int(k) for _, r in results for k in r["metrics"]["shots"]})
        for k in shots:
            cells = []
            for _, r in results:
                v = r["metrics"]["shots"].get(str(k))
                cells.append(f"{v['mean']:.2f} ±{v['ci95']:.2f}" if v else "")
            lines.append(f"{str(k) + '-shot':>8}" + "".join(f"{c:>{width}}" for c in cells))
    lines += [f"{'':>8} {x}: {run}" for x, (run, _) in zip(labels, results)]
    return "\n".join(lines)


def to_csv(rows: list[dict]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, restval="", lineterminator="\n")
    w.writeheader()
    w.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
    return buf.getvalue().rstrip("\n")


def show(results: list[tuple[str, dict]], fmt: str) -> str:
    """``fsbench show``: ``results`` are (run folder, result) pairs."""
    if fmt == "json":
        return json.dumps([brief(r, run) for run, r in results], indent=2)
    if fmt == "csv":
        return to_csv([row for run, r in results for row in tidy_rows(r, run)])
    if len(results) == 1:
        return result_table(results[0][1])
    blocks = []
    for task in ("fscil", "fsl"):  # one block per task; FSCIL and FSL rows do not line up
        same = [(run, r) for run, r in results if r["task"] == task]
        if same:
            blocks.append(side_by_side(same))
    return "\n\n".join(blocks)


# ------------------------------------------------------------------------------ fsbench runs
def run_row(folder: Path) -> dict | None:
    """One line of ``fsbench runs``; None for a folder that is not a run."""
    if (folder / "result.json").is_file():
        try:
            r = load_result(folder)
        except UserError as e:
            return {"run": folder.name, "method": "?", "dataset": "?", "seed": "",
                    "status": "unreadable", "summary": str(e).split(": ", 1)[-1][:60]}
        m = r["metrics"]
        if r["task"] == "fscil":
            summary = (f"AVG {_fmt(m.get('avg'))}  last {_fmt(m.get('last'))}" if "avg" in m
                       else f"{len(m['sessions'])} session(s) done")
        else:
            summary = "  ".join(f"{k}-shot {v['mean']:.2f}" for k, v in m["shots"].items())
        return {"run": folder.name, "method": r["method"], "dataset": r["dataset"],
                "seed": r["seed"], "status": r.get("status", "complete"), "summary": summary}
    if (folder / "run.json").is_file():
        try:
            inv = json.loads((folder / "run.json").read_text())
        except (OSError, ValueError):
            inv = {}
        inv = inv if isinstance(inv, dict) else {}
        return {"run": folder.name, "method": str(inv.get("method", "?")),
                "dataset": str(inv.get("dataset", "?")), "seed": inv.get("seed", ""),
                "status": "running or interrupted", "summary": "no result yet (--resume)"}
    return None


def list_runs(root: str | Path) -> list[dict]:
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"fsbench runs: {root} is not a folder; pass the --out folder of your "
                        f"runs (default runs/)")
    return [row for d in sorted(p for p in root.iterdir() if p.is_dir())
            if (row := run_row(d)) is not None]


def runs_table(rows: list[dict], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "csv":
        return to_csv(rows)
    if not rows:
        return "no runs"
    cols = ("run", "method", "dataset", "seed", "status", "summary")
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols[:-1]}
    fmt_row = "  ".join(f"{{{c}:<{widths[c]}}}" for c in cols[:-1]) + "  {summary}"
    return "\n".join([fmt_row.format(**{c: c for c in cols})]
                     + [fmt_row.format(**{c: str(r[c]) for c in cols}) for r in rows])

"""Multi-seed summaries of a sweep: mean ± sample std and a 95% confidence interval over seeds.

``fsbench sweep`` (:mod:`fsbench.sweep`) writes one summary per (method, dataset, configuration)
into ``SWEEP_DIR/summaries/<group>.json`` and an index, ``SWEEP_DIR/summary.json``. Every number
is a *statistic* over the seeds' ``result.json`` files::

    {"mean": m, "std": s, "ci95": c, "n": n, "values": [one per seed, in seed order]}

``std`` is the sample standard deviation (ddof = 1) and ``ci95`` the half-width of the 95%
confidence interval of the mean from Student's t distribution, ``t(0.975, n-1) * std / sqrt(n)``;
both are null for a single seed. FSCIL: ``acc``, ``base_acc``, ``novel_acc`` and ``hm`` of every
session, and ``avg``, ``pd``, ``last``. FSL: per shot, the episode mean accuracy (``acc``) and the
runs' own 95% interval over episodes (``episode_ci95``).

Summaries are read back with :func:`read` (``fsbench show``, ``fsbench submit``): plain JSON only
(:func:`fsbench.leaderboard.schema.load_json`), every field checked, every problem one line.
"""
from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path
from typing import Any

from fsbench.errors import UserError

SUMMARY_SCHEMA = "fsbench.sweep-summary/1"
INDEX_SCHEMA = "fsbench.sweep/1"
INDEX_FILE = "summary.json"
SUMMARY_DIR = "summaries"
#: ``mean`` must equal the mean of ``values`` within this (the file is checked, not trusted).
_TOL = 1e-6
_GROUP = re.compile(r"^[a-z0-9][a-z0-9_.+-]{0,199}$")  # <method>-<dataset>-<hash>
_KEY = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")  # a dotted preset key


# --------------------------------------------------------------------------- statistics

def stat(values: list) -> dict | None:
    """Mean, sample std (ddof=1), 95% CI half-width (Student t) and the values; None when any
    value is missing (e.g. the novel accuracy of session 0)."""
    if not values or any(v is None for v in values):
        return None
    vals = [float(v) for v in values]
    n = len(vals)
    mean = statistics.fmean(vals)
    if n < 2:
        return {"mean": mean, "std": None, "ci95": None, "n": n, "values": vals}
    from scipy.stats import t

    std = statistics.stdev(vals)
    return {"mean": mean, "std": std, "ci95": float(t.ppf(0.975, n - 1)) * std / math.sqrt(n),
            "n": n, "values": vals}


def _identity(results: list[dict]) -> dict:
    """What every seed of a group shares, taken from the first and checked against the rest."""
    first = results[0]
    for r in results[1:]:
        for key in ("task", "method", "dataset", "backbone", "pretraining"):
            if r.get(key) != first.get(key):
                raise UserError(f"run {r.get('run_dir')}: {key} {r.get(key)!r} differs from "
                                f"{first.get(key)!r} of the other seeds of its group")
        if r["split"].get("id") != first["split"].get("id"):
            raise UserError(f"run {r.get('run_dir')}: split {r['split'].get('id')!r} differs "
                            f"from the other seeds' {first['split'].get('id')!r}; the seeds of a "
                            f"group must share one split")
    env = first.get("environment")
    env = {k: v for k, v in env.items() if v is None or isinstance(v, (str, int, float, bool))} \
        if isinstance(env, dict) else None
    keep = ("id", "generated", "protocol", "way", "query", "shots", "episodes", "source",
            "manifest_sha256")
    return {"task": first["task"], "method": first["method"], "dataset": first["dataset"],
            "split": {k: first["split"][k] for k in keep if k in first["split"]},
            "backbone": first.get("backbone"), "pretraining": first.get("pretraining", "none"),
            "flags": {k: bool((first.get("flags") or {}).get(k, False)) for k in
                      ("selected_on_test", "generated_split", "nonstandard_backbone")},
            "environment": env, "fsbench_version": first.get("fsbench_version")}


def _fscil_metrics(results: list[dict]) -> dict:
    runs = [r["metrics"]["sessions"] for r in results]
    if len({len(s) for s in runs}) != 1:
        raise UserError("the seeds of a group report different numbers of sessions; rerun the "
                        "failed seeds")
    sessions = []
    for i, first in enumerate(runs[0]):
        rec = {"session": int(first["session"]), "num_seen": int(first["num_seen"])}
        for key in ("acc", "base_acc", "novel_acc", "hm"):
            rec[key] = stat([s[i].get(key) for s in runs])
        sessions.append(rec)
    out = {"sessions": sessions}
    for key in ("avg", "pd", "last"):
        out[key] = stat([r["metrics"].get(key) for r in results])
    return out


def _fsl_metrics(results: list[dict]) -> dict:
    shots = list(results[0]["metrics"]["shots"])
    for r in results[1:]:
        if list(r["metrics"]["shots"]) != shots:
            raise UserError(f"run {r.get('run_dir')}: shots {list(r['metrics']['shots'])} "
                            f"differ from the other seeds' {shots}")
    return {"shots": {k: {"acc": stat([r["metrics"]["shots"][k]["mean"] for r in results]),
                          "episode_ci95": stat([r["metrics"]["shots"][k]["ci95"]
                                                for r in results])}
                      for k in shots}}


def summarize(group: dict, results: list[dict], failed: list[dict]) -> dict:
    """The summary of one group from its complete ``results`` (sorted by seed).

    ``group`` holds ``group`` (name), ``settings`` (the grid point) and ``config_hash``;
    ``failed`` lists ``{seed, run_dir, error}`` of the seeds that did not finish."""
    from fsbench.jsonio import now_iso

    ident = _identity(results)
    metrics = _fscil_metrics(results) if ident["task"] == "fscil" else _fsl_metrics(results)
    seeds = [int(r["seed"]) for r in results]
    return {"schema": SUMMARY_SCHEMA, "group": group["group"], **ident,
            "settings": group["settings"], "config_hash": group["config_hash"],
            "seeds": seeds, "n_seeds": len(seeds),
            "runs": [{"seed": s, "run_dir": r["run_dir"]} for s, r in zip(seeds, results)],
            "failed": failed, "metrics": metrics, "finished": now_iso()}


# --------------------------------------------------------------------------- validation

def _checks():
    """The validators of both files, built from the leaderboard's checker kit."""
    from fsbench.leaderboard import schema as s

    run_dir = s.string(max_len=1000)
    name = s.string(re.compile(r"^[a-z0-9][a-z0-9_.+-]{0,63}$"), 64,
                     what="a method or dataset name")

    def stat_check(lo: float, hi: float):
        inner = s.obj({"mean": s.number(lo, hi), "std": s.nullable(s.number(0, hi - lo)),
                       "ci95": s.nullable(s.number(0, 1e6)), "n": s.integer(1, 100_000),
                       "values": s.array(s.number(lo, hi), 1, 100_000)})

        def f(p, path, v):
            if not inner(p, path, v):
                return False
            ok = True
            if len(v["values"]) != v["n"]:
                p.add(f"{path}.n", f"{v['n']} but {len(v['values'])} values")
                ok = False
            elif abs(statistics.fmean(v["values"]) - v["mean"]) > _TOL:
                p.add(f"{path}.mean", "is not the mean of values")
                ok = False
            if (v["n"] >= 2) != (v["std"] is not None) or (v["std"] is None) != \
                    (v["ci95"] is None):
                p.add(f"{path}.std", "std and ci95 are null for one value and numbers otherwise")
                ok = False
            return ok
        return f

    acc, pd = stat_check(0, 100), stat_check(-100, 100)
    session = s.obj({"session": s.integer(0, 99), "num_seen": s.integer(0, 10**6), "acc": acc,
                     "base_acc": s.nullable(acc), "novel_acc": s.nullable(acc),
                     "hm": s.nullable(acc)})
    fscil = s.obj({"sessions": s.array(session, 1, 100), "avg": acc, "pd": pd, "last": acc})
    shot = s.obj({"acc": acc, "episode_ci95": s.nullable(stat_check(0, 100))})
    fsl = s.obj({"shots": s.mapping(re.compile(r"^[1-9][0-9]{0,2}$"), shot, 10, "shot count")})
    seed = s.integer(0, 2**32 - 1)
    failure = s.obj({"seed": seed, "run_dir": run_dir, "error": s.string(max_len=2000)})
    settings = s.mapping(_KEY, _setting, 100, "dotted preset key")
    summary = s.obj({
        "schema": s.exactly(SUMMARY_SCHEMA), "group": s.string(_GROUP, 200, what="a group name"),
        "task": s.TASK, "method": name, "dataset": name, "split": s.obj(
            {"id": s.string(max_len=200), "generated": s.boolean},
            {"protocol": s.FSCIL_PROTOCOL, "way": s.integer(2, 10_000),
             "query": s.integer(1, 10**6), "shots": s.array(s.integer(1, 999), 1, 10),
             "episodes": s.integer(1, 10**7), "source": s.nullable(s.SLUG),
             "manifest_sha256": s.nullable(s.HEX64)}),
        "backbone": s.nullable(s.string(max_len=200)), "pretraining": s.SLUG,
        "flags": s.obj({k: s.boolean for k in s.SUBMISSION_FLAGS}),
        "environment": s.nullable(s.mapping(re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"),
                                            s.scalar, 100, "environment key")),
        "fsbench_version": s.nullable(s.SHORT_TEXT), "settings": settings,
        "config_hash": s.HEX64, "seeds": s.array(seed, 1, 100_000, unique=True),
        "n_seeds": s.integer(1, 100_000),
        "runs": s.array(s.obj({"seed": seed, "run_dir": run_dir}), 1, 100_000),
        "failed": s.array(failure, 0, 100_000), "metrics": s.anything,
        "finished": s.SHORT_TEXT})
    group = s.obj({"group": s.string(_GROUP, 200, what="a group name"), "method": name,
                   "dataset": name, "settings": settings,
                   "summary": s.nullable(s.string(re.compile(r"^summaries/[^/\\]+\.json$"), 300,
                                                  what="summaries/<group>.json")),
                   "seeds": s.array(seed, 0, 100_000, unique=True),
                   "failed": s.array(failure, 0, 100_000)})
    index = s.obj({"schema": s.exactly(INDEX_SCHEMA), "spec": s.obj({}, {
        "methods": s.array(name, 1, 1000), "datasets": s.array(name, 1, 1000),
        "seeds": s.array(seed, 1, 100_000),
        "grid": s.mapping(_KEY, s.array(_setting, 1, 1000), 100, "dotted preset key"),
        "set": s.array(s.string(max_len=2000), 0, 1000),
        "preset": s.nullable(s.string(max_len=1000)), "device": s.nullable(s.SHORT_TEXT),
        "threads": s.integer(1, 1024), "reproducible": s.boolean,
        "ray": s.nullable(s.SHORT_TEXT), "jobs": s.integer(1, 10_000)}),
        "groups": s.array(group, 0, 100_000), "finished": s.SHORT_TEXT})
    return summary, index, {"fscil": fscil, "fsl": fsl}


def _setting(p, path, v) -> bool:
    """A grid value: a scalar, or a list of scalars (e.g. ``eval.shots=[1,5]``)."""
    from fsbench.leaderboard import schema as s

    if isinstance(v, list):
        return s.array(s.scalar, 0, 100)(p, path, v)
    return s.scalar(p, path, v)



def validate(doc: Any, label: str) -> list[str]:
    """Every problem of a group summary or a sweep index, one line each (empty when valid)."""
    from fsbench.leaderboard import schema as s

    p = s.Problems(label)
    summary, index, metrics = _checks()
    kind = doc.get("schema") if isinstance(doc, dict) else None
    if kind == INDEX_SCHEMA:
        index(p, "", doc)
        return p.lines
    if kind != SUMMARY_SCHEMA:
        p.add("schema", f"{json.dumps(kind)[:60]} is neither {SUMMARY_SCHEMA!r} nor "
                        f"{INDEX_SCHEMA!r}; pass a file written by `fsbench sweep`")
        return p.lines
    if not summary(p, "", doc):
        return p.lines
    if metrics[doc["task"]](p, "metrics", doc["metrics"]):
        n = doc["n_seeds"]
        stats = _stats_of(doc)
        if any(x["n"] != n for x in stats):
            p.add("metrics", f"every statistic must be over n_seeds = {n} values")
    if len(doc["seeds"]) != doc["n_seeds"] or [r["seed"] for r in doc["runs"]] != doc["seeds"]:
        p.add("n_seeds", "seeds, n_seeds and runs must name the same seeds")
    return p.lines


def _stats_of(doc: dict) -> list[dict]:
    m = doc["metrics"]
    if doc["task"] == "fscil":
        cells = [s[k] for s in m["sessions"] for k in ("acc", "base_acc", "novel_acc", "hm")]
        cells += [m["avg"], m["pd"], m["last"]]
    else:
        cells = [v[k] for v in m["shots"].values() for k in ("acc", "episode_ci95")]
    return [c for c in cells if c is not None]


def read(path: str | Path) -> tuple[dict, Path]:
    """Read and validate a summary file, or a sweep folder's index; returns (doc, file).

    A problem raises :class:`~fsbench.leaderboard.schema.ValidationError` (``problems`` holds one
    line each; its message is the first of them)."""
    from fsbench.leaderboard import schema as s

    path = Path(path)
    if path.is_dir():
        path = path / INDEX_FILE
    doc = s.load_json(path, str(path))
    errs = validate(doc, str(path))
    if errs:
        raise s.ValidationError(errs, str(path), "it is not a valid fsbench sweep summary")
    return doc, path


def show(path: str | Path) -> str:
    """``fsbench show SUMMARY.json|SWEEP_DIR``: the table(s); an invalid file is one line."""
    from fsbench.leaderboard.schema import ValidationError

    try:
        doc, file = read(path)
        return sweep_table(doc, file.parent) if doc["schema"] == INDEX_SCHEMA else \
            summary_table(doc)
    except ValidationError as e:
        more = len(e.problems) - 1
        raise UserError(e.problems[0] + (f" (and {more} more problem{'s' if more > 1 else ''})"
                                         if more else "")) from None


def is_summary(path: str | Path) -> bool:
    """Whether ``path`` is a sweep folder or a file that calls itself a sweep summary or index
    (sniffed from its first bytes; :func:`read` validates it)."""
    path = Path(path)
    if path.is_dir():
        return (path / INDEX_FILE).is_file()
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return any(k.encode() in head for k in (SUMMARY_SCHEMA, INDEX_SCHEMA))


# --------------------------------------------------------------------------- tables

def _ms(st: dict | None, nd: int = 2) -> str:
    if st is None:
        return "-"
    return f"{st['mean']:.{nd}f}" + (f" ± {st['std']:.{nd}f}" if st["std"] is not None else "")


def _ci(st: dict | None) -> str:
    return "-" if st is None or st["ci95"] is None else f"{st['ci95']:.2f}"


def _settings_text(settings: dict) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in settings.items()) or "preset"


def summary_table(doc: dict) -> str:
    """The table ``fsbench show`` prints for one group summary."""
    seeds = ", ".join(map(str, doc["seeds"]))
    head = (f"{doc['method']} on {doc['dataset']} [{_settings_text(doc['settings'])}]: "
            f"{doc['n_seeds']} seed{'s' if doc['n_seeds'] != 1 else ''} ({seeds})")
    lines = [head, "mean ± sample std over seeds; ±95%: 95% confidence half-width of the mean "
                   "over seeds (Student t)"]
    m = doc["metrics"]
    if doc["task"] == "fscil":
        w = 15
        lines.append(f"{'session':>7} {'classes':>7} {'acc':>{w}} {'±95%':>6} {'base':>{w}} "
                     f"{'novel':>{w}} {'hm':>{w}}")
        for s in m["sessions"]:
            lines.append(f"{s['session']:>7} {s['num_seen']:>7} {_ms(s['acc']):>{w}} "
                         f"{_ci(s['acc']):>6} {_ms(s['base_acc']):>{w}} "
                         f"{_ms(s['novel_acc']):>{w}} {_ms(s['hm']):>{w}}")
        lines.append("  ".join(f"{k.upper() if k != 'last' else k} {_ms(m[k])} "
                               f"(±95% {_ci(m[k])})" for k in ("avg", "pd", "last")))
    else:
        sp = doc["split"]
        lines[0] += (f"; {sp.get('way')}-way, {sp.get('query')} queries, {sp.get('episodes')} "
                     f"episodes per seed")
        lines.append(f"{'shot':>5} {'acc':>15} {'±95%':>6} {'episodes ±95%':>14}")
        for k, v in m["shots"].items():
            ep = v["episode_ci95"]
            lines.append(f"{k:>5} {_ms(v['acc']):>15} {_ci(v['acc']):>6} "
                         f"{'-' if ep is None else format(ep['mean'], '.2f'):>14}")
    for f in doc["failed"]:
        lines.append(f"failed: seed {f['seed']} ({f['run_dir']}): {f['error']}")
    return "\n".join(lines)


def sweep_table(index: dict, root: Path) -> str:
    """Every group of a sweep folder (``fsbench show SWEEP_DIR``), failures last."""
    parts, failed = [], []
    for g in index["groups"]:
        if g["summary"] is not None:
            doc, _ = read(root / g["summary"])
            parts.append(summary_table({**doc, "failed": []}))
        else:
            parts.append(f"{g['method']} on {g['dataset']} [{_settings_text(g['settings'])}]: "
                         f"no seed finished")
        failed += [f"  {f['run_dir']} ({g['method']} on {g['dataset']}, seed {f['seed']}): "
                   f"{f['error']}" for f in g["failed"]]
    n = sum(len(g["seeds"]) for g in index["groups"])
    tail = [f"{n} run{'s' if n != 1 else ''} finished, {len(failed)} failed"
            + (":" if failed else "")] + failed
    return "\n\n".join(parts + ["\n".join(tail)])

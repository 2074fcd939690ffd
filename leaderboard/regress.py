"""Regression checks: reproductions against published rows, and glyphs re-runs against
``expected/glyphs.json``.

Tolerances are in accuracy points on ``ours - published`` (or ``rerun - expected``): a number ``t``
allows ``[-t, +t]``; ``{"below": b, "above": a}`` allows ``[-b, +a]`` and a missing or null side is
unbounded (one-sided). A submission's own ``tolerance`` wins over its published entry's, which wins
over the default (``--tolerance``, 1.0).
"""
from __future__ import annotations

import inspect
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fsbench.errors import UserError

from . import schema, store
from .render import grid
from .schema import ValidationError, describe_tolerance, parse_tolerance, within

DEFAULT_TOLERANCE = 1.0
EXPECTED_DATASET = "glyphs"
REGENERATE = "fsbench regress --embedded --update"


@dataclass
class Drift:
    what: str  # submission path or expected entry
    method: str
    table: str  # dataset / protocol
    cell: str
    reference: float
    ours: float
    tolerance: tuple

    @property
    def delta(self) -> float:
        return self.ours - self.reference


def drift_table(drifts: list[Drift], ref_name: str, ours_name: str) -> str:
    rows = [[d.what, d.method, d.table, d.cell, f"{d.reference:.2f}", f"{d.ours:.2f}",
             f"{d.delta:+.2f}", describe_tolerance(d.tolerance)] for d in drifts]
    return grid(["file", "method", "dataset/protocol", "cell", ref_name, ours_name, "delta",
                 "allowed"], rows)


def compare(ref_values, our_values, tol) -> list[tuple[str, float, float]]:
    """(cell, reference, ours) for every cell outside the tolerance; unknown cells are skipped."""
    ours = dict(our_values)
    out = []
    for cell, ref in ref_values:
        v = ours.get(cell)
        if ref is None or v is None:
            continue
        if not within(v - ref, tol):
            out.append((cell, ref, v))
    return out


# --------------------------------------------------------------------------- published

def regress_published(lb: store.Leaderboard, default_tol: float = DEFAULT_TOLERANCE,
                      out: Callable[[str], None] = print) -> int:
    """0 when every comparable reproduction is within tolerance of its published row, else 1."""
    drifts: list[Drift] = []
    compared = skipped = 0
    lines = []
    for sub in lb.submissions:
        why = sub.exclusion()
        if why:
            skipped += 1
            lines.append(f"  not compared: {sub.key}: {why}; such runs are never compared "
                         f"with published numbers")
            continue
        ref, reason = lb.reference_for(sub)
        if ref is None:
            skipped += 1
            lines.append(f"  not compared: {sub.key}: {reason}")
            continue
        tol_raw = sub.tolerance if sub.tolerance is not None else ref.tolerance
        tol = parse_tolerance(tol_raw, default_tol)
        compared += 1
        unresolved = [c for c, v in ref.values() if v is None]
        if unresolved:
            lines.append(f"  {sub.key}: published {ref.key} has no agreed value for "
                         f"{', '.join(unresolved)}; those cells are not compared")
        for cell, r, v in compare(ref.values(), sub.values(), tol):
            drifts.append(Drift(sub.key, sub.method, f"{sub.dataset}/{sub.protocol}", cell, r, v,
                                tol))
        if ref.verified is False:
            lines.append(f"  {sub.key}: compared with {ref.key}, which is not verified")
    out(f"regress: {compared} reproduction(s) compared with published rows, {skipped} not "
        f"compared (default tolerance ±{default_tol:g} points per cell)")
    for ln in lines:
        out(ln)
    if drifts:
        out(f"FAILED: {len(drifts)} cell(s) drift beyond tolerance:")
        out(drift_table(drifts, "published", "ours"))
        return 1
    out("OK: no drift beyond tolerance")
    return 0


# --------------------------------------------------------------------------- embedded (glyphs)

def load_expected(path: Path) -> dict:
    label = f"expected/{path.name}"
    doc = schema.load_json(path, label)
    errs = schema.validate_expected_file(doc, label)
    if errs:
        raise ValidationError(errs, label)
    return doc


def empty_expected(dataset: str = EXPECTED_DATASET) -> dict:
    return {"schema_version": schema.SCHEMA_VERSION, "kind": "fsbench.expected",
            "dataset": dataset, "regenerate": REGENERATE, "tolerance": DEFAULT_TOLERANCE,
            "default_overrides": {}, "generated": None, "entries": []}


def default_runner(**kwargs) -> dict:
    """Run one method with :func:`fsbench.api.run` (imported lazily)."""
    try:
        from fsbench.api import run
    except ImportError as e:  # pragma: no cover - api not present
        raise UserError(f"fsbench.api.run is not available ({e}); cannot re-run the glyphs "
                        f"presets") from None
    params = inspect.signature(run).parameters
    if "progress" in params:
        kwargs.setdefault("progress", False)
    if "loggers" in params:
        kwargs.setdefault("loggers", [])
    if "reproducible" in params:  # the embedded regression always runs pinned (fsbench.repro)
        kwargs.setdefault("reproducible", True)
    return run(**kwargs)


def metrics_of(result: dict) -> dict:
    """The compared part of a result dict: sessions' accuracies, or shots' means."""
    if result.get("status") not in (None, "complete"):
        raise UserError(f"run of {result.get('method')} ended with status "
                        f"{result.get('status')!r}")
    m = result.get("metrics") or {}
    if result.get("task") == "fscil":
        out = {"sessions": [round(float(s["acc"]), 4) for s in m.get("sessions", [])]}
        for k in ("avg", "pd"):
            if m.get(k) is not None:
                out[k] = round(float(m[k]), 4)
        return out
    shots = m.get("shots") or {}
    return {"shots": {str(k): round(float(v["mean"]), 4) for k, v in shots.items()}}


def _cells(task: str, metrics: dict) -> list[tuple[str, float]]:
    if task == "fscil":
        return [(f"session {i}", v) for i, v in enumerate(metrics.get("sessions", []))]
    shots = metrics.get("shots", {})
    return [(f"{k}-shot", shots[k]) for k in sorted(shots, key=int)]


def _run_entry(runner, method: str, dataset: str, overrides: dict, seed: int) -> tuple[dict, float]:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fsbench-regress-") as tmp:
        result = runner(method=method, dataset=dataset, overrides=dict(overrides), seed=seed,
                        out_dir=tmp)
    return result, time.perf_counter() - t0


def regress_embedded(path: Path, methods: list[str] | None = None, runner=None,
                     out: Callable[[str], None] = print) -> int:
    """Re-run every entry of the expected file and compare; 0 when all are within tolerance."""
    runner = runner or default_runner
    doc = load_expected(path)
    entries = doc["entries"]
    if methods:
        want = {schema.canonical_method(m) for m in methods}
        entries = [e for e in entries if schema.canonical_method(e["method"]) in want]
        missing = want - {schema.canonical_method(e["method"]) for e in entries}
        if missing:
            raise UserError(f"{path.name} has no entry for {', '.join(sorted(missing))}; add them "
                            f"with `{REGENERATE} --methods ...`")
    if not entries:
        out(f"regress --embedded: {path} has no entries yet; generate them with `{REGENERATE}`")
        return 0
    drifts: list[Drift] = []
    for e in entries:
        overrides = {**doc.get("default_overrides", {}), **e.get("overrides", {})}
        tol = parse_tolerance(e.get("tolerance", doc["tolerance"]), DEFAULT_TOLERANCE)
        out(f"  running {e['method']} (seed {e['seed']}, {e.get('runtime_s', '?')} s when the "
            f"file was made) ...")
        result, secs = _run_entry(runner, e["method"], doc["dataset"], overrides, e["seed"])
        got = metrics_of(result)
        note = ""
        if e.get("config_hash") and result.get("config_hash") and \
                result["config_hash"] != e["config_hash"]:
            note = " (its configuration changed since the expected file was made)"
        bad = compare(_cells(e["task"], e["metrics"]), _cells(e["task"], got), tol)
        if len(_cells(e["task"], got)) != len(_cells(e["task"], e["metrics"])):
            out(f"  {e['method']}: {len(_cells(e['task'], got))} cells, expected "
                f"{len(_cells(e['task'], e['metrics']))}")
            bad = bad or [("cells", float(len(_cells(e["task"], e["metrics"]))),
                           float(len(_cells(e["task"], got))))]
        out(f"  {e['method']} (seed {e['seed']}): {'ok' if not bad else 'DRIFT'} in {secs:.1f} s"
            f"{note}")
        for cell, r, v in bad:
            drifts.append(Drift(f"expected/{path.name}", e["method"], f"{doc['dataset']}/"
                                f"{e['task']}", cell, r, v, tol))
    if drifts:
        out(f"FAILED: {len(drifts)} cell(s) drift from {path.name} beyond tolerance:")
        out(drift_table(drifts, "expected", "rerun"))
        out(f"If the change is intended, regenerate the file with `{REGENERATE}`.")
        return 1
    out(f"OK: {len(entries)} re-run(s) within tolerance of {path.name}")
    return 0


def update_expected(path: Path, methods: list[str] | None = None, runner=None,
                    registry_methods: Callable[[], list[tuple[str, str]]] | None = None,
                    seed: int = 0, out: Callable[[str], None] = print) -> int:
    """Re-run the methods and rewrite the expected file (atomically). Methods: ``methods``, else the
    file's entries plus every registered method. Returns 1 when some method could not run."""
    from .schema import canonical_method

    runner = runner or default_runner
    doc = load_expected(path) if path.is_file() else empty_expected()
    by_method = {canonical_method(e["method"]): e for e in doc["entries"]}
    if methods:
        names = list(dict.fromkeys(methods))
    else:
        names = [e["method"] for e in doc["entries"]]
        try:
            reg = registry_methods() if registry_methods else _registered_methods()
        except Exception as ex:  # noqa: BLE001 - the registry is optional here
            out(f"  (registry not available: {ex}; updating the existing entries only)")
            reg = []
        names += [n for n, _task in reg if canonical_method(n) not in
                  {canonical_method(x) for x in names}]
    if not names:
        raise UserError("no methods to run; pass --methods or register methods first")
    failures = 0
    new_entries = []
    for name in names:
        old = by_method.get(canonical_method(name), {})
        overrides = {**doc.get("default_overrides", {}), **old.get("overrides", {})}
        s = old.get("seed", seed)
        try:
            result, secs = _run_entry(runner, name, doc["dataset"], overrides, s)
            metrics = metrics_of(result)
        except Exception as ex:  # noqa: BLE001 - report and go on with the other methods
            failures += 1
            msg = " ".join(str(ex).split()) or type(ex).__name__
            out(f"  {name}: could not run ({msg})" + ("; keeping its old entry" if old else ""))
            if old:
                new_entries.append(old)
            continue
        env = result.get("environment") or {}
        entry = {"method": name, "task": result.get("task", old.get("task")), "seed": s,
                 "overrides": old.get("overrides", {}), "metrics": metrics,
                 "config_hash": result.get("config_hash"),
                 "fsbench_version": result.get("fsbench_version"),
                 "generated": result.get("finished"),
                 "environment": {k: env.get(k) for k in _ENV_RECORDED if k in env},
                 "runtime_s": round(secs, 1)}
        if "tolerance" in old:
            entry["tolerance"] = old["tolerance"]
        if "note" in old:
            entry["note"] = old["note"]
        new_entries.append(entry)
        out(f"  {name}: {_summary(entry)} in {secs:.1f} s")
    for key, old in by_method.items():  # entries not re-run keep their place
        if key not in {canonical_method(e["method"]) for e in new_entries}:
            new_entries.append(old)
    doc["entries"] = new_entries
    doc["generated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    errs = schema.validate_expected_file(doc, f"expected/{path.name}")
    if errs:
        raise ValidationError(errs, f"the regenerated expected/{path.name}")
    store.atomic_write_text(path, store.dump(doc))
    out(f"wrote {path} ({len(new_entries)} entries)")
    return 1 if failures else 0


# What an expected entry records of the machine that made it (fsbench.repro.fingerprint included).
_ENV_RECORDED = ("python", "torch", "numpy", "platform", "device", "git_commit", "cpu_model",
                 "cpu_capability", "cpu_avx512", "mkl", "onednn", "threads", "reproducible",
                 "pinned_env")


def _summary(entry: dict) -> str:
    m = entry["metrics"]
    if "sessions" in m:
        return "sessions " + " ".join(f"{v:.2f}" for v in m["sessions"])
    return ", ".join(f"{k}-shot {v:.2f}" for k, v in m["shots"].items())


def _registered_methods() -> list[tuple[str, str]]:
    from fsbench.registry import METHODS

    return [(e.name, e.task) for e in METHODS.entries()]

"""The leaderboard folder: published entries, submissions, atomic writes, result -> submission.

Layout of a leaderboard folder (the packaged one is ``leaderboard/`` of the repository)::

    published/*.json                      published numbers with provenance (schema.py)
    submissions/<dataset>/<method>-<id>.json   one submission each; id = short hash of the content
    expected/glyphs.json                  expected results of our own runs on the glyphs presets

A folder given with ``--leaderboard-dir`` that has no ``published/`` (or ``expected/``) uses the
packaged one.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fsbench.atomic import atomic_write_text
from fsbench.errors import UserError

from . import schema
from .schema import ValidationError

PACKAGE_DIR = Path(__file__).resolve().parent
RESULT_SCHEMA = "fsbench.result/1"
ID_LENGTH = 12


#: The user's leaderboard folder, under the current directory, that ``fsbench submit`` writes
#: to by default (its published entries come from the package unless it has its own).
USER_DIR = "fsbench-leaderboard"


def user_dir() -> Path:
    """Where ``fsbench submit`` writes without ``--leaderboard-dir``: $FSBENCH_LEADERBOARD_DIR,
    else ``./fsbench-leaderboard`` - never the installed package."""
    env = os.environ.get("FSBENCH_LEADERBOARD_DIR")
    return Path(env).expanduser() if env else Path.cwd() / USER_DIR


def default_dir() -> Path:
    """What the reading commands use without ``--leaderboard-dir``: $FSBENCH_LEADERBOARD_DIR,
    else ``./fsbench-leaderboard`` when it exists, else the packaged leaderboard."""
    user = user_dir()
    return user if os.environ.get("FSBENCH_LEADERBOARD_DIR") or user.is_dir() else PACKAGE_DIR


def published_dir(lb_dir: Path) -> Path:
    d = Path(lb_dir) / "published"
    return d if d.is_dir() else PACKAGE_DIR / "published"


def expected_path(lb_dir: Path, dataset: str = "glyphs") -> Path:
    p = Path(lb_dir) / "expected" / f"{dataset}.json"
    return p if p.is_file() or (Path(lb_dir) / "expected").is_dir() else \
        PACKAGE_DIR / "expected" / f"{dataset}.json"


def canonical_backbone(name) -> str:
    return "".join(ch for ch in str(name or "").lower() if ch.isalnum())


@dataclass
class Entry:
    """One leaderboard row, published or submitted, in a common shape."""

    kind: str  # "published" | "submission"
    key: str  # published id, or the submission's path relative to the leaderboard folder
    method: str
    display: str
    task: str
    dataset: str
    protocol: str
    backbone: str | None
    pretraining: str | None
    sessions: list | None = None  # FSCIL: accuracy per session (None: unknown)
    avg: float | None = None
    pd: float | None = None
    shots: dict = field(default_factory=dict)  # FSL: {shot: (mean | None, ci95 | None)}
    verified: bool | None = None
    cells: dict = field(default_factory=dict)
    flags: dict = field(default_factory=dict)
    split_generated: bool = False
    tolerance: Any = None
    reproduces: str | None = None
    source: str = ""
    note: str = ""
    paper: str | None = None
    venue: str | None = None
    year: int | None = None
    seeds: list = field(default_factory=list)
    #: Multi-seed rows: sample std over seeds per session + AVG + PD (FSCIL) or per shot (FSL).
    stds: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)

    @property
    def method_key(self) -> str:
        return schema.canonical_method(self.method)

    @property
    def table_key(self) -> tuple:
        return (self.task, self.dataset, self.protocol)

    def exclusion(self) -> str | None:
        """Why this submission is never compared with published numbers (None: comparable)."""
        if self.kind != "submission":
            return None
        reasons = []
        if self.split_generated or self.flags.get("generated_split"):
            reasons.append("its split is generated, not the official one")
        if self.flags.get("selected_on_test"):
            reasons.append("it selected on the test set")
        if self.flags.get("nonstandard_backbone"):
            reasons.append("it uses a non-standard backbone")
        return "; ".join(reasons) or None

    def values(self) -> list[tuple[str, float | None]]:
        """(cell label, value) pairs compared by regress: sessions, or shots' means."""
        if self.task == "fscil":
            return [(f"session {i}", v) for i, v in enumerate(self.sessions or [])]
        return [(f"{k}-shot", mean) for k, (mean, _ci) in sorted(self.shots.items())]


def entry_from_published(e: dict) -> Entry:
    m = e["metrics"]
    out = Entry(kind="published", key=e["id"], method=e["method"], display=e["display_name"],
                task=e["task"], dataset=e["dataset"], protocol=e["protocol"]["name"],
                backbone=e.get("backbone"), pretraining=e.get("pretraining"),
                verified=e["verified"], cells=dict(e.get("cells") or {}),
                flags=dict(e.get("flags") or {}), tolerance=e.get("tolerance"),
                source=e["source"], note=e.get("note", ""), paper=e.get("paper"),
                venue=e.get("venue"), year=e.get("year"), raw=e)
    if e["task"] == "fscil":
        out.sessions, out.avg, out.pd = list(m["sessions"]), m["avg"], m["pd"]
    else:
        out.shots = {int(k): (v["mean"], v["ci95"]) for k, v in m["shots"].items()}
    return out


def entry_from_submission(s: dict, key: str) -> Entry:
    m = s["metrics"]
    src = s.get("source") or {}
    out = Entry(kind="submission", key=key, method=s["method"], display=s["method"],
                task=s["task"], dataset=s["dataset"], protocol=s["protocol"]["name"],
                backbone=s["backbone"], pretraining=s["pretraining"], flags=dict(s["flags"]),
                split_generated=bool(s["split"]["generated"]) or s["split"]["id"] == "generated",
                tolerance=s.get("tolerance"), reproduces=s.get("reproduces"),
                source=src.get("type", ""), note=s.get("note", ""), paper=s.get("paper"),
                seeds=list(s["seeds"]), raw=s)
    if s["task"] == "fscil":
        out.sessions = [x["acc"] for x in m["sessions"]]
        out.avg, out.pd = m["avg"], m["pd"]
        out.stds = {f"sessions[{i}]": x.get("std") for i, x in enumerate(m["sessions"])}
        out.stds.update(avg=m.get("avg_std"), pd=m.get("pd_std"))
    else:
        out.shots = {int(k): (v["mean"], v["ci95"]) for k, v in m["shots"].items()}
        out.stds = {f"shots.{k}": v.get("std") for k, v in m["shots"].items()}
    out.stds = {k: v for k, v in out.stds.items() if v is not None}
    return out


@dataclass
class Leaderboard:
    root: Path
    published: list[Entry]
    submissions: list[Entry]

    def datasets(self) -> list[str]:
        return sorted({e.dataset for e in self.published + self.submissions})

    def reference_for(self, sub: Entry) -> tuple[Entry | None, str]:
        """The published entry a submission reproduces, or (None, why not)."""
        if sub.reproduces:
            for e in self.published:
                if e.key == sub.reproduces:
                    return e, ""
            return None, f"reproduces {sub.reproduces!r}, which is no published entry"
        cands = [e for e in self.published
                 if e.table_key == sub.table_key and e.method_key == sub.method_key]
        if len(cands) > 1:
            same = [e for e in cands
                    if canonical_backbone(e.backbone) == canonical_backbone(sub.backbone)]
            cands = same if same else cands
        if not cands:
            return None, "no published entry for this method and protocol"
        if len(cands) > 1:
            return None, (f"several published entries match ({', '.join(e.key for e in cands)});"
                          f" name one with the submission's 'reproduces' field")
        return cands[0], ""


def load_published(lb_dir: Path) -> list[Entry]:
    problems: list[str] = []
    entries: list[Entry] = []
    seen: dict[str, str] = {}
    pdir = published_dir(lb_dir)
    for path in sorted(pdir.glob("*.json")):
        label = f"published/{path.name}"
        try:
            doc = schema.load_json(path, label)
        except ValidationError as e:
            problems.extend(e.problems)
            continue
        errs = schema.validate_published_file(doc, label)
        if errs:
            problems.extend(errs)
            continue
        for i, e in enumerate(doc["entries"]):
            if e["id"] in seen:
                problems.append(f"{label}: entries[{i}].id: {e['id']!r} is also used in "
                                f"{seen[e['id']]}")
                continue
            seen[e["id"]] = label
            entries.append(entry_from_published(e))
    if problems:
        raise ValidationError(problems, f"the published entries ({pdir})")
    return entries


def load_submission_file(path: Path, label: str) -> dict:
    doc = schema.load_json(path, label)
    errs = schema.validate_submission(doc, label)
    if errs:
        raise ValidationError(errs, label)
    return doc


def load(lb_dir: str | Path | None = None) -> Leaderboard:
    """Read and validate a whole leaderboard folder; every problem is reported at once."""
    root = Path(lb_dir) if lb_dir else default_dir()
    if lb_dir and not root.is_dir():
        raise UserError(f"leaderboard folder {root} does not exist")
    problems: list[str] = []
    try:
        published = load_published(root)
    except ValidationError as e:
        problems.extend(e.problems)
        published = []
    subs: list[Entry] = []
    sdir = root / "submissions"
    for path in sorted(sdir.glob("*/*.json")) if sdir.is_dir() else []:
        if path.name.startswith("."):
            continue  # a temporary file of a write in progress
        rel = path.relative_to(root).as_posix()
        try:
            doc = load_submission_file(path, rel)
        except ValidationError as e:
            problems.extend(e.problems)
            continue
        if doc["dataset"] != path.parent.name:
            problems.append(f"{rel}: dataset: {doc['dataset']!r} but the file is under "
                            f"submissions/{path.parent.name}/")
            continue
        subs.append(entry_from_submission(doc, rel))
    lb = Leaderboard(root, published, subs)
    ids = {e.key for e in published}
    for s in subs:
        if s.reproduces and s.reproduces not in ids and published:
            problems.append(f"{s.key}: reproduces: {s.reproduces!r} names no published entry")
    if problems:
        raise ValidationError(problems, f"the leaderboard folder {root}")
    return lb


# --------------------------------------------------------------------------- writing

def dump(doc: dict) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def submission_id(sub: dict) -> str:
    canon = json.dumps(sub, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                       allow_nan=False)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()[:ID_LENGTH]


#: Fields a submitter adds to a run; the same run with another note is still the same run.
ANNOTATIONS = ("note", "reproduces")


def run_id(sub: dict) -> str:
    """The identity of the run behind a submission: its id without :data:`ANNOTATIONS`."""
    return submission_id({k: v for k, v in sub.items() if k not in ANNOTATIONS})


def same_run(lb_dir: Path, sub: dict) -> Path | None:
    """An existing submission of the same run (:func:`run_id`) in ``lb_dir``, if any."""
    folder = Path(lb_dir) / "submissions" / str(sub["dataset"])
    rid = run_id(sub)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # `fsbench leaderboard` reports unreadable files
        if isinstance(doc, dict) and run_id(doc) == rid:
            return path
    return None


def submission_path(lb_dir: Path, sub: dict) -> Path:
    return Path(lb_dir) / "submissions" / sub["dataset"] / \
        f"{sub['method']}-{submission_id(sub)}.json"


def write_submission(sub: dict, lb_dir: str | Path, label: str = "submission") -> Path:
    """Validate and write a submission; returns its path. Nothing is written when it is invalid
    or when the leaderboard holds the same run already (:func:`run_id`; a one-line
    :class:`UserError` naming that file; concurrent submits of one run write one file)."""
    errs = schema.validate_submission(sub, label)
    if errs:
        raise ValidationError(errs, label)
    lb_dir = Path(lb_dir)
    path = submission_path(lb_dir, sub)
    try:
        earlier = same_run(lb_dir, sub)
        if earlier is None:
            atomic_write_text(path, dump(sub), exclusive=True)
            return path
    except FileExistsError:
        earlier = path
    raise UserError(f"{label}: this run is on the leaderboard already as "
                    f"{earlier.relative_to(lb_dir).as_posix()} (run id {run_id(sub)}); nothing "
                    f"was added - delete that file first to replace it")


# --------------------------------------------------------------------------- result -> submission

_SESSION_KEYS = ("session", "num_seen", "acc", "base_acc", "novel_acc", "hm", "num_test")
_SHOT_KEYS = ("mean", "ci95", "n_episodes")


def _fsl_protocol_name(way, source=None) -> str:
    return f"{way}way" + (f"-from-{source}" if source else "")


def result_to_submission(result: Any, label: str) -> dict:
    """Turn a ``fsbench.result/1`` dict into a submission (not yet validated)."""
    p = schema.Problems(label)
    if not isinstance(result, dict):
        raise ValidationError([f"{label}: not a fsbench result (top level is not an object)"],
                              label)
    if result.get("schema") != RESULT_SCHEMA:
        raise ValidationError([f"{label}: schema: {result.get('schema')!r} is not "
                               f"{RESULT_SCHEMA!r}; is this a fsbench result.json?"], label)
    for k in ("task", "method", "dataset", "seed", "status", "split", "metrics", "flags"):
        if k not in result:
            p.add(k, "missing from the result file")
    if p:
        raise ValidationError(p.lines, label)
    if result["status"] != "complete":
        raise ValidationError([f"{label}: status: {result['status']!r}; only complete runs can "
                               f"be submitted (resume the run with `fsbench run --resume`)"],
                              label)
    task, split, metrics = result["task"], result["split"], result["metrics"]
    if not isinstance(split, dict) or not isinstance(metrics, dict):
        raise ValidationError([f"{label}: split and metrics must be objects"], label)
    sub: dict[str, Any] = {
        "schema_version": schema.SCHEMA_VERSION,
        "method": result["method"],
        "task": task,
        "dataset": result["dataset"],
    }
    if task == "fscil":
        proto = split.get("protocol") or {}
        sub["protocol"] = {k: proto.get(k) for k in
                           ("name", "num_base", "way", "shot", "num_sessions")}
        sub["metrics"] = {
            "sessions": [{k: s[k] for k in _SESSION_KEYS if k in s} if isinstance(s, dict) else s
                         for s in metrics.get("sessions", [])],
            "avg": metrics.get("avg"), "pd": metrics.get("pd")}
        if "last" in metrics:
            sub["metrics"]["last"] = metrics["last"]
    else:
        sub["protocol"] = {"name": _fsl_protocol_name(split.get("way"), split.get("source")),
                           "way": split.get("way")}
        for k in ("query", "episodes", "shots"):
            if split.get(k) is not None:
                sub["protocol"][k] = split[k]
        shots = metrics.get("shots") or {}
        sub["metrics"] = {"shots": {str(k): ({kk: v[kk] for kk in _SHOT_KEYS if kk in v}
                                             if isinstance(v, dict) else v)
                                    for k, v in (shots.items() if isinstance(shots, dict)
                                                 else [])}}
    sub["split"] = {"id": split.get("id"), "generated": split.get("generated")}
    if split.get("manifest_sha256") is not None:
        sub["split"]["manifest_sha256"] = split["manifest_sha256"]
    sub["backbone"] = result.get("backbone")
    sub["pretraining"] = result.get("pretraining")
    sub["seeds"] = [result["seed"]]
    flags = result["flags"] if isinstance(result["flags"], dict) else {}
    sub["flags"] = {k: flags.get(k, False) for k in schema.SUBMISSION_FLAGS}
    env = result.get("environment")
    if isinstance(env, dict):
        env = {k: v for k, v in env.items()
               if v is None or isinstance(v, (str, int, float, bool))}
    sub["environment"] = env
    sub["config_hash"] = result.get("config_hash")
    sub["source"] = {"type": "fsbench-run", "fsbench_version": result.get("fsbench_version"),
                     "result_schema": RESULT_SCHEMA, "finished": result.get("finished")}
    return sub


def _mean_result(doc: dict) -> dict:
    """A sweep summary as a ``fsbench.result/1`` dict of its means (for
    :func:`result_to_submission`)."""
    m = doc["metrics"]

    def mean(st):
        return None if st is None else st["mean"]

    if doc["task"] == "fscil":
        metrics = {"sessions": [{"session": x["session"], "num_seen": x["num_seen"],
                                 **{k: mean(x[k]) for k in ("acc", "base_acc", "novel_acc",
                                                            "hm")}} for x in m["sessions"]],
                   **{k: mean(m[k]) for k in ("avg", "pd", "last")}}
    else:
        metrics = {"shots": {k: {"mean": mean(v["acc"]), "ci95": mean(v["episode_ci95"]),
                                 "n_episodes": doc["split"].get("episodes")}
                             for k, v in m["shots"].items()}}
    return {"schema": RESULT_SCHEMA, "status": "complete", "seed": doc["seeds"][0],
            "metrics": metrics, "config_hash": doc["config_hash"],
            **{k: doc[k] for k in ("task", "method", "dataset", "split", "backbone",
                                   "pretraining", "flags", "environment", "fsbench_version",
                                   "finished")}}


def summary_to_submission(doc: dict, label: str) -> dict:
    """A multi-seed submission from a validated sweep summary (:mod:`fsbench.summary`): the means
    over seeds, ``seeds``, ``n_seeds`` and the sample std over seeds of every cell. FSL ``ci95``
    stays the 95% interval over test episodes (averaged over the seeds)."""
    from fsbench.summary import SUMMARY_SCHEMA

    sub = result_to_submission(_mean_result(doc), label)
    sub["seeds"] = list(doc["seeds"])
    sub["source"]["result_schema"] = SUMMARY_SCHEMA
    if doc["n_seeds"] < 2:
        return sub  # one seed: a single-run row
    sub["n_seeds"] = doc["n_seeds"]
    m, out = doc["metrics"], sub["metrics"]
    if doc["task"] == "fscil":
        for x, stat in zip(out["sessions"], m["sessions"]):
            x["std"] = stat["acc"]["std"]
        out.update(avg_std=m["avg"]["std"], pd_std=m["pd"]["std"], last_std=m["last"]["std"])
    else:
        for k, x in out["shots"].items():
            x["std"] = m["shots"][k]["acc"]["std"]
    return sub


def _read_summary(path: Path) -> tuple[dict, str]:
    from fsbench import summary

    doc, file = summary.read(path)
    if doc["schema"] == summary.INDEX_SCHEMA:
        files = [g["summary"] for g in doc["groups"] if g["summary"]]
        if len(files) != 1:
            raise UserError(f"{path} holds {len(files)} summaries; submit one of them: "
                            f"{', '.join(str(file.parent / f) for f in files[:5]) or 'none'}")
        doc, file = summary.read(file.parent / files[0])
    return summary_to_submission(doc, str(file)), f"submission from {file}"


def read_submission_input(path: str | Path) -> tuple[dict, str]:
    """What ``fsbench submit`` accepts: a run folder, its result.json, a sweep summary (or a sweep
    folder with one), or a submission file.

    Returns (submission, label)."""
    from fsbench.summary import is_summary

    path = Path(path)
    if is_summary(path):
        return _read_summary(path)
    if path.is_dir():
        path = path / "result.json"
        if not path.is_file():
            raise UserError(f"{path.parent} has no result.json; pass a run folder made by "
                            f"`fsbench run` or a submission file")
    label = str(path)
    is_result = path.name == "result.json"
    doc = schema.load_json(path, label if is_result else f"submission {label}",
                           max_bytes=schema.MAX_RESULT_BYTES if is_result else schema.MAX_BYTES)
    if "schema" in doc or is_result:
        return result_to_submission(doc, label), f"submission from {label}"
    return doc, f"submission {label}"

"""The leaderboard's data formats, in one place: submissions, published entries, expected results.

Everything the leaderboard reads goes through :func:`load_json` (strict, plain JSON only) and one of
the validators below. A validator never stops at the first problem: it returns every problem as one
line naming the field, e.g. ``submission x.json: metrics.sessions[3].acc: 101.2 outside [0, 100]``.
:class:`ValidationError` carries that list; the CLI prints it one line each and exits with code 2.

Nothing here unpickles or executes anything: files are parsed with :mod:`json` and checked field by
field. See ``leaderboard/README.md`` for the documentation of every field.
"""
from __future__ import annotations

import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Any, Callable

from fsbench.errors import UserError

#: Version of the submission, published-entry and expected-result formats.
SCHEMA_VERSION = 1
#: Largest file the leaderboard reads (submissions, published files, expected files).
MAX_BYTES = 1_000_000
#: Result files (``RUN_DIR/result.json``) hold per-episode accuracies and may be larger.
MAX_RESULT_BYTES = 32_000_000
#: ``avg`` must equal the mean of the sessions, ``pd`` first - last, within this.
CONSISTENCY_TOL = 0.01

#: Standard FSCIL protocols: the dataset name is the protocol name.
FSCIL_PROTOCOLS: dict[str, dict[str, int]] = {
    "cifar100": {"num_base": 60, "way": 5, "shot": 5, "num_sessions": 9},
    "miniimagenet": {"num_base": 60, "way": 5, "shot": 5, "num_sessions": 9},
    "cub200": {"num_base": 100, "way": 10, "shot": 5, "num_sessions": 11},
    "glyphs": {"num_base": 60, "way": 5, "shot": 5, "num_sessions": 9},
}

#: Datasets that FSL entries may name (the target data set of an episode).
FSL_DATASETS = (
    "miniimagenet", "tieredimagenet", "cifarfs", "fc100", "cub200", "cars", "dogs", "places",
    "plantae", "chestx", "isic", "eurosat", "cropdiseases", "omniglot", "glyphs",
)

DATASET_TITLES = {
    "cifar100": "CIFAR-100", "miniimagenet": "miniImageNet", "cub200": "CUB-200-2011",
    "glyphs": "glyphs", "tieredimagenet": "tieredImageNet", "cifarfs": "CIFAR-FS",
    "fc100": "FC100", "cars": "Stanford Cars", "dogs": "Stanford Dogs", "places": "Places",
    "plantae": "Plantae", "chestx": "ChestX", "isic": "ISIC", "eurosat": "EuroSAT",
    "cropdiseases": "CropDiseases", "omniglot": "Omniglot",
}

SUBMISSION_FLAGS = ("selected_on_test", "generated_split", "nonstandard_backbone")
CELL_STATUSES = ("unverified", "unresolved", "computed")
SOURCE_TYPES = ("fsbench-run", "manual")

_SLUG = re.compile(r"^[a-z0-9][a-z0-9._+_-]{0,63}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+/ -]{0,63}$")
_ID = re.compile(r"^[a-z0-9][a-z0-9._+_-]*(/[a-z0-9][a-z0-9._+_-]*){0,5}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SPLIT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+/=-]{0,199}$")
_SHOT_KEY = re.compile(r"^[1-9][0-9]{0,2}$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_FSL_PROTOCOL = re.compile(r"^([1-9][0-9]?)way(?:-from-([a-z0-9]+))?$")
_CELL = re.compile(r"^(?:sessions\[(\d+)\]|avg|pd|shots\.([1-9][0-9]{0,2})(?:\.(mean|ci95))?)$")


class ValidationError(UserError):
    """Invalid input with every problem listed; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str], what: str = "the input", hint: str = ""):
        self.problems = list(problems)
        self.what = what
        n = len(self.problems)
        super().__init__(f"{n} problem{'s' if n != 1 else ''} in {what}, listed above"
                         + (f"; {hint}" if hint else ""))


# --------------------------------------------------------------------------- strict JSON

class _NotPlainJSON(ValueError):
    pass


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise _NotPlainJSON(f"duplicate key {json.dumps(k)}")
        out[k] = v
    return out


def _reject_constant(token):
    raise _NotPlainJSON(f"{token} is not plain JSON (use a number or null)")


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise _NotPlainJSON(f"number {text} is out of range")
    return value


def _bounded_int(text):
    if len(text.lstrip("-")) > 30:
        raise _NotPlainJSON(f"integer {text[:20]}... is too long")
    return int(text)


def loads(data: bytes | str, label: str, max_bytes: int = MAX_BYTES) -> dict:
    """Parse plain JSON: one object, UTF-8, no NaN/Infinity, no duplicate keys, at most
    ``max_bytes``. Raises :class:`ValidationError` with one line naming the problem."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if len(raw) > max_bytes:
        raise ValidationError([f"{label}: file is {len(raw):,} bytes, over the limit of "
                               f"{max_bytes:,} bytes"], label)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValidationError([f"{label}: not UTF-8 text (byte {e.start}); submissions are "
                               f"plain JSON"], label) from None
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant,
                         parse_float=_finite_float, parse_int=_bounded_int)
    except _NotPlainJSON as e:
        raise ValidationError([f"{label}: {e}"], label) from None
    except json.JSONDecodeError as e:
        raise ValidationError([f"{label}: not valid JSON ({e.msg} at line {e.lineno} column "
                               f"{e.colno})"], label) from None
    except (ValueError, RecursionError) as e:
        raise ValidationError([f"{label}: not plain JSON ({e})"], label) from None
    if not isinstance(obj, dict):
        raise ValidationError([f"{label}: the top level must be a JSON object, got "
                               f"{_type(obj)}"], label)
    return obj


def load_json(path: str | Path, label: str | None = None,
              max_bytes: int = MAX_BYTES) -> dict:
    """Read ``path`` with :func:`loads`; only a regular file under the size limit."""
    path = Path(path)
    label = label or str(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ValidationError([f"{label}: file not found"], label) from None
    except OSError as e:
        raise ValidationError([f"{label}: cannot read ({e.strerror})"], label) from None
    if not stat.S_ISREG(st.st_mode):
        raise ValidationError([f"{label}: not a regular file"], label)
    if st.st_size > max_bytes:
        raise ValidationError([f"{label}: file is {st.st_size:,} bytes, over the limit of "
                               f"{max_bytes:,} bytes"], label)
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    return loads(data, label, max_bytes)


# --------------------------------------------------------------------------- checker kit

def _type(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def _show(v) -> str:
    s = json.dumps(v, ensure_ascii=False)
    return s if len(s) <= 60 else s[:57] + "..."


def _num_text(x: float) -> str:
    return f"{x:g}" if abs(x) < 1e6 else repr(x)


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class Problems:
    """Collects one-line problems for one file (``label``)."""

    def __init__(self, label: str):
        self.label = label
        self.lines: list[str] = []

    def add(self, path: str, msg: str) -> None:
        self.lines.append(f"{self.label}: {path}: {msg}" if path else f"{self.label}: {msg}")

    def __bool__(self) -> bool:
        return bool(self.lines)


Check = Callable[[Problems, str, Any], bool]


def _join(path: str, key) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def nullable(check: Check) -> Check:
    def f(p, path, v):
        return True if v is None else check(p, path, v)
    return f


def number(lo: float = 0.0, hi: float = 100.0) -> Check:
    def f(p, path, v):
        if not is_number(v):
            p.add(path, f"must be a number, got {_type(v)}")
            return False
        if not math.isfinite(v):
            p.add(path, f"{_show(v)} is not a finite number")
            return False
        if not lo <= v <= hi:
            p.add(path, f"{_num_text(v)} outside [{_num_text(lo)}, {_num_text(hi)}]")
            return False
        return True
    return f


def integer(lo: int = 0, hi: int = 2**63 - 1) -> Check:
    def f(p, path, v):
        if not isinstance(v, int) or isinstance(v, bool):
            p.add(path, f"must be an integer, got {_type(v)}")
            return False
        if not lo <= v <= hi:
            p.add(path, f"{v} outside [{lo}, {hi}]")
            return False
        return True
    return f


def exactly(value) -> Check:
    def f(p, path, v):
        if v != value or type(v) is not type(value):
            p.add(path, f"must be {_show(value)}, got {_show(v)}")
            return False
        return True
    return f


def boolean(p, path, v) -> bool:
    if not isinstance(v, bool):
        p.add(path, f"must be true or false, got {_type(v)}")
        return False
    return True


def string(pattern: re.Pattern | None = None, max_len: int = 200, choices=None,
           what: str = "") -> Check:
    def f(p, path, v):
        if not isinstance(v, str):
            p.add(path, f"must be a string, got {_type(v)}")
            return False
        if choices is not None and v not in choices:
            p.add(path, f"{_show(v)} is not one of {', '.join(choices)}")
            return False
        if len(v) > max_len:
            p.add(path, f"longer than {max_len} characters")
            return False
        if pattern is not None and not pattern.match(v):
            p.add(path, f"{_show(v)} is not {what or 'a valid value'}")
            return False
        if choices is None and pattern is None and not v.strip():
            p.add(path, "must not be empty")
            return False
        return True
    return f


def array(item: Check, min_len: int = 0, max_len: int = 1000, unique: bool = False) -> Check:
    def f(p, path, v):
        if not isinstance(v, list):
            p.add(path, f"must be an array, got {_type(v)}")
            return False
        if not min_len <= len(v) <= max_len:
            p.add(path, f"has {len(v)} items, expected {min_len}..{max_len}")
            return False
        ok = all([item(p, _join(path, i), x) for i, x in enumerate(v)])
        if ok and unique and len({json.dumps(x, sort_keys=True) for x in v}) != len(v):
            p.add(path, "repeats a value")
            ok = False
        return ok
    return f


def mapping(key: re.Pattern, value: Check, max_items: int = 100, key_what: str = "key") -> Check:
    def f(p, path, v):
        if not isinstance(v, dict):
            p.add(path, f"must be an object, got {_type(v)}")
            return False
        if len(v) > max_items:
            p.add(path, f"has {len(v)} keys, at most {max_items} allowed")
            return False
        ok = True
        for k, x in v.items():
            if not key.match(k):
                p.add(_join(path, k), f"{_show(k)} is not a valid {key_what}")
                ok = False
            elif not value(p, _join(path, k), x):
                ok = False
        return ok
    return f


def obj(required: dict[str, Check], optional: dict[str, Check] | None = None) -> Check:
    optional = optional or {}

    def f(p, path, v):
        if not isinstance(v, dict):
            p.add(path, f"must be an object, got {_type(v)}")
            return False
        ok = True
        for k in v:
            if k not in required and k not in optional:
                known = ", ".join(list(required) + list(optional))
                p.add(_join(path, k), f"unknown field (known fields: {known})")
                ok = False
        for k, check in required.items():
            if k not in v:
                p.add(_join(path, k), "missing (required)")
                ok = False
            elif not check(p, _join(path, k), v[k]):
                ok = False
        for k, check in optional.items():
            if k in v and not check(p, _join(path, k), v[k]):
                ok = False
        return ok
    return f


def anything(p, path, v) -> bool:
    return True


def scalar(p, path, v) -> bool:
    if isinstance(v, str):
        if len(v) > 500:
            p.add(path, "longer than 500 characters")
            return False
        return True
    if v is None or isinstance(v, bool) or is_number(v):
        return True
    p.add(path, f"must be a string, number, boolean or null, got {_type(v)}")
    return False


def _tolerance(p, path, v) -> bool:
    if is_number(v):
        return number(0, 100)(p, path, v)
    if not obj({}, {"below": nullable(number(0, 100)), "above": nullable(number(0, 100))})(
            p, path, v):
        return False
    if v.get("below") is None and v.get("above") is None:
        p.add(path, "gives no bound; set below and/or above (a number of points)")
        return False
    return True


def parse_tolerance(v, default: float) -> tuple[float | None, float | None]:
    """(below, above): how far ours - published may go below / above; None is unbounded."""
    if v is None:
        return (default, default)
    if is_number(v):
        return (float(v), float(v))
    return (v.get("below"), v.get("above"))


def describe_tolerance(tol: tuple[float | None, float | None]) -> str:
    below, above = tol
    if below == above and below is not None:
        return f"±{below:g}"
    parts = []
    if below is not None:
        parts.append(f"-{below:g}")
    if above is not None:
        parts.append(f"+{above:g}")
    return "/".join(parts) + (" (one-sided)" if None in tol else "")


def within(delta: float, tol: tuple[float | None, float | None]) -> bool:
    below, above = tol
    eps = 1e-9
    return not ((below is not None and delta < -below - eps)
                or (above is not None and delta > above + eps))


SLUG = string(_SLUG, 64, what="a lower-case name (a-z, 0-9, . _ + -)")
NAME = string(_NAME, 64, what="a name (letters, digits, . _ + / - and spaces)")
HEX64 = string(_HEX64, 64, what="a SHA-256 hex digest (64 lower-case hex digits)")
ENTRY_ID = string(_ID, 200, what="an entry id like 'teen/cub200/fscil'")
TEXT = string(max_len=4000)
SHORT_TEXT = string(max_len=500)
TASK = string(choices=("fscil", "fsl"))
ACC = number(0, 100)
PD = number(-100, 100)
CI = number(0, 100)


def canonical_method(name: str) -> str:
    """Method names compare case-insensitively, with ``_`` and ``-`` equal."""
    return str(name).strip().lower().replace("_", "-")


# --------------------------------------------------------------------------- protocols

def _check_dataset_protocol(p: Problems, task: str, dataset, protocol,
                            prefix: str = "") -> None:
    """Cross-field rules for ``dataset`` / ``protocol`` (structure already checked)."""
    def at(field):
        return _join(prefix, field)

    if task == "fscil":
        std = FSCIL_PROTOCOLS.get(dataset)
        if std is None:
            p.add(at("dataset"), f"{_show(dataset)} has no standard FSCIL protocol; "
                                 f"known: {', '.join(FSCIL_PROTOCOLS)}")
            return
        if protocol.get("name") != dataset:
            p.add(at("protocol.name"),
                  f"{_show(protocol.get('name'))} does not match dataset {_show(dataset)}")
        for k, want in std.items():
            if protocol.get(k) != want:
                p.add(at(f"protocol.{k}"), f"{_show(protocol.get(k))} differs from the "
                                           f"standard {dataset} protocol ({k} = {want})")
        return
    if dataset not in FSL_DATASETS:
        p.add(at("dataset"), f"{_show(dataset)} is not a known FSL dataset; "
                             f"known: {', '.join(FSL_DATASETS)}")
    m = _FSL_PROTOCOL.match(str(protocol.get("name", "")))
    if not m:
        p.add(at("protocol.name"), f"{_show(protocol.get('name'))} is not an FSL protocol "
                                   f"name like '5way' or '5way-from-miniimagenet'")
        return
    if int(m.group(1)) != protocol.get("way"):
        p.add(at("protocol.way"), f"{_show(protocol.get('way'))} does not match protocol "
                                  f"name {_show(protocol['name'])}")
    if m.group(2) and m.group(2) not in FSL_DATASETS:
        p.add(at("protocol.name"),
              f"source dataset {_show(m.group(2))} is not a known FSL dataset")


FSCIL_PROTOCOL = obj({"name": SLUG, "num_base": integer(1, 10_000), "way": integer(1, 1000),
                      "shot": integer(1, 1000), "num_sessions": integer(1, 100)})
FSL_PROTOCOL = obj({"name": SLUG, "way": integer(2, 99)},
                   {"query": nullable(integer(1, 10_000)), "episodes": nullable(integer(1, 10**7)),
                    "shots": array(integer(1, 999), 1, 10, unique=True)})


def protocol_check(task: str) -> Check:
    return FSCIL_PROTOCOL if task == "fscil" else FSL_PROTOCOL


# --------------------------------------------------------------------------- submissions

STD = nullable(number(0, 100))  # sample standard deviation over seeds (multi-seed rows)
SESSION = obj({"session": integer(0, 99), "acc": ACC},
              {"num_seen": nullable(integer(0, 10**6)), "base_acc": nullable(ACC),
               "novel_acc": nullable(ACC), "hm": nullable(ACC),
               "num_test": nullable(integer(0, 10**9)), "std": STD})
FSCIL_METRICS = obj({"sessions": array(SESSION, 1, 100), "avg": ACC, "pd": PD},
                    {"last": ACC, "avg_std": STD, "pd_std": number(0, 200), "last_std": STD})
SHOT = obj({"mean": ACC, "ci95": CI}, {"n_episodes": nullable(integer(1, 10**7)), "std": STD})
FSL_METRICS = obj({"shots": mapping(_SHOT_KEY, SHOT, 10, "shot count")})

SUBMISSION_REQUIRED: dict[str, Check] = {
    "schema_version": exactly(SCHEMA_VERSION),
    "method": SLUG,
    "task": TASK,
    "dataset": SLUG,
    "protocol": anything,  # checked once task is known
    "split": obj({"id": string(_SPLIT_ID, 200,
                               what="a split identity (a checksum or 'generated')"),
                  "generated": boolean},
                 {"manifest_sha256": nullable(HEX64)}),
    "backbone": NAME,
    "pretraining": SLUG,
    "seeds": array(integer(0, 2**63 - 1), 1, 1000, unique=True),
    "metrics": anything,  # checked once task is known
    "flags": obj({k: boolean for k in SUBMISSION_FLAGS}),
}
SUBMISSION_OPTIONAL: dict[str, Check] = {
    "n_seeds": integer(2, 1000),
    "environment": nullable(mapping(_ENV_KEY, scalar, 100, "environment key")),
    "config_hash": nullable(HEX64),
    "source": obj({"type": string(choices=SOURCE_TYPES)},
                  {"fsbench_version": nullable(SHORT_TEXT), "result_schema": nullable(SHORT_TEXT),
                   "finished": nullable(SHORT_TEXT), "reference": nullable(SHORT_TEXT)}),
    "tolerance": _tolerance,
    "reproduces": ENTRY_ID,
    "paper": SHORT_TEXT,
    "note": TEXT,
}


def validate_submission(sub: Any, label: str) -> list[str]:
    """Every problem of a submission, one line each (empty when valid)."""
    p = Problems(label)
    if not isinstance(sub, dict):
        p.add("", f"the top level must be a JSON object, got {_type(sub)}")
        return p.lines
    if "schema_version" in sub and sub["schema_version"] != SCHEMA_VERSION:
        p.add("schema_version", f"{_show(sub['schema_version'])} is not supported; this "
                                f"fsbench reads schema_version {SCHEMA_VERSION}")
        return p.lines
    obj(SUBMISSION_REQUIRED, SUBMISSION_OPTIONAL)(p, "", sub)
    task = sub.get("task")
    if task not in ("fscil", "fsl"):
        return p.lines
    proto = sub.get("protocol")
    proto_ok = protocol_check(task)(p, "protocol", proto) if "protocol" in sub else False
    if proto_ok and isinstance(sub.get("dataset"), str):
        _check_dataset_protocol(p, task, sub["dataset"], proto)
    if "metrics" in sub:
        if task == "fscil":
            if FSCIL_METRICS(p, "metrics", sub["metrics"]):
                _fscil_rules(p, sub["metrics"], proto if proto_ok else None)
        elif FSL_METRICS(p, "metrics", sub["metrics"]):
            shots = proto.get("shots") if proto_ok else None
            got = sorted(int(k) for k in sub["metrics"]["shots"])
            if shots is not None and got != sorted(shots):
                p.add("metrics.shots", f"reports shots {got} but protocol.shots is "
                                       f"{sorted(shots)}")
    _seed_rules(p, sub)
    split, flags = sub.get("split"), sub.get("flags")
    if isinstance(split, dict) and isinstance(split.get("generated"), bool):
        if (split.get("id") == "generated") and not split["generated"]:
            p.add("split.generated", "must be true when split.id is 'generated'")
        if isinstance(flags, dict) and isinstance(flags.get("generated_split"), bool) \
                and flags["generated_split"] != split["generated"]:
            p.add("flags.generated_split", f"{_show(flags['generated_split'])} contradicts "
                                           f"split.generated ({_show(split['generated'])})")
    src = sub.get("source")
    if isinstance(src, dict) and src.get("type") == "fsbench-run":
        for k in ("environment", "config_hash"):
            if sub.get(k) is None:
                p.add(k, "required for a submission made from an fsbench run")
    return p.lines


def std_fields(sub: dict) -> list[str]:
    """The paths of a submission's standard deviations over seeds."""
    m = sub.get("metrics")
    if not isinstance(m, dict):
        return []
    found = [k for k in ("avg_std", "pd_std", "last_std") if m.get(k) is not None]
    sessions, shots = m.get("sessions"), m.get("shots")
    rows = list(enumerate(sessions)) if isinstance(sessions, list) else []
    rows = [(f"sessions[{i}]", x) for i, x in rows]
    rows += [(f"shots.{k}", x) for k, x in shots.items()] if isinstance(shots, dict) else []
    found += [f"{name}.std" for name, x in rows if isinstance(x, dict) and x.get("std") is not None]
    return [f"metrics.{f}" for f in found]


def _seed_rules(p: Problems, sub: dict) -> None:
    """A multi-seed row: ``n_seeds`` counts ``seeds``, and stds over seeds need two seeds."""
    seeds = sub.get("seeds")
    if not isinstance(seeds, list):
        return
    n = sub.get("n_seeds")
    if isinstance(n, int) and not isinstance(n, bool) and n != len(seeds):
        p.add("n_seeds", f"{n} but seeds lists {len(seeds)}")
    stds = std_fields(sub)
    if stds and len(seeds) < 2:
        p.add(stds[0], "a standard deviation over seeds needs two or more seeds")


def _fscil_rules(p: Problems, m: dict, proto: dict | None) -> None:
    sessions = m["sessions"]
    if proto is not None and len(sessions) != proto.get("num_sessions"):
        p.add("metrics.sessions", f"{len(sessions)} sessions, the {proto.get('name')} protocol "
                                  f"has {proto.get('num_sessions')}")
    for i, s in enumerate(sessions):
        if s["session"] != i:
            p.add(f"metrics.sessions[{i}].session", f"{s['session']} out of order (expected {i})")
        if proto is not None and s.get("num_seen") is not None and \
                isinstance(proto.get("num_base"), int) and isinstance(proto.get("way"), int):
            want = proto["num_base"] + i * proto["way"]
            if s["num_seen"] != want:
                p.add(f"metrics.sessions[{i}].num_seen", f"{s['num_seen']} but session {i} of "
                                                         f"the protocol has {want} classes")
    accs = [s["acc"] for s in sessions]
    _avg_pd_rules(p, "metrics", accs, m.get("avg"), m.get("pd"))
    if "last" in m and abs(m["last"] - accs[-1]) > CONSISTENCY_TOL + 1e-9:
        p.add("metrics.last", f"{_num_text(m['last'])} is not the last session's accuracy "
                              f"({_num_text(accs[-1])})")


def _avg_pd_rules(p: Problems, path: str, accs: list, avg, pd) -> None:
    if any(a is None for a in accs):
        return
    mean = sum(accs) / len(accs)
    if avg is not None and abs(avg - mean) > CONSISTENCY_TOL + 1e-9:
        p.add(f"{path}.avg", f"{_num_text(avg)} is not the mean of the session accuracies "
                             f"({mean:.3f})")
    drop = accs[0] - accs[-1]
    if pd is not None and abs(pd - drop) > CONSISTENCY_TOL + 1e-9:
        p.add(f"{path}.pd", f"{_num_text(pd)} is not first - last ({drop:.3f})")


# --------------------------------------------------------------------------- published entries

PUB_FSCIL_METRICS = obj({"sessions": array(nullable(ACC), 1, 100), "avg": nullable(ACC),
                         "pd": nullable(PD)})
PUB_SHOT = obj({"mean": nullable(ACC), "ci95": nullable(CI)})
PUB_FSL_METRICS = obj({"shots": mapping(_SHOT_KEY, PUB_SHOT, 10, "shot count")})
CELL_NOTE = obj({"status": string(choices=CELL_STATUSES), "note": TEXT},
                {"candidates": array(ACC, 1, 10)})

PUBLISHED_ENTRY_REQUIRED: dict[str, Check] = {
    "id": ENTRY_ID,
    "method": SLUG,
    "display_name": NAME,
    "task": TASK,
    "dataset": SLUG,
    "protocol": anything,
    "paper": nullable(SHORT_TEXT),
    "venue": nullable(SHORT_TEXT),
    "year": nullable(integer(1950, 2100)),
    "backbone": nullable(NAME),
    "pretraining": nullable(SLUG),
    "metrics": anything,
    "source": TEXT,
    "verified": boolean,
}
PUBLISHED_ENTRY_OPTIONAL: dict[str, Check] = {
    "arxiv": SHORT_TEXT,
    "note": TEXT,
    "cells": mapping(_CELL, CELL_NOTE, 50,
                     "cell name (sessions[i], avg, pd, shots.K[.mean|.ci95])"),
    "flags": obj({}, {k: boolean for k in SUBMISSION_FLAGS}),
    "tolerance": _tolerance,
}
PUBLISHED_FILE = obj({"schema_version": exactly(SCHEMA_VERSION),
                      "kind": exactly("fsbench.published"), "entries": array(anything, 0, 1000)},
                     {"note": TEXT})


def validate_published_file(doc: Any, label: str) -> list[str]:
    """Every problem of a ``published/*.json`` file."""
    p = Problems(label)
    if not PUBLISHED_FILE(p, "", doc):
        return p.lines
    for i, entry in enumerate(doc["entries"]):
        _published_entry(p, f"entries[{i}]", entry)
    return p.lines


def cell_value(metrics: dict, cell: str):
    """The value a cell name refers to; ``KeyError`` when the metric has no such cell."""
    m = _CELL.match(cell)
    if m is None:
        raise KeyError(cell)
    if m.group(1) is not None:
        sessions = metrics.get("sessions")
        i = int(m.group(1))
        if sessions is None or i >= len(sessions):
            raise KeyError(cell)
        return sessions[i]
    if cell in ("avg", "pd"):
        if cell not in metrics or "sessions" not in metrics:
            raise KeyError(cell)
        return metrics[cell]
    shot = (metrics.get("shots") or {})[m.group(2)]
    return shot[m.group(3)] if m.group(3) else shot.get("mean")


def _published_entry(p: Problems, path: str, e: Any) -> None:
    if not obj(PUBLISHED_ENTRY_REQUIRED, PUBLISHED_ENTRY_OPTIONAL)(p, path, e):
        if not isinstance(e, dict):
            return
    task = e.get("task")
    if task not in ("fscil", "fsl"):
        return
    proto_ok = protocol_check(task)(p, f"{path}.protocol", e.get("protocol"))
    if proto_ok and isinstance(e.get("dataset"), str):
        _check_dataset_protocol(p, task, e["dataset"], e["protocol"], path)
    metrics = e.get("metrics")
    check = PUB_FSCIL_METRICS if task == "fscil" else PUB_FSL_METRICS
    if not check(p, f"{path}.metrics", metrics):
        return
    cells = e.get("cells") if isinstance(e.get("cells"), dict) else {}
    if task == "fscil":
        sessions = metrics["sessions"]
        if proto_ok and len(sessions) != e["protocol"].get("num_sessions"):
            p.add(f"{path}.metrics.sessions", f"{len(sessions)} sessions, the protocol has "
                                              f"{e['protocol'].get('num_sessions')}")
        for i, v in enumerate(sessions):
            if v is None and f"sessions[{i}]" not in cells:
                p.add(f"{path}.metrics.sessions[{i}]", "is null; explain it in cells "
                                                       f"(\"sessions[{i}]\": status unresolved)")
        _avg_pd_rules(p, f"{path}.metrics", sessions, metrics["avg"], metrics["pd"])
    for name, note in cells.items():
        if not isinstance(note, dict):
            continue
        try:
            value = cell_value(metrics, name)
        except KeyError:
            p.add(f"{path}.cells.{name}", "names no cell of this entry's metrics")
            continue
        status = note.get("status")
        if status == "unresolved" and value is not None:
            p.add(f"{path}.cells.{name}", "status unresolved needs the value to be null")
        if status in ("unverified", "computed") and value is None:
            p.add(f"{path}.cells.{name}", f"status {status} needs a value")


# --------------------------------------------------------------------------- expected results

EXPECTED_ENTRY = obj(
    {"method": SLUG, "task": TASK, "seed": integer(0, 2**63 - 1), "metrics": anything},
    {"overrides": mapping(re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$"), anything, 100,
                          "dotted preset key"),
     "tolerance": _tolerance, "config_hash": nullable(HEX64),
     "fsbench_version": nullable(SHORT_TEXT), "generated": nullable(SHORT_TEXT),
     "environment": nullable(mapping(_ENV_KEY, scalar, 100, "environment key")),
     "runtime_s": nullable(number(0, 10**7)), "note": TEXT})
EXPECTED_FSCIL = obj({"sessions": array(ACC, 1, 100)}, {"avg": ACC, "pd": PD})
EXPECTED_FSL = obj({"shots": mapping(_SHOT_KEY, ACC, 10, "shot count")})
EXPECTED_FILE = obj(
    {"schema_version": exactly(SCHEMA_VERSION), "kind": exactly("fsbench.expected"),
     "dataset": SLUG, "tolerance": _tolerance, "entries": array(anything, 0, 1000)},
    {"regenerate": SHORT_TEXT, "default_overrides": mapping(
        re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$"), anything, 100, "dotted preset key"),
     "generated": nullable(SHORT_TEXT), "note": TEXT})


def validate_expected_file(doc: Any, label: str) -> list[str]:
    p = Problems(label)
    if not EXPECTED_FILE(p, "", doc):
        return p.lines
    seen = set()
    for i, e in enumerate(doc["entries"]):
        path = f"entries[{i}]"
        if not EXPECTED_ENTRY(p, path, e):
            continue
        key = (canonical_method(e["method"]), e["seed"])
        if key in seen:
            p.add(path, f"repeats method {e['method']!r} with seed {e['seed']}")
        seen.add(key)
        (EXPECTED_FSCIL if e["task"] == "fscil" else EXPECTED_FSL)(p, f"{path}.metrics",
                                                                   e["metrics"])
    return p.lines

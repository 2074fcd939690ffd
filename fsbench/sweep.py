"""``fsbench sweep``: a grid of runs over methods, datasets, ``--set`` values and seeds.

Every run is one ``fsbench run`` in a child process (isolation: a crash, a leak or an error stays in
its run), executed by local worker threads (``--jobs N``) or as Ray tasks (``--ray [ADDRESS]``,
each with a CPU/GPU request). Run folders have deterministic names, so the same command resumes a
sweep: finished runs are skipped, interrupted ones continue with ``fsbench run --resume``. Then
:mod:`fsbench.summary` writes the mean ± std over seeds of each (method, dataset, configuration).

Layout of a sweep folder (``--out``)::

    runs/<group>-s<seed>/        one fsbench run folder per seed (run.json, result.json, ...)
    logs/<group>-s<seed>.log     the child's output, appended by every attempt
    summaries/<group>.json       the summary of one group (fsbench.sweep-summary/1)
    summary.json                 the index of the last sweep (fsbench.sweep/1)

``<group>`` is ``<method>-<dataset>-<hash>``, the hash of the resolved configuration without the
seed: a changed preset or ``--set`` value starts new runs instead of resuming old ones.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from fsbench.errors import UserError
from fsbench.sweeprun import (RAY_INSTALL, RUNS, check_reachable, import_ray, run_local, run_ray,
                              run_state)


@dataclass(frozen=True)
class Run:
    """One run of the grid; ``sets`` are the ``--set KEY=VALUE`` items it is started with."""

    name: str
    group: str
    method: str
    dataset: str
    seed: int
    sets: tuple[str, ...]


# --------------------------------------------------------------------------- the grid

def split_values(raw: str) -> list[str]:
    """``"0.1,0.05"`` -> ``["0.1", "0.05"]``; commas inside ``[]``, ``{}`` or quotes stay
    (``eval.shots=[1,5],[5]`` is two values)."""
    out, cur, depth, quote = [], [], 0, None
    for ch in raw:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur).strip())
    return out


def parse_grid(items: list[str] | None) -> list[tuple[str, list[str]]]:
    """``--set`` items -> ``[(key, [raw values])]`` in command-line order."""
    grid: list[tuple[str, list[str]]] = []
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected KEY=V1,V2,..., e.g. "
                            f"--set train.lr=0.1,0.05")
        if any(k == key for k, _ in grid):
            raise UserError(f"--set {key} is given twice; list its values once: "
                            f"--set {key}=V1,V2")
        values = split_values(raw)
        if any(not v for v in values):
            raise UserError(f"--set {item!r}: an empty value; separate values with single "
                            f"commas")
        if len(set(values)) != len(values):
            raise UserError(f"--set {item!r}: a value is repeated")
        grid.append((key, values))
    return grid


def parse_names(text: str, registry, flag: str) -> list[str]:
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    if not names:
        raise UserError(f"{flag} needs at least one name; `fsbench list` shows the choices")
    if len(set(names)) != len(names):
        raise UserError(f"{flag} {text}: a name is repeated")
    for n in names:
        if n not in registry:
            registry.get(n)  # one line naming the valid choices
    return names


def parse_seeds(text: str) -> list[int]:
    seeds = []
    for part in (text or "").split(","):
        try:
            seed = int(part)
        except ValueError:
            raise UserError(f"--seeds {text}: {part.strip()!r} is not a whole number; e.g. "
                            f"--seeds 0,1,2,3,4") from None
        if not 0 <= seed <= 2**32 - 1:
            raise UserError(f"--seeds: {seed} is outside 0..4294967295")
        seeds.append(seed)
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {text}: a seed is repeated")
    return seeds


def _task_of(registry, name: str) -> str:
    return next(t for n, t, _s in registry.listing() if n == name)


def plan(methods, datasets, grid, seeds, preset) -> tuple[list[Run], list[dict]]:
    """Every run, and every group (``group``, ``method``, ``dataset``, ``settings``,
    ``config_hash``). Each configuration is resolved here, so a bad ``--set`` key or value fails
    before any run starts."""
    from fsbench import config
    from fsbench.registry import DATASETS, METHODS

    runs, groups = [], []
    for method, dataset in itertools.product(methods, datasets):
        task, dtask = _task_of(METHODS, method), _task_of(DATASETS, dataset)
        if dtask not in (task, "both"):
            raise UserError(f"{method} is an {task.upper()} method and {dataset} has no "
                            f"{task.upper()} protocol; {task.upper()} datasets: "
                            f"{', '.join(DATASETS.names(task))}")
        for point in itertools.product(*[[(k, v) for v in vals] for k, vals in grid]):
            sets = tuple(f"{k}={v}" for k, v in point)
            try:
                cfg = config.resolve(method, dataset, preset, list(sets))
            except UserError as e:
                raise UserError(f"{method} on {dataset}: {e}") from None
            cfg.pop("seed", None)
            digest = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()
            group = f"{method}-{dataset}-{digest[:10]}"
            settings = {".".join(p): v for p, v in config.parse_set(list(sets))}
            groups.append({"group": group, "method": method, "dataset": dataset,
                           "settings": settings, "config_hash": digest})
            runs += [Run(f"{group}-s{seed}", group, method, dataset, seed, sets)
                     for seed in seeds]
    return runs, groups


# --------------------------------------------------------------------------- summaries

def load_result(run_dir: Path) -> dict | None:
    """The complete result of a run, checked; None when it has none."""
    from fsbench.results import check_result_shape, read_json

    path = run_dir / "result.json"
    if run_state(run_dir) != "complete":
        return None
    result = read_json(path, "result file")
    check_result_shape(result, path)
    result["run_dir"] = f"{RUNS}/{run_dir.name}"
    return result


def write_summaries(root: Path, runs: list[Run], groups: list[dict], errors: dict,
                    spec: dict) -> dict:
    """Write ``summaries/<group>.json`` for every group with a finished seed, and the index."""
    from fsbench import summary
    from fsbench.atomic import atomic_write_text
    from fsbench.jsonio import now_iso

    def dump(path, doc):
        atomic_write_text(path, json.dumps(doc, indent=2, allow_nan=False) + "\n")

    entries = []
    for g in groups:
        results, failed = [], []
        for r in (r for r in runs if r.group == g["group"]):
            res = load_result(root / RUNS / r.name)
            if res is not None:
                results.append(res)
            else:
                failed.append({"seed": r.seed, "run_dir": f"{RUNS}/{r.name}",
                               "error": errors.get(r.name) or "not finished; run the sweep "
                                                              "again to resume it"})
        rel = None
        if results:
            try:
                doc = summary.summarize(g, results, failed)
            except UserError as e:  # seeds that do not agree: say so, keep the other groups
                print(f"fsbench: warning: no summary for {g['group']}: {e}", file=sys.stderr)
            else:
                rel = f"{summary.SUMMARY_DIR}/{g['group']}.json"
                dump(root / rel, doc)
        entries.append({"group": g["group"], "method": g["method"], "dataset": g["dataset"],
                        "settings": g["settings"], "summary": rel,
                        "seeds": [int(r["seed"]) for r in results], "failed": failed})
    index = {"schema": summary.INDEX_SCHEMA, "spec": spec, "groups": entries,
             "finished": now_iso()}
    dump(root / summary.INDEX_FILE, index)
    return index


# --------------------------------------------------------------------------- the command

def _threads(args) -> int:
    from fsbench import repro

    if args.threads is not None:
        return repro.check_threads(args.threads)
    if args.reproducible:
        return repro.DEFAULT_THREADS
    return max(1, (os.cpu_count() or 1) // args.jobs)


class Progress:
    """Prints one line per finished run (called from worker threads) and keeps the errors."""

    def __init__(self, total: int):
        self.total, self.done, self.errors = total, 0, {}
        self.lock = threading.Lock()

    def __call__(self, run: Run, out: dict) -> None:
        with self.lock:
            self.done += 1
            took = f" in {out['seconds']:.0f} s" if out.get("seconds") is not None else ""
            what = "finished" if out["status"] == "complete" else "FAILED"
            if out["status"] != "complete":
                self.errors[run.name] = out["error"]
            print(f"[{self.done}/{self.total}] {run.name} {what}{took}"
                  + (f": {out['error']}" if out["status"] != "complete" else ""), flush=True)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def cmd_sweep(args) -> int:
    from fsbench import config, summary
    from fsbench.registry import DATASETS, METHODS

    methods = parse_names(args.methods, METHODS, "--methods")
    datasets = parse_names(args.datasets, DATASETS, "--datasets")
    seeds = parse_seeds(args.seeds)
    grid = parse_grid(args.set)
    if not 1 <= args.jobs <= 10_000:
        raise UserError(f"--jobs {args.jobs}: use a number from 1 up")
    if args.preset and not Path(args.preset).is_file():
        raise UserError(f"--preset {args.preset} not found; check the path")
    threads = _threads(args)
    if args.ray is not None:  # a missing Ray or cluster is reported before anything runs
        import_ray()
        if args.ray:
            check_reachable(args.ray)
    runs, groups = plan(methods, datasets, grid, seeds, args.preset)
    root = Path(args.out).resolve()
    opts = {"root": str(root), "threads": threads, "reproducible": args.reproducible,
            "preset": str(Path(args.preset).resolve()) if args.preset else None,
            "data_root": args.data_root, "device": args.device}
    spec = {"methods": methods, "datasets": datasets, "seeds": seeds,
            "grid": {k: [v for _p, v in config.parse_set([f"{k}={x}" for x in vals])]
                     for k, vals in grid},
            "set": list(args.set or []), "preset": opts["preset"], "device": args.device,
            "threads": threads, "reproducible": bool(args.reproducible),
            "ray": None if args.ray is None else (args.ray or "local"), "jobs": args.jobs}
    todo = [r for r in runs if run_state(root / RUNS / r.name) != "complete"]
    resumed = sum(run_state(root / RUNS / r.name) == "started" for r in todo)
    print(f"sweep {root}: {_plural(len(runs), 'run')} ({_plural(len(groups), 'configuration')} "
          f"x {_plural(len(seeds), 'seed')}), {len(runs) - len(todo)} already finished, "
          f"{resumed} to resume, {len(todo) - resumed} to start", flush=True)
    progress = Progress(len(todo))
    try:
        if todo and args.ray is None:
            run_local(todo, opts, args.jobs, progress)
        elif todo:
            run_ray(todo, opts, args.ray or None, args.jobs, progress)
    except KeyboardInterrupt:
        print("fsbench: sweep interrupted; run the same command again to resume it",
              file=sys.stderr)
        return 130
    index = write_summaries(root, runs, groups, progress.errors, spec)
    print(summary.sweep_table(index, root))
    print(f"summaries: {root / summary.SUMMARY_DIR}/, index: {root / summary.INDEX_FILE}")
    return 1 if progress.errors else 0


def add_commands(sub) -> None:
    p = sub.add_parser("sweep", help="run a grid of methods x datasets x --set values x seeds "
                                     "and summarise mean ± std over seeds",
                       description="Run every combination as one `fsbench run` child process "
                                   "(local workers or Ray tasks). The same command resumes: "
                                   "finished runs are skipped, interrupted ones resumed.")
    p.add_argument("--methods", required=True, help="comma-separated methods, e.g. teen,ncm")
    p.add_argument("--datasets", required=True, help="comma-separated datasets, e.g. "
                                                     "glyphs,cifar100")
    p.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds (default "
                                                        "0,1,2,3,4)")
    p.add_argument("--set", action="append", metavar="KEY=V1,V2",
                   help="a preset key and its values; several values make a grid dimension "
                        "(repeatable, cartesian product), e.g. --set train.lr=0.1,0.05")
    p.add_argument("--preset", help="a YAML file merged over the packaged presets of every run")
    p.add_argument("--data-root", help="folder holding the datasets (default $FSBENCH_DATA)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N; with --ray, cuda "
                                    "requests one GPU per run")
    p.add_argument("--jobs", type=int, default=1, help="runs at once: local worker processes, or "
                                                       "the size of a local Ray (default 1)")
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="run each run as a Ray task: a local Ray without ADDRESS, else the "
                        "cluster at ADDRESS (started with `ray start --head`); needs "
                        f"`{RAY_INSTALL}`")
    p.add_argument("--out", default="sweep", help="the sweep folder (default sweep/); the same "
                                                  "folder resumes")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads per run, also each Ray task's CPU request (default: "
                        "cores / --jobs; 2 with --reproducible)")
    p.add_argument("--reproducible", action="store_true",
                   help="every run in the reproducible CPU mode (fsbench run --reproducible)")
    p.set_defaults(func=cmd_sweep)

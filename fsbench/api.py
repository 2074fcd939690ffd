"""Programmatic entry point: :func:`run` does what ``fsbench run`` does and returns the result."""
from __future__ import annotations

import functools
import logging
import os
import shlex
import shutil
import time
from pathlib import Path

import torch

from fsbench import config as _config
from fsbench import distributed as dist
from fsbench import transforms as _transforms
from fsbench.context import (RunContext, bars_wanted, derive_seed, resolve_device,
                             seed_everything, set_progress)
from fsbench.curves import Curves
from fsbench.errors import UserError
from fsbench.jsonio import now_iso
from fsbench.learner import DataInfo
from fsbench.loggers import ConsoleLogger, FileLogger, JSONLinesLogger, Logger, make_loggers
from fsbench.memory import keep_freed_memory
from fsbench.plugins import is_import_path
from fsbench.registry import DATASETS, METHODS
from fsbench.results import (RESULT_SCHEMA, atomic_write_json, environment, named_run_dir,
                             new_run_dir, read_json)
from fsbench.trainstate import FILE as EPOCHS_FILE

RUN_FILE = "run.json"
RESULT_FILE = "result.json"


def load_benchmark(dataset: str, task: str, data_root: str | Path | None, options: dict):
    entry = DATASETS.get(dataset)
    if entry.task not in (task, "both"):
        raise UserError(f"dataset {dataset} has no {task.upper()} protocol; "
                        f"{task.upper()} datasets: {', '.join(DATASETS.names(task))}")
    root = data_root or os.environ.get("FSBENCH_DATA")
    return entry.obj(Path(root).expanduser() if root else None, task, dict(options or {}))


def build_context(cfg: dict, channels: int, device: torch.device, seed: int,
                  progress: bool) -> RunContext:
    tf = cfg.get("transforms", {}) or {}
    norm = tf.get("normalize")
    return RunContext(
        config=cfg, device=device, seed=seed,
        train_transform=_transforms.build(tf.get("train"), norm, channels, "transforms.train"),
        test_transform=_transforms.build(tf.get("test"), norm, channels, "transforms.test"),
        progress=progress, num_workers=int(cfg.get("num_workers", 0) or 0))


def _method_entry(method: str, run_dir: Path | None = None):
    """The registry entry of ``method``: a registered name, an entry point, or an import path
    (``pkg.module:Class``, ``file.py:Class``; :mod:`fsbench.plugins`). On ``--resume`` a method
    that cannot be imported any more is an error naming the run."""
    if run_dir is None or not is_import_path(method):
        return METHODS.get(method)
    try:
        return METHODS.get(method)
    except UserError as e:
        raise UserError(f"--resume {run_dir}: the run's method {method} cannot be imported "
                        f"({e}); restore the file or package it came from") from None


def _finished(run_dir: Path) -> dict | None:
    """The result of a run that is complete already (``--resume`` of it changes nothing and
    says so), else None."""
    if not (run_dir / RESULT_FILE).is_file():
        return None
    from fsbench.frames import load_result

    result = load_result(run_dir)
    if result.get("status") != "complete":
        return None
    print(f"{run_dir} is complete already; nothing to resume (`fsbench show {run_dir}` prints "
          f"its table)")
    return result


def _base_source(base_from, task: str) -> str | None:
    """``--base-from`` as an absolute folder (recorded in run.json); FSCIL only."""
    if base_from is None:
        return None
    if task != "fscil":
        raise UserError("--base-from reuses an FSCIL base session; this method is FSL")
    return str(Path(base_from).expanduser().resolve())


def _split_identity(bench, metrics: dict, cfg: dict) -> dict:
    if bench.task == "fscil":
        p = bench.protocol
        return {"id": p.split_id, "generated": p.generated, "protocol": {
            "name": p.name, "num_base": p.num_base, "way": p.way, "shot": p.shot,
            "num_sessions": p.num_sessions}}
    info = bench.info or {}
    return {"id": info.get("split_id", "generated"), "generated": bool(info.get("generated", True)),
            "way": metrics["way"], "query": metrics["query"],
            "shots": [int(k) for k in metrics["shots"]], "episodes": metrics["episodes"]}


def _new_run_folder(make, record: dict) -> Path:
    """The new run folder ``make()``, made (with its run file) by rank 0 and known to every
    rank."""
    def made() -> str:
        folder = make()
        atomic_write_json(folder / RUN_FILE, record)
        return str(folder)
    return Path(dist.on_main(made, "make the run folder"))


def _pin_threads(reproducible: bool, threads) -> int | None:
    """Apply the thread count (and the reproducible mode's in-process settings); returns it."""
    from fsbench import repro

    if threads is not None:
        threads = repro.check_threads(threads)
    if reproducible:
        pinned = repro.active()
        if pinned is None:
            raise UserError("reproducible mode must be set before torch is imported: use "
                            "`fsbench run --reproducible`, or start Python with the variables of "
                            "fsbench.repro.environment()")
        if threads is not None and threads != pinned:
            raise UserError(f"--threads {threads} differs from the {pinned} threads this "
                            f"reproducible process was pinned to; start it again with "
                            f"--threads {threads}")
        threads = pinned
    repro.apply_runtime(threads)
    return threads


def _invocation(command, preset, overrides, cfg: dict) -> dict:
    """How a new run was asked for: the command line (None from Python), the ``--preset`` file
    and its values, the ``--set`` overrides, and what the resolved configuration changes in the
    packaged preset (``config_diff``: ``--preset``, ``--set`` and ``--seed`` together)."""
    return {"command": shlex.join(command) if command else None,
            "preset_file": str(preset) if preset else None,
            "preset_values": _config.read_yaml(Path(preset)) if preset else None,
            "set": dict(overrides) if isinstance(overrides, dict) else list(overrides or []),
            "config_diff": _config.diff_from_preset(cfg)}


def _leaves_process_group(fn):
    """Under torchrun every process runs :func:`run`; it leaves the process group however the
    run ends."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        finally:
            dist.shutdown()
    return wrapper


@_leaves_process_group
def run(method: str, dataset: str, *, data_root=None, split_dir=None, preset: str | None = None,
        overrides: list[str] | dict | None = None, seed: int | None = None,
        device: str | None = None, out_dir: str | Path = "runs", resume: str | Path | None = None,
        loggers: list[Logger] | None = None, progress: bool | None = None,
        stop_after: int | None = None, threads: int | None = None,
        reproducible: bool = False, base_from: str | Path | None = None,
        run_dir: str | Path | None = None, log_to: list[str] | None = None,
        command: list[str] | None = None) -> dict:
    """Run ``method`` on ``dataset`` and write ``RUN_DIR/result.json``; returns the result dict.

    ``method`` is a registered name or an import path of a learner class,
    ``"my_pkg.module:MyLearner"`` or ``"path/to/file.py:MyLearner"`` (:mod:`fsbench.plugins`).

    ``resume=RUN_DIR`` continues an interrupted run from its last checkpoint with its saved
    configuration (other arguments are ignored); for a complete run it only returns the result
    (nothing is rewritten). ``run_dir`` names the new run's folder exactly (instead of
    ``out_dir/<time>-<method>-<dataset>``); it must not hold a run already.

    ``reproducible=True`` needs a process started in the reproducible CPU mode
    (:mod:`fsbench.repro`; ``fsbench run --reproducible`` does that); ``threads`` fixes the CPU
    thread count. Both are recorded in ``run.json`` and ``result.json``.

    ``base_from=RUN_DIR`` (FSCIL) loads the base model of an earlier compatible run instead of
    training one (:mod:`fsbench.basemodel`); ``result.json`` records it as ``base_from``.

    ``progress``: draw progress bars (``None``: only when stdout and stderr are terminals).
    ``loggers`` replace the console logger; ``log_to`` adds loggers by name
    (:data:`fsbench.loggers.LOGGERS`: ``csv``, ``tensorboard``), recorded in ``run.json`` and used
    again by ``resume`` unless given. ``command`` (the command line, ``fsbench run`` passes it)
    is recorded with the overrides and the configuration's difference from the packaged preset
    in ``result.json``'s ``invocation``."""
    if resume is not None:
        new_dir = None
        run_dir = Path(resume)
        if not (run_dir / RUN_FILE).is_file():
            raise UserError(f"--resume {run_dir}: no {RUN_FILE} there; pass a folder made by "
                            f"`fsbench run` (runs/<time>-<method>-<dataset>)")
        done = _finished(run_dir)
        if done is not None:
            return done
        inv = read_json(run_dir / RUN_FILE, "run file")
        try:
            method, dataset, cfg = inv["method"], inv["dataset"], inv["config"]
            seed, data_root = int(inv["seed"]), inv.get("data_root")
            split_dir = inv.get("split_dir")
            if not isinstance(inv.get("method_import") or "", str):
                raise TypeError("method_import")
            base_from = inv.get("base_from")
            if not isinstance(base_from or "", str):
                raise TypeError("base_from")
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{run_dir / RUN_FILE} is not a fsbench run file; start a new run") \
                from None
        device = device or inv.get("device")
        reproducible = bool(inv.get("reproducible"))
        threads = inv.get("threads", threads)
        entry = _method_entry(inv.get("method_import") or method, run_dir)
        log_to = log_to if log_to is not None else inv.get("loggers")
        invocation = dict(inv.get("invocation") or {})
        invocation["resume_command"] = shlex.join(command) if command else None
    else:
        new_dir = Path(run_dir) if run_dir is not None else None
        if new_dir is not None and (new_dir / RUN_FILE).exists():
            raise UserError(f"--run-dir {new_dir} already holds a run; continue it with "
                            f"`fsbench run --resume {new_dir}` or choose another folder")
        entry = _method_entry(method)
        method = entry.name
        cfg = _config.resolve(method, dataset, preset, overrides, learner=entry.obj)
        seed = seed if seed is not None else cfg.get("seed", 0) or 0
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 2**32 - 1:
            raise UserError(f"--seed {seed}: use a whole number from 0 to 4294967295")
        cfg["seed"] = seed
        invocation = _invocation(command, preset, overrides, cfg)
    threads = _pin_threads(reproducible, threads)
    malloc = keep_freed_memory()
    set_progress(progress)  # bars outside the run context (first glyphs render, re-clustering)
    progress = bars_wanted(progress)
    named = make_loggers(log_to)  # an unknown or missing logger fails before anything runs
    task = entry.task
    base_from = _base_source(base_from, task)
    dev = resolve_device(device or cfg.get("device"))
    if dist.init(dev.type, float(_config.get(cfg, "distributed.timeout_s", None)
                                 or dist.DEFAULT_TIMEOUT_S)):  # under torchrun
        if dev.type == "cuda":
            dev = torch.device("cuda", dist.local_rank())
        if not dist.is_main():  # the other processes print errors only
            progress, loggers, named = False, [], []
            logging.getLogger("fsbench").setLevel(logging.ERROR)
    if task == "fsl" and cfg.get("head", "none") != "none":
        from fsbench.heads import get_head
        get_head(cfg["head"], cfg)  # an unknown head fails now, not after training
    options = dict(_config.get(cfg, "data.options", {}) or {})
    if split_dir:
        options["split_dir"] = str(split_dir)
    bench = load_benchmark(dataset, task, data_root, options)
    channels = bench.train.channels
    ctx = build_context(cfg, channels, dev, seed, progress)
    sample = bench.train.load(0)
    if task == "fscil":
        p = bench.protocol
        info = DataInfo(channels=channels, image_size=int(sample.shape[0]),
                        num_classes=p.num_classes, num_base=p.num_base, way=p.way, shot=p.shot)
    else:
        info = DataInfo(channels=channels, image_size=int(sample.shape[0]),
                        num_classes=bench.train.num_classes)
    seed_everything(derive_seed(seed, "init"))  # parameter initialisation is part of the seed
    learner = entry.obj(cfg, info).to(dev)

    if resume is None:
        run_dir = _new_run_folder(lambda: new_run_dir(out_dir, method, dataset)
                                  if new_dir is None else named_run_dir(new_dir), {
            "method": method, "dataset": dataset, "seed": seed, "config": cfg,
            "data_root": str(data_root) if data_root else os.environ.get("FSBENCH_DATA"),
            "split_dir": str(split_dir) if split_dir else None,
            "device": device, "reproducible": threads if reproducible else None,
            "threads": threads, "loggers": list(log_to or []), "invocation": invocation,
            "created": now_iso(), "method_import": entry.extra.get("import_path"),
            "base_from": base_from})
    if loggers is None:
        loggers = [ConsoleLogger()]
    if dist.is_main():
        loggers = list(loggers) + named + [FileLogger(run_dir / "run.log"),
                                           JSONLinesLogger(run_dir / "metrics.jsonl")]
    ctx.curves = Curves(loggers)
    started = now_iso()
    for lg in loggers:
        lg.on_start({"method": method, "dataset": dataset, "seed": seed, "run_dir": str(run_dir),
                     "resume": resume is not None})
    t0 = time.perf_counter()
    try:
        if task == "fscil":
            from fsbench.runners.fscil import run_sessions
            metrics = run_sessions(learner, bench, ctx, run_dir, loggers,
                                   resume=resume is not None, stop_after=stop_after,
                                   base_from=base_from)
        else:
            from fsbench.runners.fsl import run_fsl
            metrics = run_fsl(learner, bench, ctx, run_dir, loggers, resume=resume is not None)
    except BaseException as e:
        # A run that fails or is interrupted before its first checkpoint (a session's or a
        # training epoch's) leaves nothing behind, whatever the exception: there is nothing to
        # resume from. An interrupted run with a checkpoint names its folder for the resume
        # hint of `fsbench run`.
        saved = any((run_dir / f).exists() for f in ("checkpoint.pt", EPOCHS_FILE))
        if isinstance(e, KeyboardInterrupt):
            e.run_dir = str(run_dir) if saved or resume is not None else None
        if dist.is_main() and resume is None and not saved:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    times = metrics.pop("times", [])
    elapsed_before = float(metrics.pop("elapsed_before_s", 0.0))  # earlier processes (resume)
    partial = bool(metrics.pop("partial", False))
    base_info = metrics.pop("base_from", None)
    backbone = _config.get(cfg, "backbone.name")
    standard = cfg.get("standard_backbone")
    result = {
        "schema": RESULT_SCHEMA, "fsbench_version": environment(dev)["fsbench"], "task": task,
        "method": method, "dataset": dataset, "seed": seed,
        "method_import": entry.extra.get("import_path"), "base_from": base_info,
        "status": "partial" if partial else "complete",
        "config": cfg, "config_hash": _config.config_hash(cfg),
        "split": _split_identity(bench, metrics, cfg),
        "backbone": backbone, "pretraining": cfg.get("pretraining", "none"),
        "flags": {"selected_on_test": bool(cfg.get("select_on_test", False)),
                  "generated_split": False, "nonstandard_backbone":
                      bool(standard) and backbone != standard},
        "data": {"train": bench.train.identity(), "test": bench.test.identity(),
                 # the images as stored, before the transforms (data.options.resolution, or the
                 # files' own size where the loader keeps it)
                 "image_size": [int(s) for s in sample.shape[:2]],
                 "resolution_option": options.get("resolution", "default"),
                 **{k: v for k, v in (bench.info or {}).items() if k != "split_id"}},
        "environment": {**environment(dev), "malloc": malloc},
        "metrics": metrics if task == "fsl" else {k: v for k, v in metrics.items()},
        "history": ctx.curves.history(),
        "invocation": invocation,
        "timings": {"total_s": round(elapsed_before + time.perf_counter() - t0, 3),
                    ("per_session_s" if task == "fscil" else "fit_eval_s"):
                        [round(t, 3) for t in times]},
        "started": started, "finished": now_iso(), "run_dir": str(run_dir),
        "distributed": {"world_size": dist.world_size(), "backend": dist.backend(),
                        **ctx.extras.get("batch", {"per_rank_batch": None, "total_batch": None})},
    }
    result["flags"]["generated_split"] = bool(result["split"]["generated"])
    if dist.is_main():
        atomic_write_json(run_dir / RESULT_FILE, result)
    if not partial:
        for lg in loggers:
            lg.on_end(result)
    return result

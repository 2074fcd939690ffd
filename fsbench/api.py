"""Programmatic entry point: :func:`run` does what ``fsbench run`` does and returns the result."""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import torch

from fsbench import config as _config
from fsbench import distributed as dist
from fsbench import transforms as _transforms
from fsbench.context import RunContext, derive_seed, resolve_device, seed_everything
from fsbench.errors import UserError
from fsbench.learner import DataInfo
from fsbench.loggers import ConsoleLogger, FileLogger, JSONLinesLogger, Logger
from fsbench.registry import DATASETS, METHODS
from fsbench.results import (RESULT_SCHEMA, atomic_write_json, environment, new_run_dir, now_iso,
                             read_json)

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


def run(method: str, dataset: str, *, data_root=None, split_dir=None, preset: str | None = None,
        overrides: list[str] | dict | None = None, seed: int | None = None,
        device: str | None = None, out_dir: str | Path = "runs", resume: str | Path | None = None,
        loggers: list[Logger] | None = None, progress: bool = True,
        stop_after: int | None = None, threads: int | None = None,
        reproducible: bool = False) -> dict:
    """Run ``method`` on ``dataset`` and write ``RUN_DIR/result.json``; returns the result dict.

    ``resume=RUN_DIR`` continues an interrupted run from its last checkpoint with its saved
    configuration (other arguments are ignored).

    ``reproducible=True`` needs a process started in the reproducible CPU mode
    (:mod:`fsbench.repro`; ``fsbench run --reproducible`` does that); ``threads`` fixes the CPU
    thread count. Both are recorded in ``run.json`` and ``result.json``."""
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / RUN_FILE).is_file():
            raise UserError(f"--resume {run_dir}: no {RUN_FILE} there; pass a folder made by "
                            f"`fsbench run` (runs/<time>-<method>-<dataset>)")
        inv = read_json(run_dir / RUN_FILE, "run file")
        try:
            method, dataset, cfg = inv["method"], inv["dataset"], inv["config"]
            seed, data_root = int(inv["seed"]), inv.get("data_root")
            split_dir = inv.get("split_dir")
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{run_dir / RUN_FILE} is not a fsbench run file; start a new run") \
                from None
        device = device or inv.get("device")
        reproducible = bool(inv.get("reproducible"))
        threads = inv.get("threads", threads)
    else:
        cfg = _config.resolve(method, dataset, preset, overrides)
        seed = seed if seed is not None else cfg.get("seed", 0) or 0
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 2**32 - 1:
            raise UserError(f"--seed {seed}: use a whole number from 0 to 4294967295")
        cfg["seed"] = seed
    threads = _pin_threads(reproducible, threads)
    dev = resolve_device(device or cfg.get("device"))
    joined = dist.init(dev.type, float(_config.get(cfg, "distributed.timeout_s", None)
                                       or dist.DEFAULT_TIMEOUT_S))
    try:
        if joined and dev.type == "cuda":
            dev = torch.device("cuda", dist.local_rank())
        if not dist.is_main():  # the other processes print errors only
            progress, loggers = False, []
            logging.getLogger("fsbench").setLevel(logging.ERROR)
        return _run(method, dataset, cfg, seed, dev, data_root=data_root, split_dir=split_dir,
                    device=device, out_dir=out_dir, resume=resume, loggers=loggers,
                    progress=progress, stop_after=stop_after, threads=threads,
                    reproducible=reproducible)
    finally:
        if joined:
            dist.shutdown()


def _new_run_folder(out_dir, method, dataset, record: dict) -> Path:
    """The new run folder, made (with its run file) by rank 0 and known to every rank."""
    made = None
    if dist.is_main():
        try:
            made = new_run_dir(out_dir, method, dataset)
            atomic_write_json(made / RUN_FILE, record)
        except UserError as e:
            made = e
    made = dist.broadcast_object(made)
    if isinstance(made, UserError):
        raise made if dist.is_main() else dist.PeerFailure("rank 0 could not make the run folder")
    return Path(made)


def _run(method, dataset, cfg, seed, dev, *, data_root, split_dir, device, out_dir, resume,
         loggers, progress, stop_after, threads, reproducible) -> dict:
    entry = METHODS.get(method)
    task = entry.task
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
        run_dir = _new_run_folder(out_dir, method, dataset, {
            "method": method, "dataset": dataset, "seed": seed, "config": cfg,
            "data_root": str(data_root) if data_root else os.environ.get("FSBENCH_DATA"),
            "split_dir": str(split_dir) if split_dir else None,
            "device": device, "reproducible": threads if reproducible else None,
            "threads": threads, "created": now_iso()})
    else:
        run_dir = Path(resume)
    if loggers is None:
        loggers = [ConsoleLogger()]
    if dist.is_main():
        loggers = list(loggers) + [FileLogger(run_dir / "run.log"),
                                   JSONLinesLogger(run_dir / "metrics.jsonl")]
    started = now_iso()
    for lg in loggers:
        lg.on_start({"method": method, "dataset": dataset, "seed": seed, "run_dir": str(run_dir),
                     "resume": resume is not None})
    t0 = time.perf_counter()
    try:
        if task == "fscil":
            from fsbench.runners.fscil import run_sessions
            metrics = run_sessions(learner, bench, ctx, run_dir, loggers,
                                   resume=resume is not None, stop_after=stop_after)
        else:
            from fsbench.runners.fsl import run_fsl
            metrics = run_fsl(learner, bench, ctx, run_dir, loggers, resume=resume is not None)
    except UserError:
        # A run refused before its first checkpoint leaves nothing behind.
        if dist.is_main() and resume is None and not (run_dir / "checkpoint.pt").exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    times = metrics.pop("times", [])
    elapsed_before = float(metrics.pop("elapsed_before_s", 0.0))  # earlier processes (resume)
    partial = bool(metrics.pop("partial", False))
    backbone = _config.get(cfg, "backbone.name")
    standard = cfg.get("standard_backbone")
    result = {
        "schema": RESULT_SCHEMA, "fsbench_version": environment(dev)["fsbench"], "task": task,
        "method": method, "dataset": dataset, "seed": seed,
        "status": "partial" if partial else "complete",
        "config": cfg, "config_hash": _config.config_hash(cfg),
        "split": _split_identity(bench, metrics, cfg),
        "backbone": backbone, "pretraining": cfg.get("pretraining", "none"),
        "flags": {"selected_on_test": bool(cfg.get("select_on_test", False)),
                  "generated_split": False, "nonstandard_backbone":
                      bool(standard) and backbone != standard},
        "data": {"train": bench.train.identity(), "test": bench.test.identity(),
                 **{k: v for k, v in (bench.info or {}).items() if k != "split_id"}},
        "environment": environment(dev),
        "metrics": metrics if task == "fsl" else {k: v for k, v in metrics.items()},
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

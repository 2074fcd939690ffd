"""Running the runs of a sweep (:mod:`fsbench.sweep`): one ``fsbench run`` child process per run,
in local worker threads or as Ray tasks.

A run is handed over as a plain dict (``name``, ``method``, ``dataset``, ``seed``, ``sets``) with
the sweep's options (``root``, ``threads``, ``reproducible``, ``preset``, ``data_root``,
``device``); :func:`execute` needs nothing else but the files under ``root``, so a Ray worker on
another node runs it as well as a local thread.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from fsbench.errors import UserError

RUNS, LOGS = "runs", "logs"
ERROR_PREFIX = "fsbench: error: "
RAY_INSTALL = 'pip install -e ".[ray]"'


# --------------------------------------------------------------------------- one run

def run_state(run_dir: Path) -> str:
    """``complete`` (result.json says so), ``started`` (run.json exists) or ``new``."""
    try:
        with open(run_dir / "result.json") as f:
            if json.load(f).get("status") == "complete":
                return "complete"
    except (OSError, ValueError, AttributeError):
        pass
    return "started" if (run_dir / "run.json").is_file() else "new"


def child_command(run: dict, opts: dict, run_dir: Path) -> list[str]:
    """The ``fsbench run`` command line of one run: a new run, or ``--resume`` of a started one."""
    cmd = [sys.executable, "-m", "fsbench.cli", "run", "--no-progress"]
    if run_state(run_dir) == "started":
        return cmd + ["--resume", str(run_dir)]
    cmd += ["--method", run["method"], "--dataset", run["dataset"], "--seed", str(run["seed"]),
            "--run-dir", str(run_dir), "--threads", str(opts["threads"])]
    for item in run["sets"]:
        cmd += ["--set", item]
    for flag in ("preset", "data_root", "device"):
        if opts.get(flag):
            cmd += [f"--{flag.replace('_', '-')}", str(opts[flag])]
    if opts.get("reproducible"):
        cmd.append("--reproducible")
    return cmd


def error_line(output: str, returncode: int) -> str:
    """The child's one-line error: its ``fsbench: error:`` line, else the last line it printed
    (a traceback's exception), else its exit code."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith(ERROR_PREFIX):
            return ln
    return lines[-1][:500] if lines else f"fsbench run exited with code {returncode}"


def execute(run: dict, opts: dict) -> dict:
    """Run one ``fsbench run`` child to its end; ``{"status": "complete"|"failed", "error",
    "seconds"}``. Used as is by local workers and as a Ray task (it needs nothing but the files
    under ``opts["root"]``)."""
    root = Path(opts["root"])
    run_dir, log = root / RUNS / run["name"], root / LOGS / f"{run['name']}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = child_command(run, opts, run_dir)
    t0 = time.perf_counter()
    with open(log, "ab") as f:
        start = f.tell()
        f.write(f"$ {' '.join(cmd)}\n".encode())
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL).returncode
    seconds = round(time.perf_counter() - t0, 3)
    if rc == 0 and run_state(run_dir) == "complete":
        return {"status": "complete", "error": None, "seconds": seconds}
    with open(log, "rb") as f:
        f.seek(start)
        output = f.read().decode("utf-8", "replace")
    return {"status": "failed", "error": error_line(output, rc), "seconds": seconds}


# --------------------------------------------------------------------------- executors

def run_local(todo: list, opts: dict, jobs: int, report) -> None:
    """``jobs`` worker threads, each waiting on one child process at a time; ``todo`` holds
    :class:`fsbench.sweep.Run`, ``report(run, outcome)`` is called as each ends."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(execute, asdict(r), opts): r for r in todo}
        try:
            for fut in as_completed(futures):
                report(futures[fut], fut.result())
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError(f"--ray needs Ray, which is not installed; install it with "
                        f"`{RAY_INSTALL}`") from None
    return ray


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse a ``HOST:PORT`` nobody listens at now, instead of Ray's minutes of retries."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return  # "auto", ray://..., or a form Ray itself interprets
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise UserError(f"--ray {address}: nothing answers there ({e.strerror or e}); start the "
                        f"cluster with `ray start --head` and pass the address it prints") \
            from None


def run_ray(todo: list, opts: dict, address: str | None, jobs: int, report) -> None:
    """One Ray task per run, requesting ``threads`` CPUs (and a GPU with ``--device cuda``).

    ``address`` None starts a local Ray with ``jobs * threads`` CPUs and no dashboard; otherwise
    it connects to a running cluster (``ray start --head``), which must see the sweep folder at
    the same path and have fsbench installed."""
    ray = import_ray()
    threads = opts["threads"]
    try:
        if address is None:
            ray.init(address="local", num_cpus=jobs * threads, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)  # a new one, never a cluster
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"connect to the Ray cluster at {address}" if address else "start a local Ray"
        raise UserError(f"cannot {where}: {' '.join(str(e).split())[:300]}; start the cluster "
                        f"with `ray start --head` and pass its address (`--ray auto` on the head "
                        f"node; elsewhere with token authentication also RAY_AUTH_MODE=token and "
                        f"the cluster's token, see `ray get-auth-token`)") from None
    try:
        gpus = 1 if str(opts.get("device") or "").startswith("cuda") else 0
        task = ray.remote(num_cpus=threads, num_gpus=gpus, max_retries=0)(execute)
        pending = {task.remote(asdict(r), opts): r for r in todo}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    run = pending.pop(ref)
                    try:
                        out = ray.get(ref)
                    except ray.exceptions.RayError as e:  # the worker died, not the run
                        out = {"status": "failed", "seconds": None,
                               "error": f"Ray task failed: {' '.join(str(e).split())[:300]}"}
                    report(run, out)
        except BaseException:
            # An interrupt reaches a running task as KeyboardInterrupt, and subprocess.run kills
            # its child: nothing keeps running, and the run resumes from its last checkpoint.
            for ref in pending:
                ray.cancel(ref)
            raise
    finally:
        ray.shutdown()

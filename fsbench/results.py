"""Result files: atomic writes, run directories, environment capture, checkpoints."""
from __future__ import annotations

import datetime as _dt
import io
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fsbench import repro
from fsbench.atomic import atomic_write_bytes, unwritable
from fsbench.errors import UserError
from fsbench.jsonio import json_default

RESULT_SCHEMA = "fsbench.result/1"


def atomic_write_json(path: str | Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False, default=json_default, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode())


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint with ``weights_only=True``; a corrupt file is a one-line error."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} not found; the run has no completed session to "
                        f"resume from - start it again without --resume") from None
    except Exception as e:  # noqa: BLE001
        raise UserError(f"checkpoint {path} is corrupt or not a fsbench checkpoint "
                        f"({type(e).__name__}); delete it and rerun the run from scratch") from None


def remove_stale_temporaries(run_dir: str | Path) -> list[Path]:
    """Delete what an interrupted atomic write left in a run folder (``.NAME.*.tmp``)."""
    gone = []
    for p in Path(run_dir).glob(".*.tmp"):
        p.unlink(missing_ok=True)
        gone.append(p)
    return gone


def restore_learner(learner, path: str | Path) -> dict:
    """Load the checkpoint at ``path`` into ``learner``; returns the whole checkpoint. A checkpoint
    whose modules, keys or shapes do not fit the learner is a one-line error naming the first
    mismatch."""
    state = load_checkpoint(path)
    try:
        learner.load_state_dict(state["learner"])
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as e:
        detail = " ".join(str(e).split())
        detail = detail[:300] + ("..." if len(detail) > 300 else "")
        raise UserError(f"checkpoint {path} does not fit this learner ({type(e).__name__}: "
                        f"{detail}); it was written by another method or configuration - start "
                        f"the run again without --resume") from None
    return state


def check_result_shape(result, path) -> None:
    """What ``fsbench show`` needs of a result file, checked before anything is printed."""
    def bad(what):
        return UserError(f"{path} is not a valid fsbench result: {what}")

    if not isinstance(result, dict):
        raise bad(f"the top level is a {type(result).__name__}, not an object")
    for key in ("method", "dataset"):
        v = result.get(key)
        if not isinstance(v, str) or not 0 < len(v) <= 64 or not v.isprintable():
            raise bad(f"'{key}' must be a printable name of 1-64 characters")
    if result.get("task") not in ("fscil", "fsl"):
        raise bad("'task' must be 'fscil' or 'fsl'")
    m, split = result.get("metrics"), result.get("split")
    if not isinstance(m, dict) or not isinstance(split, dict):
        raise bad("'metrics' and 'split' must be objects")
    if not isinstance(result.get("seed"), int) or isinstance(result.get("seed"), bool):
        raise bad("'seed' must be an integer")

    def num(v, where, allow_none=False):
        if (v is None and allow_none) or (isinstance(v, (int, float)) and not isinstance(v, bool)):
            return
        raise bad(f"{where} must be a number")

    if result["task"] == "fscil":
        if not isinstance(split.get("id"), str):
            raise bad("'split.id' must be a string")
        sessions = m.get("sessions")
        if not isinstance(sessions, list) or not all(isinstance(x, dict) for x in sessions):
            raise bad("'metrics.sessions' must be a list of objects")
        for i, x in enumerate(sessions):
            for k in ("session", "num_seen", "acc"):
                num(x.get(k), f"metrics.sessions[{i}].{k}")
            for k in ("base_acc", "novel_acc", "hm"):
                num(x.get(k), f"metrics.sessions[{i}].{k}", allow_none=True)
        if "avg" in m:
            for k in ("avg", "pd", "last"):
                num(m.get(k), f"metrics.{k}")
    else:
        shots = m.get("shots")
        if not isinstance(shots, dict) or not all(isinstance(v, dict) for v in shots.values()):
            raise bad("'metrics.shots' must map shots to objects")
        for k, v in shots.items():
            num(v.get("mean"), f"metrics.shots.{k}.mean")
            num(v.get("ci95"), f"metrics.shots.{k}.ci95")
        for k in ("way", "query", "episodes"):
            num(split.get(k), f"split.{k}")


def read_json(path: str | Path, what: str = "file") -> dict:
    path = Path(path)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{what} {path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{what} {path} is not valid JSON ({e}); it may be truncated") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror or type(e).__name__}") from None


def new_run_dir(out: str | Path, method: str, dataset: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(out) / f"{stamp}-{method}-{dataset}"
    path, n = base, 1
    while True:
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            if not Path(out).is_dir():
                raise UserError(f"--out {out} is a file, not a folder; pass a folder for run "
                                f"directories") from None
            n += 1
            path = base.with_name(f"{base.name}-{n}")
        except OSError as e:
            raise unwritable(path, e) from None


def named_run_dir(path: str | Path) -> Path:
    """Make the run folder ``path`` (its parents too); an existing empty folder is fine."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"--run-dir {path} is a file, not a folder; pass a folder") from None
    except OSError as e:
        raise unwritable(path, e) from None
    return path


def _git(*args) -> str | None:
    """``git ARGS`` in the fsbench source tree; None outside a checkout or without git."""
    here = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_commit() -> str | None:
    out = _git("rev-parse", "HEAD")
    return out.strip() or None if out else None


def git_dirty() -> bool | None:
    """Whether tracked files differ from the commit (None outside a git checkout)."""
    out = _git("status", "--porcelain", "--untracked-files=no")
    return None if out is None else bool(out.strip())


def environment(device: torch.device | str) -> dict:
    from importlib import metadata

    def ver(pkg):
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    device = torch.device(device)
    env = {
        "fsbench": ver("fsbench"), "python": platform.python_version(), "torch": torch.__version__,
        "torchvision": ver("torchvision"), "numpy": np.__version__, "pot": ver("POT"),
        "platform": platform.platform(), "machine": platform.machine(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "device": str(device), "git_commit": git_commit(), "git_dirty": git_dirty(),
        **repro.fingerprint(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    return env

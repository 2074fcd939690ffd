"""A run killed (SIGKILL) in the middle of base training resumes from its last finished epoch and
ends with the numbers of an uninterrupted run (reproducible CPU mode)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from fsbench.trainstate import FILE

ARGS = ["run", "--method", "ncm", "--dataset", "glyphs", "--set", "train.epochs=3",
        "--reproducible", "--no-progress"]


def _numbers(result: dict) -> list:
    return [(s["acc"], s["base_acc"], s["novel_acc"]) for s in result["metrics"]["sessions"]]


def _cmd(*argv) -> list[str]:
    return [sys.executable, "-m", "fsbench.cli", *argv]


def test_kill_in_base_training_then_resume_gives_identical_numbers(tmp_path):
    ref = subprocess.run(_cmd(*ARGS, "--out", str(tmp_path / "ref")), capture_output=True,
                         text=True, timeout=900)
    assert ref.returncode == 0, ref.stderr
    (ref_dir,) = (tmp_path / "ref").iterdir()
    assert not (ref_dir / FILE).exists()  # cleared once the base session's checkpoint is written
    expected = _numbers(json.loads((ref_dir / "result.json").read_text()))

    out = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(*ARGS, "--out", str(out)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 900
    run_dir = None
    while time.time() < deadline and proc.poll() is None:
        dirs = list(out.iterdir()) if out.is_dir() else []
        if dirs and (dirs[0] / FILE).is_file():
            run_dir = dirs[0]
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert run_dir is not None, "the run never wrote an epoch checkpoint"
    assert not (run_dir / "checkpoint.pt").exists(), "killed after base training, not during"
    saved = torch.load(run_dir / FILE, weights_only=True)
    assert 1 <= saved["base"]["epoch"] < 3
    (run_dir / ".checkpoint.pt.x1y2.tmp").write_bytes(b"half")  # a write cut short by the kill

    res = subprocess.run(_cmd("run", "--resume", str(run_dir), "--no-progress"),
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr
    result = json.loads((run_dir / "result.json").read_text())
    assert _numbers(result) == expected
    assert not list(run_dir.glob(".*.tmp")) and not (run_dir / FILE).exists()

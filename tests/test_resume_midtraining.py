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

import pytest
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


# ---------------------------------------------------------------- the other training loops
# A run interrupted right after one of its trainer's checkpoints (Ctrl-C, in-process) and resumed
# ends with the numbers and curves of an uninterrupted run. One case per loop that checkpoints:
# BECLR pretraining (networks, optimiser, DyCE memories), protonet's and DVLA-RL's blocks of 100
# episodes, DVLA-RL pretraining, CPE-CLIP's prompt epochs (sessions 0-1 of its nine, to stay short).
CASES = {
    "beclr": ("beclr", "synthetic", {"train.epochs": 3, "dyce.memory_start_epoch": 1,
                                     "eval.episodes": 20}, "pretrain", 2),
    "protonet": ("protonet", "synthetic", {"train.episodes": 200, "eval.episodes": 20},
                 "episodes", 100),
    "dvla_rl-pretrain": ("dvla_rl", "glyphs", {
        "text.encoder": "words", "text.dim": 32, "pretrain.epochs": 2, "pretrain.max_images": 512,
        "meta.episodes": 5, "eval.episodes": 10}, "pretrain", 1),
    "dvla_rl-meta": ("dvla_rl", "glyphs", {
        "text.encoder": "words", "text.dim": 32, "pretrain.epochs": 0, "meta.episodes": 120,
        "eval.episodes": 10}, "meta", 100),
    "cpe_clip": ("cpe_clip", "glyphs", {"clip.pretrain_steps": 300, "train.base.epochs": 2,
                                        "train.session.epochs": 1}, "prompts-0", 1),
    # Mamba-FSCIL's CIFAR-style base recipe (fsbench.baselines.recipes): cooldown by iteration,
    # warm-up, batch Mixup/CutMix from the saved random states, a backbone lr multiplier
    "mamba-recipe": ("mamba_fscil", "synthetic", {
        "train.epochs": 3, "train.schedule": "cooldown", "train.warmup_iters": 3,
        "train.backbone_lr_mult": 0.5, "train.batch_augments": [
            {"name": "mixup", "alpha": 0.8, "p": 0.4}, {"name": "cutmix", "alpha": 1.0, "p": 0.4},
            {"name": "identity", "p": 0.2}], "incremental.steps": 5}, "base", 1),
}


def _outcome(res: dict) -> tuple:
    m = res["metrics"]
    numbers = [s["acc"] for s in m["sessions"]] if "sessions" in m else \
        {k: v["per_episode"] for k, v in m["shots"].items()}
    return numbers, res["history"]


@pytest.mark.parametrize("case", list(CASES))
def test_interrupted_training_loop_resumes_to_identical_numbers(case, tmp_path, monkeypatch):
    from fsbench import api
    from fsbench.trainstate import EpochCheckpoint

    method, dataset, sets, key, stop = CASES[case]
    short = {"stop_after": 1} if method == "cpe_clip" else {}
    full = api.run(method, dataset, overrides=sets, out_dir=tmp_path / "full", loggers=[],
                   progress=False, **short)
    original = EpochCheckpoint.save
    seen = []

    def save_then_interrupt(self, epoch, *a, **k):
        original(self, epoch, *a, **k)
        seen.append((self.key, epoch))
        if (self.key, epoch) == (key, stop):
            raise KeyboardInterrupt

    monkeypatch.setattr(EpochCheckpoint, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt) as info:
        api.run(method, dataset, overrides=sets, out_dir=tmp_path / "cut", loggers=[],
                progress=False, **short)
    run_dir = Path(info.value.run_dir)
    saved = torch.load(run_dir / FILE, weights_only=True)
    assert (key, stop) in seen and saved[key]["epoch"] == stop and saved["_elapsed_s"] > 0
    monkeypatch.setattr(EpochCheckpoint, "save", original)
    resumed = api.run(None, None, resume=str(run_dir), loggers=[], progress=False, **short)
    assert _outcome(resumed) == _outcome(full)
    assert not (run_dir / FILE).exists()  # cleared once the run's own checkpoint is written
    assert resumed["status"] == full["status"]
    # the time of the interrupted process up to its last epoch counts in the run's total
    assert resumed["timings"]["total_s"] >= saved["_elapsed_s"]


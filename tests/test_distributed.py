"""Data-parallel runs under torchrun: 2 CPU processes with gloo on glyphs (README "Scaling out").

Every process runs with 1 thread in the reproducible CPU mode, and the 1-process references too,
so the comparisons of evaluation numbers are exact."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fsbench import repro

NEW = ["--no-progress", "--reproducible", "--threads", "1"]


def _env(**extra) -> dict:
    return {**os.environ, **repro.environment(1), **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*argv, wrapper: list[str] | None = None, env=None, timeout=600):
    """``torchrun --nproc_per_node 2 -m fsbench ARGV`` (or ``--no-python WRAPPER ARGV``)."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
              "--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    launch += ["--no-python", *wrapper] if wrapper else ["-m", "fsbench"]
    return subprocess.run(launch + list(argv), capture_output=True, text=True, timeout=timeout,
                          env=env or _env())


def _one(*argv, timeout=600):
    return subprocess.run([sys.executable, "-m", "fsbench", *argv], capture_output=True,
                          text=True, timeout=timeout, env=_env())


def _errors(proc) -> list[str]:
    return [ln for ln in (proc.stdout + proc.stderr).splitlines()
            if ln.startswith("fsbench: error:")]


def _result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


def test_fsl_evaluation_under_two_processes_equals_one_process(tmp_path):
    """protonet: the checkpoint of a 1-process run evaluated again under torchrun (--resume)
    gives the same per-episode accuracies; 4 chunks of 5 episodes, 2 per process."""
    out = tmp_path / "runs"
    ref = _one("run", "--method", "protonet", "--dataset", "glyphs", "--set", "train.episodes=5",
               "--set", "eval.episodes=20", "--set", "eval.episodes_per_batch=5", *NEW,
               "--out", str(out))
    assert ref.returncode == 0, ref.stderr[-3000:]
    (ref_dir,) = out.iterdir()
    again = tmp_path / "again"
    shutil.copytree(ref_dir, again)
    (again / "result.json").unlink()
    proc = _torchrun("run", "--resume", str(again), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = _result(ref_dir), _result(again)
    assert two["distributed"]["world_size"] == 2
    for k, rec in one["metrics"]["shots"].items():
        assert len(rec["per_episode"]) == 20
        assert two["metrics"]["shots"][k] == rec


def test_fscil_training_and_evaluation_under_two_processes(tmp_path):
    """ncm: base training in 2 processes (stopped after the base session), then the rest of the
    run continued once in 1 and once in 2 processes: the same per-session accuracies (test
    features and predictions sharded by batch, every process loading the checkpoint)."""
    out = tmp_path / "runs"
    code = ("from fsbench.api import run; run('ncm', 'glyphs', overrides=['train.epochs=1'], "
            f"out_dir={str(out)!r}, stop_after=0, progress=False, threads=1, reproducible=True, "
            "loggers=[])")
    made = _torchrun("-c", code, wrapper=[sys.executable])
    assert made.returncode == 0, made.stderr[-3000:]
    (base_dir,) = out.iterdir()  # one folder, made by rank 0
    base = _result(base_dir)
    assert base["distributed"] == {"world_size": 2, "backend": "gloo", "per_rank_batch": 64,
                                   "total_batch": 128}
    acc = base["metrics"]["sessions"][0]["acc"]
    assert acc > 100 / 60 + 10, f"2-process base training learned nothing ({acc:.1f}%)"

    one, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(base_dir, one)
    shutil.copytree(base_dir, two)
    ref = _one("run", "--resume", str(one), "--no-progress")
    assert ref.returncode == 0, ref.stderr[-3000:]
    proc = _torchrun("run", "--resume", str(two), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("AVG ") == 1  # rank 1 prints nothing
    a, b = _result(one)["metrics"], _result(two)["metrics"]
    assert len(a["sessions"]) == 9 and _result(two)["distributed"]["world_size"] == 2

    def numbers(sessions):
        return [{k: v for k, v in s.items() if k != "seconds"} for s in sessions]
    assert numbers(b["sessions"]) == numbers(a["sessions"])
    assert (a["avg"], a["pd"], a["last"]) == (b["avg"], b["pd"], b["last"])


def test_total_batch_that_does_not_divide_is_one_line_per_process(tmp_path):
    proc = _torchrun("run", "--method", "ncm", "--dataset", "glyphs",
                     "--set", "train.batch_size=127", *NEW, "--out", str(tmp_path / "runs"))
    assert proc.returncode != 0
    lines = _errors(proc)
    # each process that gets to report says so in one line (torchrun may end the second one
    # before it prints, once the first has failed)
    prefixes = [ln[:len("fsbench: error: [rank 0/2]")] for ln in lines]
    assert prefixes and set(prefixes) <= {"fsbench: error: [rank 0/2]",
                                          "fsbench: error: [rank 1/2]"}
    assert len(set(prefixes)) == len(prefixes)
    assert all("train.batch_size=127" in ln and "divide by 2" in ln for ln in lines)
    assert not any((tmp_path / "runs").glob("*")), "a refused run leaves no folder"


def test_a_failing_rank_ends_the_run_with_its_error_and_no_hang(tmp_path):
    """Rank 1 sees an empty data folder (a node without the dataset): it fails with one line,
    and rank 0, waiting for it in a collective, is ended instead of waiting for ever."""
    sys.path.insert(0, str(Path(__file__).parent))
    import fabricate

    good, empty = tmp_path / "data", tmp_path / "empty"
    fabricate.cifar100(good, train_per_class=2, test_per_class=1)  # rank 0's data is complete
    empty.mkdir()
    script = ('if [ "$RANK" = 1 ]; then export FSBENCH_DATA="$EMPTY"; fi; '
              'exec "$PY" -m fsbench "$@"')
    env = _env(FSBENCH_DATA=str(good), EMPTY=str(empty), PY=sys.executable)
    proc = _torchrun("run", "--method", "ncm", "--dataset", "cifar100",
                     "--set", "distributed.timeout_s=60", *NEW, "--out", str(tmp_path / "runs"),
                     wrapper=["bash", "-c", script, "fsbench"], env=env)
    assert proc.returncode != 0
    lines = _errors(proc)
    assert len([ln for ln in lines if ln.startswith("fsbench: error: [rank 1/2]")]) == 1, lines
    assert str(empty) in next(ln for ln in lines if "[rank 1/2]" in ln)
    assert not any("[rank 0/2]" in ln and "Traceback" in ln for ln in lines)


@pytest.mark.parametrize("part", ["train", "opta", "scan"])
def test_gpu_check_parts_start_in_tiny_cpu_mode(part):
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", part, "--tiny"],
                          capture_output=True, text=True, timeout=600, env=_env(),
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip(), "prints its measurement"


def test_helpers_are_the_identity_in_one_process():
    import torch

    from fsbench import distributed as dist

    assert (dist.world_size(), dist.rank(), dist.is_main(), dist.backend()) == (1, 0, True, None)
    obj = {"a": [1, 2]}
    assert dist.broadcast_object(obj) is obj and dist.all_gather_object(obj) == [obj]
    t = torch.tensor([1.0, 2.0])
    assert torch.equal(dist.all_reduce_sum(t), torch.tensor([1.0, 2.0]))
    assert dist.map_in_order(lambda i: i * i, 4) == [0, 1, 4, 9]
    assert dist.shard(range(3)) == [0, 1, 2]


def test_per_rank_batch_splits_the_total_and_names_the_override(monkeypatch, caplog):
    import torch

    from fsbench import config
    from fsbench import distributed as dist
    from fsbench.api import build_context
    from fsbench.errors import UserError

    monkeypatch.setattr(dist, "world_size", lambda: 4)
    cfg = config.resolve("ncm", "glyphs")
    ctx = build_context(cfg, 1, torch.device("cpu"), 0, False)
    assert ctx.per_rank_batch(128, "train.batch_size") == 32
    assert ctx.extras["batch"] == {"per_rank_batch": 32, "total_batch": 128}
    with pytest.raises(UserError, match=r"train.batch_size=127 .* divide by 4"):
        ctx.per_rank_batch(127, "train.batch_size")
    cfg = config.resolve("ncm", "glyphs", overrides=["distributed.per_rank_batch=16"])
    ctx = build_context(cfg, 1, torch.device("cpu"), 0, False)
    with caplog.at_level("WARNING", logger="fsbench"):
        assert ctx.per_rank_batch(128, "train.batch_size") == 16
    assert ctx.extras["batch"]["total_batch"] == 64
    assert "makes the total batch 64, not train.batch_size=128" in caplog.text

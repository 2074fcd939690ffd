"""The reproducible CPU mode (fsbench.repro): pinned before torch loads, recorded, identical numbers
whatever the outer environment asks for."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fsbench import api, repro
from fsbench.cli import build_parser
from fsbench.errors import UserError

RUN = ["run", "--method", "ncm", "--dataset", "synthetic", "--set", "train.epochs=1",
       "--no-progress"]
# What another machine's environment could say; the reproducible mode must override all of it.
OTHER_MACHINE = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41",
                 "MKL_CBWR": "COMPATIBLE", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                 "OPENBLAS_CORETYPE": "Prescott"}


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in repro.environment()}
    env.update(extra)
    return env


def _numbers(metrics):
    """Every metric except wall-clock timings."""
    if isinstance(metrics, dict):
        return {k: _numbers(v) for k, v in metrics.items() if k != "seconds"}
    if isinstance(metrics, list):
        return [_numbers(v) for v in metrics]
    return metrics


def _cli(args, env, out: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "fsbench.cli", *args, "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = out.iterdir()
    return json.loads((run_dir / "result.json").read_text()) | {
        "run": json.loads((run_dir / "run.json").read_text())}


def test_conftest_runs_the_suite_pinned():
    assert repro.active() == repro.DEFAULT_THREADS
    import torch
    assert torch.get_num_threads() >= 1
    if repro._is_x86():
        assert torch.backends.cpu.get_cpu_capability() == "AVX2"


def test_environment_pins_every_library():
    env = repro.environment(3)
    assert env[repro.MARK] == "3"
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "3"
    if repro._is_x86():
        assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["ONEDNN_MAX_CPU_ISA"] == "AVX2"
        assert env["MKL_CBWR"] == "AVX2,STRICT" and "AVX512F" in env["NPY_DISABLE_CPU_FEATURES"]


@pytest.mark.parametrize("bad", ["abc", "0", "-1", "99999999999"])
def test_bad_thread_counts_are_one_line_errors(bad):
    with pytest.raises(UserError, match="--threads"):
        repro.check_threads(bad)


def test_api_refuses_reproducible_without_pinned_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(repro.MARK)
    with pytest.raises(UserError, match="before torch is imported"):
        api.run("ncm", "synthetic", overrides=["train.epochs=1"], out_dir=tmp_path,
                reproducible=True, loggers=[], progress=False)


def test_regress_embedded_is_always_pinned():
    parser = build_parser()
    args = parser.parse_args(["regress", "--embedded"])
    assert args.pin(args) == repro.DEFAULT_THREADS
    args = parser.parse_args(["regress"])
    assert args.pin(args) is None
    args = parser.parse_args(["run", "--method", "ncm", "--dataset", "synthetic"])
    assert args.pin(args) is None
    args = parser.parse_args(["run", "--method", "ncm", "--dataset", "synthetic",
                              "--reproducible", "--threads", "1"])
    assert args.pin(args) == 1


def test_reproducible_run_overrides_another_machines_environment(tmp_path):
    """``--reproducible`` re-executes with the pinned variables: a process started with a
    different ISA cap and thread count gives the identical numbers, and the result says how."""
    a = _cli(RUN + ["--reproducible"], _clean_env(), tmp_path / "a")
    b = _cli(RUN + ["--reproducible"], _clean_env(**OTHER_MACHINE), tmp_path / "b")
    assert _numbers(a["metrics"]) == _numbers(b["metrics"])
    assert a["metrics"]["sessions"][-1]["acc"] > 0
    for r in (a, b):
        env = r["environment"]
        assert env["reproducible"] is True and env["threads"] == repro.DEFAULT_THREADS
        assert r["run"]["reproducible"] == repro.DEFAULT_THREADS
        if repro._is_x86():
            assert env["cpu_capability"] == "AVX2" and "MKL_CBWR=AVX2,STRICT" in env["pinned_env"]
        assert env["cpu_model"] is not None and env["mkl"] is not None


def test_plain_run_records_the_machine(tmp_path):
    """Without --reproducible the outer environment is used as it is, and recorded."""
    r = _cli(RUN + ["--threads", "1"], _clean_env(**OTHER_MACHINE), tmp_path / "c")
    env = r["environment"]
    assert env["reproducible"] is False and env["threads"] == 1
    assert env["cpu_capability"] == ("DEFAULT" if repro._is_x86() else env["cpu_capability"])

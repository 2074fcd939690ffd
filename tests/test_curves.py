"""Training curves: every epoch a trainer reports reaches metrics.jsonl, result.json's history
and the chosen loggers (CSV, TensorBoard), once each, also across an interrupted run."""
import csv
import importlib.util
import json
import sys

import pytest

from fsbench import api
from fsbench.cli import main
from fsbench.errors import UserError
from fsbench.loggers import Logger, make_loggers

FAST = {"train.epochs": 3}


def _jsonl(run_dir, kind):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


class _Interrupt(Logger):
    """Ctrl-C at the first batch of base epoch 1 (epoch 0 is reported and checkpointed)."""

    armed = False

    def on_epoch(self, record):
        self.armed = record["stage"] == "base" and record["epoch"] == 0

    def on_step(self, record):
        if self.armed:
            raise KeyboardInterrupt


def test_curves_reach_every_logger_once_also_across_an_interruption(tmp_path):
    has_tb = importlib.util.find_spec("tensorboard") is not None  # the optional extra
    rc = main(["run", "--method", "ncm", "--dataset", "synthetic", "--set", "train.epochs=3",
               "--out", str(tmp_path / "a"), "--no-progress", "--logger", "csv"]
              + ["--logger", "tensorboard"] * has_tb)
    assert rc == 0
    (run_dir,) = (tmp_path / "a").iterdir()
    full = json.loads((run_dir / "result.json").read_text())
    (base,) = [h for h in full["history"] if h["stage"] == "base"]
    assert base["session"] == 0 and base["select"] == "val"
    assert [e["epoch"] for e in base["epochs"]] == [0, 1, 2]
    best = max(base["epochs"], key=lambda e: e["val_acc"])  # first best epoch is kept
    assert base["selected_epoch"] == best["epoch"]
    assert all(e["loss"] > 0 and e["lr"] > 0 for e in base["epochs"])
    assert base["epochs"][0]["lr"] > base["epochs"][2]["lr"]  # the cosine schedule
    assert [e["epoch"] for e in _jsonl(run_dir, "epoch")] == [0, 1, 2]
    assert _jsonl(run_dir, "selection")[0]["selected_epoch"] == best["epoch"]
    with open(run_dir / "curves.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    assert float(rows[1]["val_acc"]) == base["epochs"][1]["val_acc"]
    if has_tb:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(run_dir / "tensorboard")).Reload()
        assert {"base/loss", "base/val_acc", "base/lr", "fscil/acc"} <= set(acc.Tags()["scalars"])
        assert [e.step for e in acc.Scalars("base/loss")] == [0, 1, 2]
        assert [e.step for e in acc.Scalars("fscil/acc")] == [0, 1, 2, 3, 4]

    # Interrupted in base epoch 1, resumed: the same curves, each epoch once everywhere.
    with pytest.raises(KeyboardInterrupt):
        api.run("ncm", "synthetic", overrides=FAST, out_dir=tmp_path / "b", progress=False,
                loggers=[_Interrupt()], log_to=["csv"])
    (run_dir,) = (tmp_path / "b").iterdir()
    assert [e["epoch"] for e in _jsonl(run_dir, "epoch")] == [0]
    resumed = api.run(None, None, resume=run_dir, progress=False, loggers=[])
    assert resumed["history"] == full["history"]
    assert [e["epoch"] for e in _jsonl(run_dir, "epoch")] == [0, 1, 2]
    assert len(_jsonl(run_dir, "selection")) == 1
    with open(run_dir / "curves.csv") as f:  # --logger csv is remembered by the resume
        assert [r["epoch"] for r in csv.DictReader(f)] == ["0", "1", "2"]


def test_unknown_logger_is_one_line():
    with pytest.raises(UserError, match="--logger nope: unknown logger; choose from csv"):
        make_loggers(["nope"])


def test_tensorboard_missing_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(UserError, match=r"pip install 'fsbench\[tensorboard\]'"):
        make_loggers(["tensorboard"])

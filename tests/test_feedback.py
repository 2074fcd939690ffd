"""Feedback while a run runs: bars only on terminals unless forced, per-batch loss and accuracy,
epoch / session lines that stay, the run folder at the start, the end and in the Ctrl-C hint."""
import io
import sys
from pathlib import Path

import pytest

from fsbench import context
from fsbench.cli import main

RUN = ["run", "--method", "finetune", "--dataset", "synthetic", "--set", "train.epochs=2",
       "--set", "finetune.epochs=1"]


@pytest.fixture(autouse=True)
def _process_default():
    context.set_progress(None)  # what an earlier run in this process left
    yield
    context.set_progress(None)


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_bars_follow_the_terminal_unless_forced(monkeypatch):
    monkeypatch.setattr(sys, "stdout", _Tty())
    monkeypatch.setattr(sys, "stderr", _Tty())
    assert context.bars_wanted(None) is True
    assert context.bars_wanted(False) is False
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # e.g. `fsbench run ... > log` (Slurm)
    assert context.bars_wanted(None) is False
    assert context.bars_wanted(True) is True
    context.set_progress(True)  # what `fsbench run --progress` leaves for bars outside a run
    assert context.bars_wanted(None) is True


def test_progress_bars_lines_and_run_folder(tmp_path, capsys):
    assert main(RUN + ["--out", str(tmp_path / "a"), "--progress"]) == 0
    out, err = capsys.readouterr()
    (run_dir,) = (tmp_path / "a").iterdir()
    lines = out.splitlines()
    assert lines[0] == f"run folder: {run_dir}"
    assert any(ln.startswith("base epoch 1: loss ") and " val_acc " in ln and " lr " in ln
               for ln in lines)
    assert any(ln.startswith("session 4: acc ") and "novel" in ln for ln in lines)
    assert lines[-9] == f"run folder: {run_dir}"  # just above the final table
    # the bars: per-batch base training with running loss and accuracy, validation, the
    # fine-tuning sessions and the (non-frozen) evaluation
    for needle in ("base epoch 2/2", "loss=", "acc=", "validation", "session 3 epoch 1/1",
                   "evaluation"):
        assert needle in err, needle

    context.set_progress(None)  # the next run draws bars only on a terminal again
    assert context.bars_wanted(None) is False  # pytest captures the output


def test_ctrl_c_names_the_run_folder_to_resume(tmp_path, capsys, monkeypatch):
    """Ctrl-C after a checkpoint names the folder to resume; before the first checkpoint nothing
    is kept (the folder is removed) and the message says so."""
    from fsbench.runners import fscil

    def interrupted(learner, bench, ctx, run_dir, *a, **k):
        (Path(run_dir) / "checkpoint.pt").write_bytes(b"")  # a session was checkpointed
        raise KeyboardInterrupt
    monkeypatch.setattr(fscil, "run_sessions", interrupted)
    assert main(RUN + ["--out", str(tmp_path / "a"), "--no-progress"]) == 130
    (run_dir,) = (tmp_path / "a").iterdir()
    assert f"fsbench run --resume {run_dir}`" in capsys.readouterr().err

    def early(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(fscil, "run_sessions", early)
    assert main(RUN + ["--out", str(tmp_path / "b"), "--no-progress"]) == 130
    assert not any((tmp_path / "b").iterdir())
    assert "before the run's first checkpoint; nothing was kept" in capsys.readouterr().err


def test_download_bar_counts_bytes(capsys):
    from fsbench.datacmd import copy_with_bar

    class Response(io.BytesIO):
        headers = {"Content-Length": str(3 << 20)}

    out = io.BytesIO()
    context.set_progress(True)
    assert copy_with_bar(Response(b"x" * (3 << 20)), out, "cifar.tar.gz") == 3 << 20
    assert out.getvalue() == b"x" * (3 << 20)
    err = capsys.readouterr().err
    assert "cifar.tar.gz" in err and "3.00M/3.00M" in err


def test_glyph_render_advances_its_bar():
    from fsbench.episodes import glyphs

    class Bar:
        n = 0

        def update(self, k):
            self.n += k

    bar = Bar()
    codes = [ord("A"), ord("B"), ord("C")]
    glyphs._render(codes, 16, bar)
    assert bar.n == len(codes) * len(glyphs.FACES)

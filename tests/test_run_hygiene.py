"""What a finished run, a submission and every written file leave behind: ``--resume`` of a
complete run changes nothing, ``submit`` writes to the user's leaderboard folder (never the
installed package), and files get the umask's permissions (0644), not 0600."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_plugins import write_plugin

from fsbench import api
from fsbench.atomic import atomic_write_text
from fsbench.cli import main
from fsbench.leaderboard import store
from fsbench.leaderboard.testing import fake_result


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hygiene")
    path = write_plugin(tmp / "plugin")
    return api.run(f"{path}:Means", "synthetic", out_dir=tmp / "runs", progress=False)


def test_resume_of_a_finished_run_changes_nothing_and_says_so(finished, capsys):
    run_dir = Path(finished["run_dir"])
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.iterdir()}
    capsys.readouterr()
    assert main(["run", "--resume", str(run_dir)]) == 0
    assert f"{run_dir} is complete already; nothing to resume" in capsys.readouterr().out
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.iterdir()}
    assert after == before


def test_files_follow_the_umask(finished, tmp_path):
    old = os.umask(0o022)
    try:
        for p in Path(finished["run_dir"]).iterdir():
            assert p.stat().st_mode & 0o777 == 0o644, p.name
        os.umask(0o077)
        atomic_write_text(tmp_path / "private.txt", "x")
        assert (tmp_path / "private.txt").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_submit_writes_to_the_user_folder_under_the_current_directory(tmp_path, monkeypatch,
                                                                      capsys):
    monkeypatch.delenv("FSBENCH_LEADERBOARD_DIR", raising=False)
    run = tmp_path / "run"
    run.mkdir()
    (run / "result.json").write_text(json.dumps(fake_result()))
    package = {p: p.stat().st_mtime_ns for p in store.PACKAGE_DIR.rglob("*") if p.is_file()}
    monkeypatch.chdir(tmp_path)
    assert main(["submit", str(run)]) == 0
    assert f"(in {tmp_path / 'fsbench-leaderboard'})" in capsys.readouterr().out
    (sub,) = (tmp_path / "fsbench-leaderboard" / "submissions" / "cub200").glob("teen-*.json")
    # the reading commands find it there (published entries still come from the package)
    assert store.default_dir() == tmp_path / "fsbench-leaderboard"
    assert main(["leaderboard", "--dataset", "cub200", "--format", "csv"]) == 0
    assert "reproduced" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in store.PACKAGE_DIR.rglob("*") if p.is_file()} \
        == package
    monkeypatch.chdir(store.PACKAGE_DIR)  # ./fsbench-leaderboard would be inside the package
    assert main(["submit", str(run)]) == 2
    assert "would write into the installed package" in capsys.readouterr().err
    assert not (store.PACKAGE_DIR / "fsbench-leaderboard").exists()

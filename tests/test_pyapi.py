"""The Python API of README "Python API": fsbench.run, fsbench.load_result, fsbench.table."""
from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from test_plugins import write_plugin

import fsbench
from fsbench.errors import UserError


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pyapi")
    path = write_plugin(tmp / "plugin")
    return fsbench.run(f"{path}:Means", "synthetic", out_dir=tmp / "runs",
                       progress=False)["run_dir"]


def test_load_result_and_table_rows(run_dir):
    result = fsbench.load_result(run_dir)
    assert result == json.loads((Path(run_dir) / "result.json").read_text())
    rows = fsbench.table([run_dir, result])
    assert len(rows) == 10 and [r["session"] for r in rows[:5]] == [0, 1, 2, 3, 4]
    assert rows[0] == {"method": "Means", "dataset": "synthetic", "seed": 0,
                       "status": "complete", "run_dir": run_dir, "session": 0, "num_seen": 10,
                       **{k: result["metrics"]["sessions"][0][k]
                          for k in ("acc", "base_acc", "novel_acc", "hm")}}


def test_table_as_frame(run_dir, monkeypatch):
    pd = pytest.importorskip("pandas")
    frame = fsbench.table(run_dir, as_frame=True)
    assert isinstance(frame, pd.DataFrame) and list(frame["num_seen"]) == [10, 15, 20, 25, 30]
    monkeypatch.setitem(sys.modules, "pandas", None)  # pandas not installed
    with pytest.raises(UserError, match="as_frame=True needs pandas: pip install pandas"):
        fsbench.table(run_dir, as_frame=True)


def test_load_result_refuses_a_malformed_file(tmp_path):
    (tmp_path / "result.json").write_text(json.dumps({"method": "x", "dataset": "y"}))
    with pytest.raises(UserError, match="not a valid fsbench result: 'task'"):
        fsbench.load_result(tmp_path)
    with pytest.raises(UserError, match="not found"):
        fsbench.load_result(tmp_path / "nothing")


def test_version_and_a_light_import():
    assert fsbench.__version__ == metadata.version("fsbench")
    code = "import sys, fsbench; fsbench.__version__; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
    with pytest.raises(AttributeError):
        fsbench.no_such_thing  # noqa: B018

"""The command line end to end on glyphs with a small budget."""
import json
import subprocess
import sys

from fsbench.cli import main


def test_list_names_methods_and_datasets(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("ncm", "protonet", "finetune", "glyphs", "synthetic"):
        assert f"  {name} " in out


def test_run_and_show_end_to_end(tmp_path):
    cmd = [sys.executable, "-m", "fsbench.cli", "run", "--method", "ncm", "--dataset", "glyphs",
           "--set", "train.epochs=1", "--set", "train.select=last", "--out", str(tmp_path),
           "--no-progress"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "AVG" in p.stdout and "session" in p.stdout
    run_dir = next(tmp_path.iterdir())
    result = json.loads((run_dir / "result.json").read_text())
    assert result["method"] == "ncm" and result["dataset"] == "glyphs"
    assert len(result["metrics"]["sessions"]) == 9
    assert result["config"]["train"]["epochs"] == 1
    p = subprocess.run([sys.executable, "-m", "fsbench.cli", "show", str(run_dir)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "AVG" in p.stdout


def test_error_without_traceback_and_with_debug(tmp_path):
    base = [sys.executable, "-m", "fsbench.cli"]
    p = subprocess.run(base + ["run", "--method", "nope", "--dataset", "glyphs"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().count("\n") == 0 and "valid methods" in p.stderr
    p = subprocess.run(base + ["--debug", "run", "--method", "nope", "--dataset", "glyphs"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "Traceback" in p.stderr

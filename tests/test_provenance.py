"""result.json says how the run was asked for (command line, --preset, --set, the difference from
the packaged preset) and in what state the code and GPU stack were; submissions accept it."""
import json

import torch

from fsbench import results
from fsbench.cli import main
from fsbench.config import diff_from_preset, resolve
from fsbench.leaderboard import schema
from fsbench.leaderboard.store import result_to_submission


def test_result_records_invocation_and_preset_difference(tmp_path):
    preset = tmp_path / "mine.yaml"
    preset.write_text("train:\n  lr: 0.07\n")
    argv = ["run", "--method", "ncm", "--dataset", "synthetic", "--preset", str(preset),
            "--set", "train.epochs=1", "--seed", "3", "--out", str(tmp_path / "runs"),
            "--no-progress"]
    assert main(argv) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    result = json.loads((run_dir / "result.json").read_text())
    inv = result["invocation"]
    assert inv["command"].startswith("fsbench run --method ncm --dataset synthetic --preset ")
    assert "--set train.epochs=1 --seed 3" in inv["command"]
    assert inv["set"] == ["train.epochs=1"] and inv["preset_file"] == str(preset)
    assert inv["preset_values"] == {"train": {"lr": 0.07}}
    packaged = resolve("ncm", "synthetic")
    assert inv["config_diff"]["train.lr"] == {"preset": packaged["train"]["lr"], "run": 0.07}
    assert inv["config_diff"]["train.epochs"]["run"] == 1
    assert inv["config_diff"]["seed"]["run"] == 3
    assert set(inv["config_diff"]) == {"train.lr", "train.epochs", "seed"}
    env = result["environment"]
    assert env["git_dirty"] in (True, False, None)
    sub = result_to_submission(result, "result.json")
    assert sub["environment"]["git_dirty"] == env["git_dirty"]
    problems = schema.validate_submission(sub, "sub")  # synthetic is not a leaderboard dataset
    assert len(problems) == 1 and "dataset" in problems[0], problems
    results.check_result_shape(result, run_dir / "result.json")
    assert result["data"]["image_size"] == [16, 16]  # the synthetic images as stored (16 px)
    assert result["data"]["resolution_option"] == "default"


def test_packaged_preset_has_no_difference():
    assert diff_from_preset(resolve("teen", "glyphs")) == {}


def test_environment_names_cuda_and_cudnn_on_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Fake GPU")
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 90100)
    env = results.environment("cuda")
    assert env["gpu"] == "Fake GPU" and env["cuda"] == "12.4" and env["cudnn"] == 90100
    assert "cuda" not in results.environment("cpu")


def test_git_dirty_reports_a_modified_tree(monkeypatch):
    monkeypatch.setattr(results, "_git", lambda *a: " M fsbench/api.py\n")
    assert results.git_dirty() is True
    monkeypatch.setattr(results, "_git", lambda *a: "")
    assert results.git_dirty() is False
    monkeypatch.setattr(results, "_git", lambda *a: None)
    assert results.git_dirty() is None

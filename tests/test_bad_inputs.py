"""Malformed and hostile inputs: each is one line on stderr, exit code 2, no traceback, and nothing
written into the (read-only) data root.

The first group is the dataset-pickle code execution: CIFAR-100, the miniImageNet caches and
Ren's tieredImageNet files are pickles that users download from mirrors, so a crafted file must be
refused before it can run anything (fsbench.safepickle)."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

import fabricate
from fsbench import safepickle
from fsbench.cli import main


def _cli(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


def _assert_one_line_error(code: int, err: str) -> None:
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert 1 <= len(lines) <= 3, err
    assert "Traceback" not in err, err


class _Payload:
    """Unpickling this calls ``fn(*args)``: the classic pickle code execution."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _payloads(marker: Path) -> dict:
    code = f"open({str(marker)!r}, 'w').write('pwned')"
    return {
        "os.system": _Payload(os.system, f"touch {marker}"),
        "builtins.exec": _Payload(exec, code),  # builtins is partly allowed; exec must not be
        "builtins.eval": _Payload(eval, code),
        "numpy.load": _Payload(np.save, str(marker), np.zeros(1)),  # numpy is partly allowed too
    }


# (dataset, method, fabricate function, file replaced by the payload, how the payload is nested)
_FORMATS = [
    ("cifar100", "ncm", fabricate.cifar100, "cifar-100-python/train",
     lambda p: {"data": p, "fine_labels": [0], "coarse_labels": [0]}),
    ("miniimagenet", "protonet", fabricate.mini_pickle, "miniimagenet/mini-imagenet-cache-train.pkl",
     lambda p: {"image_data": np.zeros((1, 2, 2, 3), np.uint8), "class_dict": {"n0": [p]}}),
    ("tieredimagenet", "protonet", fabricate.tiered, "tiered-imagenet/train_labels.pkl",
     lambda p: {"label_specific": [p]}),
]


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec", "builtins.eval", "numpy.load"])
@pytest.mark.parametrize("dataset,method,make,target,nest", _FORMATS,
                         ids=[f[0] for f in _FORMATS])
def test_crafted_dataset_pickle_is_refused(tmp_path, capsys, dataset, method, make, target, nest,
                                           kind):
    root = tmp_path / "data"
    make(root)
    marker = tmp_path / "pwned"
    payload = _payloads(marker)[kind]
    (root / target).write_bytes(pickle.dumps(nest(payload), protocol=2 if kind == "os.system"
                                             else 4))
    before = fabricate.snapshot(root)
    fabricate.make_readonly(root)
    try:
        code, err = _cli(capsys, "run", "--method", method, "--dataset", dataset,
                         "--data-root", str(root), "--out", str(tmp_path / "runs"))
    finally:
        fabricate.make_writable(root)
    _assert_one_line_error(code, err)
    assert not marker.exists(), "the payload ran"
    assert not Path(str(marker) + ".npy").exists(), "the payload ran"
    assert target.split("/")[-1] in err and "refused to unpickle" in err, err
    assert fabricate.snapshot(root) == before
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("dataset,make", [("cifar", fabricate.cifar100),
                                          ("mini", fabricate.mini_pickle),
                                          ("tiered", fabricate.tiered)])
def test_real_layouts_still_unpickle(tmp_path, dataset, make):
    """The restricted unpickler reads the genuine structures (NumPy 2 pickles, protocols 2 and 4)."""
    make(tmp_path)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files
    for p in files:
        raw = pickle.loads(p.read_bytes())  # the trusted reference: files we just made
        ours = safepickle.load(p, "fix")
        assert type(ours) is type(raw)
        if isinstance(raw, dict):
            assert ours.keys() == raw.keys()


def test_numpy1_and_python2_pickles_load():
    """CIFAR-100's real files are Python 2 pickles; NumPy 1 wrote ``numpy.core.multiarray``."""
    x = np.arange(12, dtype=np.uint8).reshape(3, 4)
    data = pickle.dumps({b"data": x, "labels": [1, 2, 3]}, protocol=2)
    data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    out = safepickle.loads(data)
    assert np.array_equal(out[b"data"], x) and out["labels"] == [1, 2, 3]


# ------------------------------------------------------------------------- output escaping
HOSTILE = ("<script>alert(1)</script> <img src=x onerror=alert(2)> [click](javascript:alert(3)) "
           "\x1b[31mred\x1b[0m \x1b]0;title\x07")


@pytest.fixture
def hostile_board(tmp_path):
    from fsbench.leaderboard.testing import make_leaderboard, published_entry, submission

    cec = published_entry("cec", "cifar100", [73.0, 68.9, 65.3, 61.2, 58.1, 55.6, 53.2, 51.3, 49.1],
                          backbone="resnet20", pretraining="none", source="src " + HOSTILE,
                          note=HOSTILE)
    sub = submission(method="teen", dataset="cifar100", backbone="resnet20", pretraining="none",
                     accs=[75.0, 72.0, 68.0, 65.5, 62.0, 59.0, 57.0, 55.0, 52.0])
    sub["note"] = HOSTILE
    return make_leaderboard(tmp_path / "lb", [cec], [sub])


def test_markdown_shows_raw_html_and_links_as_text(hostile_board, capsys):
    code = main(["leaderboard", "--dataset", "cifar100", "--format", "md",
                 "--leaderboard-dir", str(hostile_board)])
    out = capsys.readouterr().out
    assert code == 0
    assert "<script>" not in out and "<img" not in out and "](javascript" not in out
    assert "&lt;script&gt;" in out and "\x1b" not in out and "\x07" not in out


def test_text_output_prints_no_terminal_escape_codes(hostile_board, capsys):
    code = main(["leaderboard", "--dataset", "cifar100", "--leaderboard-dir", str(hostile_board)])
    out = capsys.readouterr().out
    assert code == 0
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b[31mred" in out  # shown, not interpreted


# ------------------------------------------------------------------------- paths and display
RUN_SMALL = ["run", "--method", "ncm", "--dataset", "synthetic", "--set", "train.epochs=1",
             "--no-progress"]


def _out_cases(tmp_path: Path) -> dict:
    afile = tmp_path / "afile"
    afile.write_text("x")
    return {"out is a file": afile, "out under a file": afile / "runs",
            "out in /proc": Path("/proc/fsbench-runs"), "name over 255 bytes": tmp_path / ("r" * 300)}


@pytest.mark.parametrize("case", ["out is a file", "out under a file", "out in /proc",
                                  "name over 255 bytes"])
def test_unwritable_out_is_one_line(tmp_path, capsys, case):
    out = _out_cases(tmp_path)[case]
    code, err = _cli(capsys, *RUN_SMALL, "--out", str(out))
    _assert_one_line_error(code, err)
    assert "--out" in err or "cannot write" in err


def test_leaderboard_outputs_that_cannot_be_written(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    result = tmp_path / "result.json"
    from fsbench.leaderboard.testing import fake_result
    result.write_text(__import__("json").dumps(fake_result(dataset="cifar100")))
    for argv in (["submit", str(result), "--leaderboard-dir", str(afile)],
                 ["plot", "--dataset", "cifar100", "--methods", "teen", "--output",
                  str(afile / "x.png")],
                 ["plot", "--dataset", "cifar100", "--methods", "teen", "--output",
                  str(tmp_path / "x.txt")]):
        code, err = _cli(capsys, *argv)
        _assert_one_line_error(code, err)
    assert not (tmp_path / "x.txt").exists()


def _result_variants() -> dict:
    from fsbench.leaderboard.testing import fake_result
    good = fake_result(dataset="cifar100")
    return {
        "top level a list": [good],
        "metrics not a mapping": {**good, "metrics": [1, 2]},
        "sessions wrong shape": {**good, "metrics": {"sessions": [1, 2, 3]}},
        "acc a string": {**good, "metrics": {**good["metrics"], "sessions": [
            {**good["metrics"]["sessions"][0], "acc": "high"}]}},
        "100,000-character method": {**good, "method": "m" * 100_000},
        "300-character dataset": {**good, "dataset": "d" * 300},
        "escape code in method": {**good, "method": "teen\x1b[2J"},
    }


@pytest.mark.parametrize("case", list(_result_variants()))
def test_show_on_malformed_results_is_one_line(tmp_path, capsys, case):
    import json
    path = tmp_path / "result.json"
    path.write_text(json.dumps(_result_variants()[case]))
    code, err = _cli(capsys, "show", str(path))
    _assert_one_line_error(code, err)
    assert len(err) < 500


def test_show_accepts_a_well_formed_result(tmp_path, capsys):
    import json
    from fsbench.leaderboard.testing import fake_result
    path = tmp_path / "result.json"
    path.write_text(json.dumps(fake_result(dataset="cifar100")))
    assert main(["show", str(path)]) == 0
    assert "AVG" in capsys.readouterr().out


def test_resume_with_a_checkpoint_of_another_shape(tmp_path, capsys):
    import torch
    code, err = _cli(capsys, *RUN_SMALL, "--out", str(tmp_path))
    assert code == 0, err
    (run_dir,) = tmp_path.iterdir()
    ckpt = run_dir / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)
    mods = state["learner"]["modules"]
    name = next(iter(mods))
    key = next(k for k, v in mods[name].items() if v.dim() >= 1)
    mods[name][key] = torch.zeros(*[n + 1 for n in mods[name][key].shape])
    torch.save(state, ckpt)
    (run_dir / "result.json").unlink()
    code, err = _cli(capsys, "run", "--resume", str(run_dir), "--no-progress")
    _assert_one_line_error(code, err)
    assert "does not fit" in err and key in err


# ------------------------------------------------------------------------- configuration
CONFIG_CASES = {  # --set value -> a word the one-line error must contain
    "train.epochs=abc": "train.epochs", "train.epochs=[1,2]": "train.epochs",
    "train.epochs=99999999999999999999": "100000", "train.lr=.nan": "finite",
    "train.lr=-0.1": "greater than 0", "train.batch_size=0": "train.batch_size",
    "backbone.hidden=-4": "backbone.hidden", "seed=abc": "seed", "num_workers=-1": "num_workers",
    "num_workers=abc": "num_workers", "eval.batch_size=0": "eval.batch_size",
    "data.options=5": "mapping", "train=5": "mapping",
    "transforms.train=5": "list", "eval=5": "mapping", "train.epochs=-1": "train.epochs",
    "train.epochs=0": "train.epochs", "train.epochs=2.5": "integer",
    "classifier.scale=big": "classifier.scale",
    "train.val_fraction=2": "val_fraction", "trian.epochs=3": "did you mean train",
    "train.epoch=3": "did you mean train.epochs",
}


@pytest.mark.parametrize("setting", list(CONFIG_CASES))
def test_bad_configuration_values(tmp_path, capsys, setting):
    code, err = _cli(capsys, "run", "--method", "ncm", "--dataset", "glyphs", "--set", setting,
                     "--out", str(tmp_path))
    _assert_one_line_error(code, err)
    assert CONFIG_CASES[setting] in err, err
    assert not any(tmp_path.iterdir())  # refused before a run folder was made


@pytest.mark.parametrize("argv,word", [
    (["--seed", "-1"], "--seed"), (["--seed", "99999999999999999999"], "--seed"),
    (["--device", "mps"], "--device"), (["--device", "meta"], "--device"),
    (["--set", "head=nosuch", "--method", "protonet"], "head"),
])
def test_bad_run_flags(tmp_path, capsys, argv, word):
    method = [] if "--method" in argv else ["--method", "ncm"]
    code, err = _cli(capsys, "run", *method, "--dataset", "synthetic", *argv,
                     "--out", str(tmp_path))
    _assert_one_line_error(code, err)
    assert word in err, err


@pytest.mark.parametrize("content,word", [
    (b"\x89PNG\r\n\x1a\n\x00\x00binary", "not a text"),
    (b"train: 5\n", "mapping"),
    (b"train:\n  epochz: 3\n", "did you mean train.epochs"),
    (b"- a\n- b\n", "mapping"),
])
def test_bad_preset_files(tmp_path, capsys, content, word):
    preset = tmp_path / "p.yaml"
    preset.write_bytes(content)
    code, err = _cli(capsys, "run", "--method", "ncm", "--dataset", "glyphs", "--preset",
                     str(preset), "--out", str(tmp_path / "runs"))
    _assert_one_line_error(code, err)
    assert word in err, err


def test_print_config_shows_the_resolved_configuration(capsys):
    import yaml
    assert main(["run", "--method", "teen", "--dataset", "glyphs", "--set", "teen.alpha=0.3",
                 "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["teen"]["alpha"] == 0.3 and cfg["train"]["epochs"] == 6 and cfg["method"] == "teen"

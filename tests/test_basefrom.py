"""``--base-from RUN_DIR`` (fsbench/basemodel.py): a FSCIL run reuses an earlier run's base
model instead of training one; only compatible base models are accepted."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fsbench import api
from fsbench.baselines.ncm import PrototypeFSCIL
from fsbench.cli import main

TINY = {"train.epochs": 1}  # glyphs, one base epoch


def _strip(result):
    return [{k: v for k, v in s.items() if k != "seconds"} for s in result["metrics"]["sessions"]]


@pytest.fixture(scope="module")
def ncm_run(tmp_path_factory):
    return api.run("ncm", "glyphs", overrides=TINY, out_dir=tmp_path_factory.mktemp("ncm"),
                   progress=False)


def test_teen_reuses_the_ncm_base_model_without_training(ncm_run, tmp_path, monkeypatch):
    def no_training(*a, **kw):
        raise AssertionError("base training ran despite --base-from")
    monkeypatch.setattr(PrototypeFSCIL, "fit_base", no_training)
    src = Path(ncm_run["run_dir"])
    # TEEN with alpha 0 is ncm: on ncm's base model it must give ncm's numbers exactly.
    t0 = api.run("teen", "glyphs", overrides={**TINY, "teen.alpha": 0.0}, out_dir=tmp_path,
                 progress=False, base_from=src)
    assert _strip(t0) == _strip(ncm_run)
    assert t0["base_from"] == {"run_dir": str(src.resolve()), "method": "ncm",
                               "sha256": hashlib.sha256((src / "base.pt").read_bytes())
                               .hexdigest()}
    # A calibration sweep on the same base: session 0 is unchanged, later sessions move.
    t = api.run("teen", "glyphs", overrides={**TINY, "teen.alpha": 0.5}, out_dir=tmp_path,
                progress=False, base_from=src)
    assert _strip(t)[0] == _strip(ncm_run)[0] and _strip(t)[1:] != _strip(ncm_run)[1:]
    assert t["metrics"]["sessions"][-1]["acc"] > 5  # 100 classes seen: chance 1%


@pytest.mark.parametrize("argv,needle", [
    (["--method", "teen", "--set", "train.epochs=2"],
     "its base session used train.epochs = 1, this run 2; the base configuration must match "
     "(only teen and run-level keys may differ)"),
    (["--method", "teen", "--set", "train.epochs=1", "--seed", "3"],
     "its seed is 0, this run's 3"),
    (["--method", "mamba_fscil", "--set", "train.epochs=1"],
     "its base model (learner family) is 'decoupled-cosine', this run's "
     "'fsbench.incremental.mamba_fscil.learner.MambaFSCIL'"),
    (["--method", "protonet"], "--base-from reuses an FSCIL base session; this method is FSL"),
])
def test_an_incompatible_base_is_refused_in_one_line(ncm_run, tmp_path, capsys, argv, needle):
    rc = main(["run", "--dataset", "glyphs", "--no-progress", "--base-from", ncm_run["run_dir"],
               "--out", str(tmp_path)] + argv)
    err = capsys.readouterr().err
    assert rc == 2 and needle in err, err
    assert err.count("\n") == 1 and not any(tmp_path.iterdir())


def test_a_folder_without_a_base_model_is_refused(tmp_path, capsys):
    rc = main(["run", "--method", "teen", "--dataset", "glyphs", "--base-from", str(tmp_path),
               "--out", str(tmp_path / "runs")])
    assert rc == 2 and "no base.pt there" in capsys.readouterr().err

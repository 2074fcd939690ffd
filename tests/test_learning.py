"""Learning tests on the embedded `glyphs` dataset: accuracy above chance by a stated margin."""
import pytest

from fsbench import api


@pytest.fixture(scope="module")
def ncm_glyphs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ncm")
    return api.run("ncm", "glyphs", overrides={"train.epochs": 4}, out_dir=out, progress=False)


def test_protonet_glyphs_5way_5shot_above_60(tmp_path):
    # Chance is 20%; a briefly trained Conv4 must reach at least 60% (a 40-point margin).
    r = api.run("protonet", "glyphs",
                overrides={"train.episodes": 150, "eval.episodes": 300, "eval.shots": [5]},
                out_dir=tmp_path, progress=False)
    five = r["metrics"]["shots"]["5"]
    assert five["n_episodes"] == 300
    assert five["mean"] >= 60.0, five["mean"]


def test_ncm_glyphs_fscil_sessions(ncm_glyphs):
    s = ncm_glyphs["metrics"]["sessions"]
    accs = [x["acc"] for x in s]
    assert len(s) == 9 and [x["num_seen"] for x in s] == [60 + 5 * t for t in range(9)]
    # Base session: 60 classes, chance 1.7%; require 50 points above chance.
    assert accs[0] >= 51.7, accs
    # More classes make the problem harder: the last session is below the base session,
    # yet far from zero (chance at 100 classes is 1%).
    assert accs[-1] < accs[0] and min(accs) >= 20.0, accs
    assert all(x["novel_acc"] >= 10.0 for x in s[1:]), [x["novel_acc"] for x in s]
    assert ncm_glyphs["split"]["generated"] is False


def test_real_glyphs_round_trip_submit_leaderboard_regress(ncm_glyphs, tmp_path, capsys):
    """A real run -> fsbench submit -> fsbench leaderboard -> fsbench regress, in a copy of the
    packaged leaderboard folder (the repository's folder is never touched)."""
    import shutil
    from pathlib import Path

    import fsbench.leaderboard as lbpkg
    from fsbench.cli import main

    lb = tmp_path / "lb"
    shutil.copytree(Path(lbpkg.__file__).parent / "published", lb / "published")
    assert main(["submit", ncm_glyphs["run_dir"], "--leaderboard-dir", str(lb)]) == 0
    (sub,) = (lb / "submissions" / "glyphs").glob("ncm-*.json")
    capsys.readouterr()
    assert main(["leaderboard", "--dataset", "glyphs", "--format", "csv",
                 "--leaderboard-dir", str(lb)]) == 0
    csv = capsys.readouterr().out
    row = next(r for r in csv.splitlines() if ",reproduced,ncm," in r)
    last = float(row.split(",")[9 + 8])  # session_8
    assert abs(last - ncm_glyphs["metrics"]["sessions"][-1]["acc"]) < 0.01
    assert main(["regress", "--leaderboard-dir", str(lb)]) == 0
    assert sub.is_file()

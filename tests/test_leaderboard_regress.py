"""fsbench regress: reproductions vs published rows, and --embedded re-runs vs expected/glyphs.json
(with a fake runner injected in place of fsbench.api.run)."""
from __future__ import annotations

import json
import sys
import types

import pytest

from fsbench.cli import main
from fsbench.leaderboard import regress, schema, store
from fsbench.leaderboard.testing import (fsl_published_entry, make_leaderboard, published_entry,
                                         snapshot, submission)

PUB = [80.0 - 2.0 * i for i in range(11)]


def lb_with(tmp_path, ours, pub_extra=None, **sub_kwargs):
    sub_extra = sub_kwargs.pop("extra", {})
    sub = submission(accs=ours, **sub_kwargs)
    sub.update(sub_extra)
    pub = published_entry("teen", "cub200", PUB, **(pub_extra or {}))
    return make_leaderboard(tmp_path / "lb", [pub], [sub])


def run(root, *extra):
    return main(["regress", "--leaderboard-dir", str(root), *extra])


def test_no_drift_passes_and_planted_drift_fails(tmp_path, capsys):
    ours = [p + 0.9 for p in PUB]
    assert run(lb_with(tmp_path, ours)) == 0
    assert "1 reproduction(s) compared" in capsys.readouterr().out
    ours[4] = PUB[4] + 1.2
    ours[9] = PUB[9] - 3.0
    root = lb_with(tmp_path / "b", ours)
    assert run(root) == 1
    out = capsys.readouterr().out
    assert "FAILED: 2 cell(s) drift beyond tolerance" in out
    lines = [ln for ln in out.splitlines() if "submissions/cub200/teen-" in ln]
    assert any("session 4" in ln and "+1.20" in ln for ln in lines)
    assert any("session 9" in ln and "-3.00" in ln for ln in lines)
    assert run(root, "--tolerance", "3.5") == 0


def test_one_sided_tolerance_on_the_submission(tmp_path, capsys):
    ours = [p + 3.0 for p in PUB]  # far above: allowed when only "below" is bounded
    assert run(lb_with(tmp_path, ours, extra={"tolerance": {"below": 0.5}})) == 0
    ours = [p - 0.6 for p in PUB]
    assert run(lb_with(tmp_path / "b", ours, extra={"tolerance": {"below": 0.5}})) == 1
    assert "-0.5 (one-sided)" in capsys.readouterr().out


def test_tolerance_on_the_published_entry(tmp_path):
    ours = [p - 1.8 for p in PUB]
    assert run(lb_with(tmp_path, ours, pub_extra={"tolerance": 2.0})) == 0
    assert run(lb_with(tmp_path / "b", ours, pub_extra={"tolerance": 1.5})) == 1
    # the submission's own tolerance wins over the published entry's
    assert run(lb_with(tmp_path / "c", ours, pub_extra={"tolerance": 1.5},
                       extra={"tolerance": 2.0})) == 0


@pytest.mark.parametrize("kwargs,reason", [
    ({"split_id": "generated"}, "its split is generated"),
    ({"selected_on_test": True}, "it selected on the test set"),
    ({"nonstandard_backbone": True}, "it uses a non-standard backbone"),
])
def test_excluded_reproductions_are_never_compared(tmp_path, capsys, kwargs, reason):
    ours = [p - 20 for p in PUB]
    assert run(lb_with(tmp_path, ours, **kwargs)) == 0
    out = capsys.readouterr().out
    assert reason in out and "never compared with published numbers" in out
    assert "0 reproduction(s) compared" in out


def test_unresolved_published_cells_are_skipped(tmp_path, capsys):
    pub_sessions = [None] + PUB[1:]
    ours = [10.0] + [p + 0.1 for p in PUB[1:]]
    cells = {"sessions[0]": {"status": "unresolved", "note": "sources disagree"}}
    sub = submission(accs=ours)
    root = make_leaderboard(tmp_path / "lb", [published_entry("teen", "cub200", pub_sessions,
                                                              cells=cells)], [sub])
    assert run(root) == 0
    assert "has no agreed value for session 0" in capsys.readouterr().out


def test_matching_prefers_the_same_backbone_and_reproduces_field(tmp_path, capsys):
    a = published_entry("teen", "cub200", PUB, backbone="resnet18")
    b = published_entry("teen", "cub200", [p - 10 for p in PUB], backbone="vit-b16",
                        id="teen/cub200/fscil/vit")
    root = make_leaderboard(tmp_path / "lb", [a, b], [submission(accs=PUB)])
    assert run(root) == 0
    sub = submission(accs=[p - 10 for p in PUB])
    sub["reproduces"] = "teen/cub200/fscil/vit"
    root = make_leaderboard(tmp_path / "lb2", [a, b], [sub])
    assert run(root) == 0
    sub["reproduces"] = "teen/cub200/fscil/none"
    root = make_leaderboard(tmp_path / "lb3", [a, b], [sub])
    assert run(root) == 2
    assert "reproduces: 'teen/cub200/fscil/none' names no published entry" in \
        capsys.readouterr().err


def test_fsl_regression_per_shot(tmp_path, capsys):
    pub = fsl_published_entry("protonet", "miniimagenet",
                              shots={"1": (60.0, 0.5), "5": (78.0, 0.4)})
    ok = submission(task="fsl", method="protonet", dataset="miniimagenet",
                    shots={"1": (60.5, 0.4), "5": (77.2, 0.3)})
    assert run(make_leaderboard(tmp_path / "a", [pub], [ok])) == 0
    bad = submission(task="fsl", method="protonet", dataset="miniimagenet",
                     shots={"1": (60.5, 0.4), "5": (76.0, 0.3)})
    assert run(make_leaderboard(tmp_path / "b", [pub], [bad])) == 1
    assert "5-shot" in capsys.readouterr().out


def test_invalid_submission_in_the_folder_fails_with_every_problem(tmp_path, capsys):
    root = lb_with(tmp_path, PUB)
    bad = tmp_path / "lb" / "submissions" / "cub200" / "teen-bad.json"
    bad.write_text('{"schema_version": 1, "method": "teen", "method": "x"}')
    before = snapshot(root)
    assert run(root) == 2
    err = capsys.readouterr().err
    assert "submissions/cub200/teen-bad.json: duplicate key \"method\"" in err
    assert snapshot(root) == before


def test_repository_leaderboard_passes():
    lb = store.load()
    assert len(lb.published) >= 100
    assert regress.regress_published(lb, out=lambda s: None) == 0


# ----------------------------------------------------------------- embedded

def fake_runner(shift=0.0, calls=None, fail=()):
    def runner(*, method, dataset, overrides, seed, out_dir):
        if calls is not None:
            calls.append((method, dataset, dict(overrides), seed))
        if method in fail:
            raise RuntimeError(f"{method} needs CLIP weights")
        if method == "protonet":
            return {"task": "fsl", "status": "complete", "config_hash": "ab" * 32,
                    "metrics": {"shots": {"1": {"mean": 90.0 + shift, "ci95": 0.5},
                                          "5": {"mean": 97.0, "ci95": 0.2}}}}
        accs = [97.0 - i - (shift if i == 5 else 0) for i in range(9)]
        return {"task": "fscil", "status": "complete", "config_hash": "ab" * 32,
                "finished": "2026-01-01T00:00:00+00:00",
                "environment": {"torch": "2.4", "device": "cpu", "extra": "dropped"},
                "metrics": {"sessions": [{"session": i, "acc": a} for i, a in enumerate(accs)],
                            "avg": sum(accs) / 9, "pd": accs[0] - accs[-1]}}
    return runner


@pytest.fixture
def expected(tmp_path):
    path = tmp_path / "lb" / "expected" / "glyphs.json"
    path.parent.mkdir(parents=True)
    doc = regress.empty_expected()
    doc["default_overrides"] = {"train.epochs": 1}
    path.write_text(json.dumps(doc))
    return path


def test_update_then_regress_embedded(expected, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(regress, "default_runner", fake_runner(calls=calls))
    monkeypatch.setattr(regress, "_registered_methods",
                        lambda: [("ncm", "fscil"), ("teen", "fscil"), ("protonet", "fsl")])
    root = str(expected.parent.parent)
    assert main(["regress", "--embedded", "--update", "--leaderboard-dir", root]) == 0
    doc = regress.load_expected(expected)
    assert [e["method"] for e in doc["entries"]] == ["ncm", "teen", "protonet"]
    assert doc["entries"][0]["metrics"]["sessions"][0] == 97.0
    assert doc["entries"][2]["metrics"] == {"shots": {"1": 90.0, "5": 97.0}}
    assert "extra" not in doc["entries"][0]["environment"]
    assert calls[0] == ("ncm", "glyphs", {"train.epochs": 1}, 0)
    capsys.readouterr()

    assert main(["regress", "--embedded", "--leaderboard-dir", root]) == 0
    assert "OK: 3 re-run(s) within tolerance" in capsys.readouterr().out

    monkeypatch.setattr(regress, "default_runner", fake_runner(shift=1.5))
    assert main(["regress", "--embedded", "--leaderboard-dir", root]) == 1
    out = capsys.readouterr().out
    assert "FAILED: 3 cell(s) drift" in out  # session 5 of ncm and teen, 1-shot of protonet
    assert "session 5" in out and "1-shot" in out and REGEN in out
    assert main(["regress", "--embedded", "--methods", "protonet", "--leaderboard-dir",
                 root]) == 1


REGEN = "fsbench regress --embedded --update"


def test_entry_tolerance_and_overrides(expected, monkeypatch, capsys):
    doc = regress.load_expected(expected)
    doc["entries"] = [{"method": "teen", "task": "fscil", "seed": 3,
                       "overrides": {"train.epochs": 2, "eval.batch": 8},
                       "tolerance": {"above": 0.1},
                       "metrics": {"sessions": [97.0 - i for i in range(9)]}}]
    expected.write_text(json.dumps(doc))
    calls = []
    monkeypatch.setattr(regress, "default_runner", fake_runner(shift=5.0, calls=calls))
    # rerun 5 points lower in session 5: only "above" is bounded, so it passes
    assert main(["regress", "--embedded", "--expected", str(expected)]) == 0
    assert calls == [("teen", "glyphs", {"train.epochs": 2, "eval.batch": 8}, 3)]


def test_update_keeps_going_when_a_method_fails(expected, monkeypatch, capsys):
    monkeypatch.setattr(regress, "default_runner", fake_runner(fail=("cpe_clip",)))
    monkeypatch.setattr(regress, "_registered_methods",
                        lambda: [("cpe_clip", "fscil"), ("teen", "fscil")])
    assert main(["regress", "--embedded", "--update", "--expected", str(expected)]) == 1
    assert "cpe_clip: could not run (cpe_clip needs CLIP weights)" in capsys.readouterr().out
    assert [e["method"] for e in regress.load_expected(expected)["entries"]] == ["teen"]


def test_empty_expected_file_says_how_to_generate(expected, capsys):
    assert main(["regress", "--embedded", "--expected", str(expected)]) == 0
    assert REGEN in capsys.readouterr().out


def test_default_runner_calls_fsbench_api_run(monkeypatch):
    seen = {}

    def fake_run(method, dataset, *, overrides=None, seed=None, out_dir="runs", progress=True,
                 loggers=None):
        seen.update(method=method, dataset=dataset, overrides=overrides, seed=seed,
                    progress=progress, loggers=loggers)
        return {"task": "fscil", "status": "complete", "metrics": {"sessions": []}}

    monkeypatch.setitem(sys.modules, "fsbench.api", types.SimpleNamespace(run=fake_run))
    regress.default_runner(method="teen", dataset="glyphs", overrides={}, seed=1, out_dir="x")
    assert seen == {"method": "teen", "dataset": "glyphs", "overrides": {}, "seed": 1,
                    "progress": False, "loggers": []}


def test_invalid_expected_file(expected, capsys):
    expected.write_text(json.dumps({**regress.empty_expected(), "tolerance": -1}))
    assert main(["regress", "--embedded", "--expected", str(expected)]) == 2
    assert "expected/glyphs.json: tolerance: -1 outside [0, 100]" in capsys.readouterr().err


def test_repository_expected_file_is_valid():
    path = store.PACKAGE_DIR / "expected" / "glyphs.json"
    doc = regress.load_expected(path)
    assert doc["dataset"] == "glyphs" and doc["regenerate"] == REGEN
    assert schema.validate_expected_file(doc, "x") == []

"""Submission validation: every rule has a submission that breaks it."""
from __future__ import annotations

import copy
import json

import pytest

from fsbench.cli import main
from fsbench.leaderboard import schema, store
from fsbench.leaderboard.schema import ValidationError
from fsbench.leaderboard.testing import fake_result, snapshot, submission


def problems(sub, label="submission x.json"):
    return schema.validate_submission(sub, label)


def one_problem(sub, needle):
    errs = problems(sub)
    assert errs, "expected a problem"
    assert any(needle in e for e in errs), errs
    assert all("\n" not in e for e in errs)
    return errs


def test_valid_submissions_pass():
    assert problems(submission()) == []
    assert problems(submission(dataset="cifar100", backbone="resnet20", pretraining="none")) == []
    assert problems(submission(task="fsl", dataset="miniimagenet")) == []
    assert problems(submission(split_id="generated")) == []
    # registered method names with underscores (cpe_clip, mamba_fscil, dvla_rl) are valid slugs
    assert problems(submission(method="mamba_fscil")) == []
    assert problems(submission(task="fsl", dataset="miniimagenet", method="dvla_rl")) == []


def test_accuracy_outside_range_names_the_field():
    sub = submission()
    sub["metrics"]["sessions"][3]["acc"] = 101.2
    errs = problems(sub)
    assert "submission x.json: metrics.sessions[3].acc: 101.2 outside [0, 100]" in errs
    sub = submission()
    sub["metrics"]["sessions"][0]["novel_acc"] = -1
    one_problem(sub, "metrics.sessions[0].novel_acc: -1 outside [0, 100]")
    sub = submission()
    sub["metrics"]["avg"] = 100.5
    one_problem(sub, "metrics.avg: 100.5 outside [0, 100]")


def test_fsl_mean_outside_range_and_negative_ci():
    sub = submission(task="fsl", dataset="miniimagenet")
    sub["metrics"]["shots"]["1"]["mean"] = 140
    sub["metrics"]["shots"]["5"]["ci95"] = -0.2
    errs = problems(sub)
    assert "submission x.json: metrics.shots.1.mean: 140 outside [0, 100]" in errs
    assert "submission x.json: metrics.shots.5.ci95: -0.2 outside [0, 100]" in errs


@pytest.mark.parametrize("dataset,n", [("cifar100", 9), ("miniimagenet", 9), ("glyphs", 9),
                                       ("cub200", 11)])
def test_number_of_sessions_must_match_protocol(dataset, n):
    assert problems(submission(dataset=dataset)) == []
    accs = [70.0 - i for i in range(n - 1)]
    sub = submission(dataset=dataset, accs=accs)
    one_problem(sub, f"metrics.sessions: {n - 1} sessions, the {dataset} protocol has {n}")


def test_avg_must_be_the_mean_and_pd_first_minus_last():
    sub = submission()
    sub["metrics"]["avg"] = round(sub["metrics"]["avg"] + 0.02, 4)
    one_problem(sub, "metrics.avg:")
    sub = submission()
    sub["metrics"]["avg"] = round(sub["metrics"]["avg"] + 0.009, 4)  # within 0.01
    assert problems(sub) == []
    sub = submission()
    sub["metrics"]["pd"] = sub["metrics"]["pd"] + 0.5
    one_problem(sub, "metrics.pd:")
    sub = submission()
    sub["metrics"]["last"] = 12.0
    one_problem(sub, "metrics.last:")


def test_unknown_fields_are_rejected_at_every_level():
    sub = submission()
    sub["score"] = 1
    one_problem(sub, "submission x.json: score: unknown field")
    sub = submission()
    sub["metrics"]["sessions"][2]["bonus"] = 3
    one_problem(sub, "metrics.sessions[2].bonus: unknown field")
    sub = submission()
    sub["flags"]["cherry_picked"] = True
    one_problem(sub, "flags.cherry_picked: unknown field")


def test_missing_required_fields_and_wrong_types():
    sub = submission()
    del sub["backbone"], sub["seeds"]
    errs = problems(sub)
    assert "submission x.json: backbone: missing (required)" in errs
    assert "submission x.json: seeds: missing (required)" in errs
    sub = submission()
    sub["metrics"]["sessions"][1]["acc"] = "77.3"
    one_problem(sub, "metrics.sessions[1].acc: must be a number, got a string")
    sub = submission()
    sub["metrics"]["sessions"][1]["acc"] = True
    one_problem(sub, "metrics.sessions[1].acc: must be a number, got a boolean")
    sub = submission()
    sub["seeds"] = []
    one_problem(sub, "seeds: has 0 items")
    sub = submission()
    sub["seeds"] = [1, 1]
    one_problem(sub, "seeds: repeats a value")


def test_schema_version_must_be_supported():
    sub = submission()
    sub["schema_version"] = 2
    one_problem(sub, "schema_version: 2 is not supported")
    sub = submission()
    sub["schema_version"] = "1"
    one_problem(sub, "schema_version:")


def test_protocol_and_dataset_identity():
    sub = submission()
    sub["protocol"]["num_base"] = 60
    one_problem(sub, "protocol.num_base: 60 differs from the standard cub200 protocol")
    sub = submission()
    sub["dataset"] = "imagenet"
    one_problem(sub, 'dataset: "imagenet" has no standard FSCIL protocol')
    sub = submission(task="fsl", dataset="miniimagenet")
    sub["protocol"]["name"] = "fiveway"
    one_problem(sub, "protocol.name:")
    sub = submission(task="fsl", dataset="miniimagenet")
    sub["protocol"]["way"] = 10
    one_problem(sub, "protocol.way: 10 does not match protocol name")
    sub = submission(task="fsl", dataset="mini-imagenet")
    one_problem(sub, "is not a known FSL dataset")
    sub = submission(task="fsl", dataset="miniimagenet")
    sub["protocol"]["shots"] = [1, 5, 10]
    one_problem(sub, "metrics.shots: reports shots [1, 5] but protocol.shots is [1, 5, 10]")


def test_session_order_and_classes_seen():
    sub = submission()
    sub["metrics"]["sessions"][4]["session"] = 7
    one_problem(sub, "metrics.sessions[4].session: 7 out of order")
    sub = submission()
    sub["metrics"]["sessions"][2]["num_seen"] = 99
    one_problem(sub, "metrics.sessions[2].num_seen: 99 but session 2 of the protocol has 120")


def test_split_and_flags_must_agree():
    sub = submission()
    sub["split"]["id"] = "generated"
    one_problem(sub, "split.generated: must be true when split.id is 'generated'")
    sub = submission()
    sub["flags"]["generated_split"] = True
    one_problem(sub, "flags.generated_split: true contradicts split.generated (false)")
    sub = submission()
    sub["split"]["id"] = "../../etc"
    assert problems(sub) == [] or True  # a split id is text; path characters do no harm
    sub["split"]["id"] = "has space"
    one_problem(sub, "split.id:")


def test_run_submissions_need_environment_and_config_hash():
    sub = submission()
    sub["environment"] = None
    sub["config_hash"] = None
    errs = problems(sub)
    assert "submission x.json: environment: required for a submission made from an fsbench run" \
        in errs
    assert any(e.startswith("submission x.json: config_hash: required") for e in errs)
    sub = submission()
    sub["config_hash"] = "xyz"
    one_problem(sub, "config_hash:")
    sub = submission()
    sub["environment"]["nested"] = {"a": 1}
    one_problem(sub, "environment.nested: must be a string, number, boolean or null")


def test_hand_written_submission_of_an_unimplemented_method_is_valid():
    sub = submission(method="lark")
    sub["source"] = {"type": "manual", "reference": "Table 2 of the Lark paper"}
    del sub["environment"], sub["config_hash"]
    assert problems(sub) == []


def test_method_names_cannot_escape_the_folder():
    for bad in ("../evil", "Teen", "a/b", "", "x" * 65):
        sub = submission()
        sub["method"] = bad
        one_problem(sub, "method:")


def test_tolerance_one_or_two_sided():
    for ok in (0.5, {"below": 1.0}, {"above": 2.0}, {"below": 1, "above": None}):
        sub = submission()
        sub["tolerance"] = ok
        assert problems(sub) == [], ok
    for bad, needle in ((-1, "outside [0, 100]"), ({}, "gives no bound"),
                        ({"below": None, "above": None}, "gives no bound"),
                        ({"lower": 1}, "tolerance.lower: unknown field")):
        sub = submission()
        sub["tolerance"] = bad
        one_problem(sub, needle)


def test_all_problems_are_reported_one_line_each():
    sub = submission()
    sub["metrics"]["sessions"][0]["acc"] = 150
    sub["metrics"]["sessions"][5]["acc"] = -3
    sub["extra"] = 1
    sub["backbone"] = ""
    errs = problems(sub)
    assert len(errs) >= 4
    assert all(e.startswith("submission x.json: ") and "\n" not in e for e in errs)


# ----------------------------------------------------------------- strict JSON

def test_nan_and_infinity_tokens_are_rejected():
    text = json.dumps(submission())
    for token in ("NaN", "Infinity", "-Infinity"):
        bad = text.replace('"avg": ', f'"avg": {token}, "x": ', 1)
        with pytest.raises(ValidationError) as ei:
            schema.loads(bad, "submission x.json")
        assert ei.value.problems == [f"submission x.json: {token} is not plain JSON "
                                     f"(use a number or null)"]
    with pytest.raises(ValidationError) as ei:
        schema.loads('{"a": 1e400}', "x")
    assert ei.value.problems == ["x: number 1e400 is out of range"]


def test_duplicate_keys_are_rejected():
    with pytest.raises(ValidationError) as ei:
        schema.loads('{"method": "teen", "method": "cec"}', "submission x.json")
    assert ei.value.problems == ['submission x.json: duplicate key "method"']


def test_files_over_one_megabyte_are_rejected(tmp_path):
    sub = submission()
    sub["note"] = "x"
    text = json.dumps(sub)
    big = text[:-1] + ', "pad": "' + "y" * schema.MAX_BYTES + '"}'
    path = tmp_path / "big.json"
    path.write_text(big)
    with pytest.raises(ValidationError) as ei:
        schema.load_json(path, "submission big.json")
    assert "over the limit of 1,000,000 bytes" in ei.value.problems[0]


@pytest.mark.parametrize("data,needle", [
    (b"[1, 2]", "the top level must be a JSON object"),
    (b'{"a": 1,}', "not valid JSON"),
    (b"{'a': 1}", "not valid JSON"),
    (b'\xff\xfe{"a": 1}', "not UTF-8"),
    (b'{"a": 1} trailing', "not valid JSON"),
    (b"\x80\x04\x95pickle", "not UTF-8"),
    (b"", "not valid JSON"),
])
def test_anything_but_plain_json_is_rejected(data, needle):
    with pytest.raises(ValidationError) as ei:
        schema.loads(data, "submission x.json")
    assert len(ei.value.problems) == 1 and needle in ei.value.problems[0]


def test_not_a_regular_file(tmp_path):
    with pytest.raises(ValidationError) as ei:
        schema.load_json(tmp_path, "dir")
    assert ei.value.problems == ["dir: not a regular file"]
    with pytest.raises(ValidationError):
        schema.load_json(tmp_path / "missing.json", "missing")


# ----------------------------------------------------------------- through the CLI

def test_cli_prints_every_problem_one_per_line_and_exits_2(tmp_path, monkeypatch, capsys):
    lb = tmp_path / "lb"
    lb.mkdir()
    (lb / "submissions").mkdir()
    before = snapshot(lb)
    sub = submission()
    sub["metrics"]["sessions"][3]["acc"] = 101.2
    sub["unknown"] = True
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.json").write_text(json.dumps(sub))
    rc = main(["submit", "x.json", "--leaderboard-dir", str(lb)])
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert "submission x.json: metrics.sessions[3].acc: 101.2 outside [0, 100]" in lines
    assert any(ln.startswith("submission x.json: unknown: unknown field") for ln in lines)
    assert lines[-1].startswith("fsbench: error: ")
    assert "Traceback" not in err
    assert snapshot(lb) == before


def test_cli_rejects_nan_result_and_partial_run(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    res = fake_result()
    text = json.dumps(res).replace('"avg": ', '"avg": NaN, "x": ', 1)
    (run / "result.json").write_text(text)
    lb = tmp_path / "lb"
    assert main(["submit", str(run), "--leaderboard-dir", str(lb)]) == 2
    assert "NaN is not plain JSON" in capsys.readouterr().err
    res["status"] = "partial"
    (run / "result.json").write_text(json.dumps(res))
    assert main(["submit", str(run), "--leaderboard-dir", str(lb)]) == 2
    assert "only complete runs can be submitted" in capsys.readouterr().err
    assert not lb.exists()


def test_result_conversion_keeps_identity():
    res = fake_result(dataset="cub200", seed=3)
    sub = store.result_to_submission(copy.deepcopy(res), "r")
    assert sub["seeds"] == [3]
    assert sub["protocol"] == {"name": "cub200", "num_base": 100, "way": 10, "shot": 5,
                               "num_sessions": 11}
    assert sub["split"] == {"id": res["split"]["id"], "generated": False}
    assert sub["config_hash"] == res["config_hash"]
    fsl = store.result_to_submission(fake_result(task="fsl", dataset="cifarfs"), "r")
    assert "per_episode" not in json.dumps(fsl) and schema.validate_submission(fsl, "r") == []

"""Runners on the tiny in-memory ``synthetic`` dataset: metrics, results, resume, bad input."""
import json
from pathlib import Path

import numpy as np
import pytest

from fsbench import api
from fsbench.cli import main
from fsbench.metrics import mean_ci95, session_metrics, summarize_sessions

FAST = {"train.epochs": 2}


def test_session_metrics_definitions():
    target = np.array([0, 0, 1, 1, 5, 5, 6, 6])
    pred = np.array([0, 1, 1, 1, 5, 0, 6, 6])
    m = session_metrics(pred, target, num_base=5, session=1, num_seen=10)
    assert m["acc"] == pytest.approx(75.0)
    assert m["base_acc"] == pytest.approx(75.0) and m["novel_acc"] == pytest.approx(75.0)
    assert m["hm"] == pytest.approx(75.0)
    s = summarize_sessions([{"acc": 90.0}, {"acc": 80.0}, {"acc": 70.0}])
    assert s["avg"] == pytest.approx(80.0) and s["pd"] == pytest.approx(20.0)
    mean, ci = mean_ci95([50.0, 100.0, 50.0, 100.0])
    assert mean == 75.0 and ci == pytest.approx(1.96 * 25.0 / 2)


def test_fscil_runner_writes_self_describing_result(tmp_path):
    r = api.run("ncm", "synthetic", overrides=FAST, out_dir=tmp_path, progress=False)
    m = r["metrics"]
    assert [s["num_seen"] for s in m["sessions"]] == [10, 15, 20, 25, 30]
    assert m["sessions"][0]["novel_acc"] is None
    assert all(s["novel_acc"] is not None for s in m["sessions"][1:])
    accs = [s["acc"] for s in m["sessions"]]
    assert m["avg"] == pytest.approx(np.mean(accs)) and m["pd"] == pytest.approx(accs[0] - accs[-1])
    assert accs[0] > 60  # 10-way base session, chance 10%
    on_disk = json.loads((tmp_path.glob("*-ncm-synthetic").__next__() / "result.json").read_text())
    assert on_disk["metrics"] == json.loads(json.dumps(m))
    assert on_disk["schema"] == "fsbench.result/1" and on_disk["split"]["generated"] is True
    assert on_disk["config"]["train"]["epochs"] == 2 and on_disk["environment"]["torch"]
    assert on_disk["flags"]["generated_split"] is True


def test_resume_gives_identical_numbers(tmp_path):
    full = api.run("ncm", "synthetic", overrides=FAST, out_dir=tmp_path / "a", progress=False)
    part = api.run("ncm", "synthetic", overrides=FAST, out_dir=tmp_path / "b", progress=False,
                   stop_after=3)  # interrupted after session 3
    assert part["status"] == "partial" and len(part["metrics"]["sessions"]) == 4
    resumed = api.run(None, None, resume=part["run_dir"], progress=False)
    assert resumed["status"] == "complete"
    strip = lambda m: [{k: v for k, v in s.items() if k != "seconds"} for s in m["sessions"]]  # noqa: E731
    assert strip(resumed["metrics"]) == strip(full["metrics"])
    assert resumed["metrics"]["avg"] == full["metrics"]["avg"]


def test_finetune_runs_and_forgets(tmp_path):
    r = api.run("finetune", "synthetic", overrides={**FAST, "finetune.epochs": 5},
                out_dir=tmp_path, progress=False)
    s = r["metrics"]["sessions"]
    assert len(s) == 5 and s[-1]["base_acc"] < s[0]["base_acc"]
    assert [len(h["epochs"]) for h in r["history"][1:]] == [5] * 4  # fine-tuning curves kept


def test_fsl_runner_fixed_episodes(tmp_path):
    a = api.run("protonet", "synthetic", overrides={"train.episodes": 5}, out_dir=tmp_path / "a",
                progress=False)
    shots = a["metrics"]["shots"]
    assert set(shots) == {"1", "5"} and shots["1"]["n_episodes"] == 100
    assert shots["5"]["mean"] > shots["1"]["mean"] > 20  # chance 20%
    assert len(shots["5"]["per_episode"]) == 100
    (h,) = a["history"]  # 5 episodes: one block
    assert h["stage"] == "episodes" and h["epochs"][0]["episodes"] == 5 and h["select"] == "last"
    # Reusing the manifest evaluates on identical episodes: same per-episode accuracies.
    manifest = next((tmp_path / "a").glob("*/episodes.npz"))
    b = api.run("protonet", "synthetic", overrides={"train.episodes": 5,
                "eval.manifest": str(manifest)}, out_dir=tmp_path / "b", progress=False)
    assert b["metrics"]["shots"]["5"]["per_episode"] == shots["5"]["per_episode"]


@pytest.mark.parametrize("argv,needle", [
    (["run", "--method", "nope", "--dataset", "synthetic"], "unknown method 'nope'; valid"),
    (["run", "--method", "ncm", "--dataset", "nope"], "unknown dataset 'nope'; valid"),
    (["run", "--method", "ncm", "--dataset", "synthetic", "--set", "train.epoch=1"],
     "unknown key 'epoch'"),
    (["run", "--method", "protonet", "--dataset", "synthetic", "--set", "eval.way=50"],
     "N-way larger than the classes available"),
    (["run", "--method", "protonet", "--dataset", "synthetic", "--set", "eval.query=40"],
     "lower shot/query"),
    (["run", "--resume", "/nonexistent/run"], "no run.json"),
    (["show", "/nonexistent/run"], "not found"),
])
def test_bad_input_one_line_exit_2(tmp_path, capsys, argv, needle):
    rc = main(argv + (["--out", str(tmp_path)] if argv[0] == "run" else []))
    err = capsys.readouterr().err
    assert rc == 2
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_corrupt_checkpoint_is_one_line(tmp_path, capsys):
    part = api.run("ncm", "synthetic", overrides=FAST, out_dir=tmp_path, progress=False,
                   stop_after=1)
    ckpt = tmp_path / part["run_dir"].split("/")[-1] / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    assert main(["run", "--resume", part["run_dir"]]) == 2
    assert "checkpoint" in capsys.readouterr().err


def test_resume_logs_each_session_once_and_sums_process_times(tmp_path):
    """A checkpoint write killed after session 4 was logged: metrics.jsonl then holds a record
    that the resumed process writes again. The resume drops it; total_s covers both processes."""
    part = api.run("ncm", "synthetic", overrides=FAST, out_dir=tmp_path, progress=False,
                   stop_after=3)
    run_dir = Path(part["run_dir"])
    log = run_dir / "metrics.jsonl"
    recs = [json.loads(x) for x in log.read_text().splitlines()]
    stale = {**recs[-1], "session": 4, "acc": -1.0}
    log.write_text(log.read_text() + json.dumps(stale) + "\n" + '{"kind": "sess')  # + torn line
    resumed = api.run(None, None, resume=part["run_dir"], progress=False)
    sessions = [r["session"] for r in map(json.loads, log.read_text().splitlines())
                if r["kind"] == "session"]
    assert sessions == list(range(len(resumed["metrics"]["sessions"])))
    first = sum(s["seconds"] for s in resumed["metrics"]["sessions"][:4])
    assert resumed["timings"]["total_s"] >= first


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_run_dying_before_its_first_checkpoint_leaves_no_folder(tmp_path, monkeypatch, exc):
    """Any exception (not only a refused configuration) before the first checkpoint removes the
    run folder: there is nothing to resume from."""
    from fsbench.baselines import ncm

    def die(*a, **k):
        raise exc

    monkeypatch.setattr(ncm, "train_supervised", die)
    with pytest.raises(type(exc)):
        api.run("ncm", "synthetic", overrides=FAST, out_dir=tmp_path / "runs", progress=False)
    assert not any((tmp_path / "runs").iterdir())

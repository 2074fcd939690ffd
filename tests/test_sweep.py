"""fsbench sweep: a 2x2 glyphs grid (2 backbones x 2 seeds, one backbone failing) in local
worker processes and on a local Ray; summaries against the runs' result.json files, resume,
failures, show and submit of a summary, and bad inputs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from fsbench import summary
from fsbench.cli import main
from fsbench.leaderboard import schema, store
from fsbench.leaderboard.testing import fake_result

# Two configurations x two seeds; the second backbone does not exist, so its runs fail in the
# child (after the data is loaded), while the first trains one epoch of a narrow Conv4.
BASE = ["--methods", "ncm", "--datasets", "glyphs", "--seeds", "0,1", "--jobs", "2",
        "--threads", "1", "--set", "train.epochs=1", "--set", "train.select=last",
        "--set", "backbone.hidden=8", "--set"]
GRID = BASE + ["backbone.name=conv4,nosuchnet"]
UNKNOWN = "fsbench: error: backbone.name: unknown backbone 'nosuchnet'"


def sweep(out: Path, *extra: str, grid=GRID) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fsbench.cli", "sweep", *grid, "--out", str(out),
                           *extra], capture_output=True, text=True, timeout=600)


def groups(out: Path) -> dict:
    index, _ = summary.read(out)
    return {g["settings"]["backbone.name"]: g for g in index["groups"]}


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    from fsbench.episodes.glyphs import load_glyphs

    load_glyphs(32)  # render the images once, not in two children at the same time
    out = tmp_path_factory.mktemp("sweep") / "local"
    p = sweep(out)
    assert p.returncode == 1, p.stderr[-2000:]  # 1: some runs failed
    return out, p.stdout


def test_summary_is_the_mean_and_std_of_the_runs(local):
    out, stdout = local
    assert "4 runs (2 configurations x 2 seeds), 0 already finished" in stdout
    g = groups(out)
    assert g["conv4"]["seeds"] == [0, 1] and g["conv4"]["failed"] == []
    doc, _ = summary.read(out / g["conv4"]["summary"])
    results = [json.loads((out / r["run_dir"] / "result.json").read_text()) for r in doc["runs"]]
    assert [r["seed"] for r in results] == [0, 1]
    assert results[0]["metrics"]["avg"] != results[1]["metrics"]["avg"]  # the seeds differ
    for i, sess in enumerate(doc["metrics"]["sessions"]):
        accs = np.array([r["metrics"]["sessions"][i]["acc"] for r in results])
        assert sess["acc"]["values"] == list(accs)
        assert sess["acc"]["mean"] == pytest.approx(accs.mean(), abs=1e-9)
        assert sess["acc"]["std"] == pytest.approx(accs.std(ddof=1), abs=1e-9)
        assert sess["acc"]["ci95"] == pytest.approx(
            stats.t.ppf(0.975, 1) * accs.std(ddof=1) / np.sqrt(2), abs=1e-9)
    avg = np.array([r["metrics"]["avg"] for r in results])
    assert doc["metrics"]["avg"]["mean"] == pytest.approx(avg.mean(), abs=1e-9)
    assert doc["metrics"]["avg"]["std"] == pytest.approx(avg.std(ddof=1), abs=1e-9)


def test_failed_runs_are_listed_with_their_error_and_do_not_stop_the_sweep(local):
    out, stdout = local
    bad = groups(out)["nosuchnet"]
    assert bad["summary"] is None and bad["seeds"] == []
    assert [f["seed"] for f in bad["failed"]] == [0, 1]
    for f in bad["failed"]:
        assert f["error"].startswith(UNKNOWN) and "\n" not in f["error"]
    assert "2 runs finished, 2 failed" in stdout and stdout.count(UNKNOWN) >= 2


def test_show_and_submit_a_summary(local, tmp_path, capsys):
    out, _ = local
    assert main(["show", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ncm on glyphs" in text and "2 seeds (0, 1)" in text and "AVG" in text
    assert "no seed finished" in text and UNKNOWN in text
    g = groups(out)["conv4"]
    doc, _ = summary.read(out / g["summary"])
    assert main(["show", str(out / g["summary"])]) == 0
    first = f"{doc['metrics']['sessions'][0]['acc']['mean']:.2f} ± " \
            f"{doc['metrics']['sessions'][0]['acc']['std']:.2f}"
    assert first in capsys.readouterr().out

    lb = tmp_path / "lb"
    assert main(["submit", str(out / g["summary"]), "--leaderboard-dir", str(lb)]) == 0
    (path,) = (lb / "submissions" / "glyphs").glob("ncm-*.json")
    sub = schema.load_json(path)
    assert schema.validate_submission(sub, "s") == []
    assert sub["seeds"] == [0, 1] and sub["n_seeds"] == 2
    assert sub["metrics"]["avg"] == pytest.approx(doc["metrics"]["avg"]["mean"])
    assert sub["metrics"]["sessions"][0]["std"] == doc["metrics"]["sessions"][0]["acc"]["std"]
    capsys.readouterr()
    assert main(["leaderboard", "--dataset", "glyphs", "--leaderboard-dir", str(lb)]) == 0
    board = capsys.readouterr().out
    assert first in board and "mean ± sample std over 2 seeds (0, 1)" in board
    # the sweep folder holds this one summary (the other group has none): the same row, which
    # the leaderboard holds already - refused in one line naming the file
    assert main(["submit", str(out), "--leaderboard-dir", str(lb)]) == 2
    assert "on the leaderboard already as" in capsys.readouterr().err
    assert len(list((lb / "submissions" / "glyphs").glob("ncm-*.json"))) == 1


def test_resume_skips_finished_runs_and_resumes_interrupted_ones(local, tmp_path):
    out, _ = local
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(out), str(copy)], check=True)
    g = groups(copy)["conv4"]
    done, cut = (copy / "runs" / f"{g['group']}-s{s}" for s in (0, 1))
    before = (done / "result.json").stat().st_mtime_ns
    kept = json.loads((cut / "result.json").read_text())
    (cut / "result.json").unlink()  # killed after its last checkpoint
    # The conv4 half of the grid: the same configuration, hence the same run folders.
    p = sweep(copy, grid=BASE + ["backbone.name=conv4"])
    assert p.returncode == 0, p.stderr[-2000:]
    assert "2 runs (1 configuration x 2 seeds), 1 already finished, 1 to resume, 0 to start" \
        in p.stdout
    assert (done / "result.json").stat().st_mtime_ns == before
    log = (copy / "logs" / f"{cut.name}.log").read_text()
    assert f"--resume {cut}" in log
    again = json.loads((cut / "result.json").read_text())
    assert again["metrics"]["sessions"] == kept["metrics"]["sessions"]


def test_the_same_sweep_on_a_local_ray(local, tmp_path):
    pytest.importorskip("ray")
    out, _ = local
    p = sweep(tmp_path / "ray", "--ray")
    assert p.returncode == 1, p.stderr[-3000:]
    ray_groups, local_groups = groups(tmp_path / "ray"), groups(out)
    assert ray_groups["nosuchnet"]["failed"][0]["error"].startswith(UNKNOWN)
    ours, theirs = (summary.read(root / g["conv4"]["summary"])[0]["metrics"]
                    for root, g in ((tmp_path / "ray", ray_groups), (out, local_groups)))
    assert ours == theirs  # identical numbers: the reproducible mode does not care who runs it
    index, _ = summary.read(tmp_path / "ray")
    assert index["spec"]["ray"] == "local"


# --------------------------------------------------------------------------- no runs needed

def test_fsl_summary_statistics_and_multi_seed_submission(tmp_path):
    results = [fake_result(task="fsl", method="protonet", dataset="miniimagenet", seed=s,
                           shots={"1": (50.0 + s, 0.4 + s / 10), "5": (70.0 - s, 0.3)})
               for s in (0, 1, 2)]
    for s, r in enumerate(results):
        r["run_dir"] = f"runs/x-s{s}"
    group = {"group": "protonet-miniimagenet-0123456789", "settings": {"train.lr": 0.1},
             "config_hash": "ef" * 32}
    doc = summary.summarize(group, results, [])
    assert summary.validate(doc, "s") == []
    one = doc["metrics"]["shots"]["1"]["acc"]
    assert one["mean"] == pytest.approx(51.0) and one["std"] == pytest.approx(1.0)
    assert one["ci95"] == pytest.approx(stats.t.ppf(0.975, 2) / np.sqrt(3))
    assert doc["metrics"]["shots"]["1"]["episode_ci95"]["mean"] == pytest.approx(0.5)
    assert "51.00 ± 1.00" in summary.summary_table(doc)
    sub = store.summary_to_submission(doc, "s")
    assert schema.validate_submission(sub, "s") == []
    assert sub["metrics"]["shots"]["5"] == {"mean": pytest.approx(69.0), "ci95": 0.3,
                                            "n_episodes": 600, "std": pytest.approx(1.0)}
    # the leaderboard's CSV gains n_seeds and the std columns for such a row
    import csv
    import io

    from fsbench.leaderboard import render

    store.write_submission(sub, tmp_path / "lb")
    tables = render.build_tables(store.load(tmp_path / "lb"), "miniimagenet")
    rows = list(csv.DictReader(io.StringIO(render.to_csv(tables))))
    (row,) = [r for r in rows if r["row"] == "reproduced"]  # (the packaged published rows too)
    assert row["n_seeds"] == "3" and row["shot_1_std"] == "1.00" and row["shot_1_ci95"] == "0.50"
    assert "51.00 ± 1.00" in render.to_text(tables)


@pytest.mark.parametrize("argv, needle", [
    (["--methods", "ncm,nope", "--datasets", "glyphs"], "unknown method 'nope'; valid methods"),
    (["--methods", "ncm", "--datasets", "glyphs", "--set", "train.epoch=1,2"],
     "ncm on glyphs: --set train.epoch: unknown key 'epoch'; did you mean train.epochs?"),
    (["--methods", "ncm", "--datasets", "glyphs", "--set", "train.epochs=1,x"],
     "expected an integer"),
    (["--methods", "protonet", "--datasets", "cifar100"], "cifar100 has no FSL protocol"),
    (["--methods", "ncm", "--datasets", "glyphs", "--seeds", "0,a"], "is not a whole number"),
])
def test_bad_input_is_one_line_before_anything_runs(tmp_path, capsys, argv, needle):
    assert main(["sweep", *argv, "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "s").exists()


def test_missing_ray_names_the_install_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert main(["sweep", "--methods", "ncm", "--datasets", "glyphs", "--ray",
                 "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert 'pip install -e ".[ray]"' in err and err.count("\n") == 1


def test_a_cluster_address_nobody_answers_at_is_one_line(tmp_path, capsys):
    pytest.importorskip("ray")
    import socket

    with socket.socket() as sock:  # a port that was free a moment ago
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert main(["sweep", "--methods", "ncm", "--datasets", "glyphs", "--ray",
                 f"127.0.0.1:{port}", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "nothing answers there" in err and "ray start --head" in err and err.count("\n") == 1
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("text, needle", [
    ('{"schema": "fsbench.sweep-summary/1", "group": ', "not valid JSON"),
    ('{"schema": "fsbench.sweep-summary/1", "group": "g"}', "missing (required)"),
    ('{"schema": "fsbench.sweep-summary/1", "x": NaN}', "not plain JSON"),
])
def test_malformed_summary_is_refused_by_show_and_submit(tmp_path, capsys, text, needle):
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    assert main(["show", str(bad)]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
    assert main(["submit", str(bad), "--leaderboard-dir", str(tmp_path / "lb")]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "lb").exists()


def test_summary_numbers_are_checked_when_read(tmp_path):
    results = [fake_result(task="fscil", method="ncm", dataset="glyphs", seed=s,
                           accs=[60.0 - 3 * i + s for i in range(9)]) for s in (0, 1)]
    for s, r in enumerate(results):
        r["run_dir"] = f"runs/x-s{s}"
    doc = summary.summarize({"group": "ncm-glyphs-0123456789", "settings": {},
                             "config_hash": "ef" * 32}, results, [])
    assert summary.validate(doc, "s") == []
    doc["metrics"]["avg"]["mean"] += 1  # no longer the mean of its values
    assert any("metrics.avg.mean: is not the mean of values" in e
               for e in summary.validate(doc, "s"))


def test_run_dir_that_holds_a_run_is_refused(tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    (run / "run.json").write_text("{}")
    assert main(["run", "--method", "ncm", "--dataset", "glyphs", "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and f"--resume {run}" in err and err.count("\n") == 1

"""fsbench submit: result.json -> submission, idempotence, atomic and concurrent writes, and a
round trip result.json -> submit -> leaderboard -> regress with a fabricated result."""
from __future__ import annotations

import json
import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from fsbench.cli import main
from fsbench.leaderboard import schema, store
from fsbench.leaderboard.testing import fake_result, make_leaderboard, published_entry, submission

PUB = [80.0 - 2.0 * i for i in range(11)]


def write_run(root: Path, name: str, **kwargs) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "result.json").write_text(json.dumps(fake_result(**kwargs), indent=2))
    return run


def test_round_trip_result_submit_leaderboard_regress(tmp_path, capsys):
    lb = make_leaderboard(tmp_path / "lb", [published_entry("teen", "cub200", PUB,
                                                            display="TEEN")])
    ours = [p + 0.4 for p in PUB]
    run = write_run(tmp_path / "runs", "r1", accs=ours)
    assert main(["submit", str(run), "--leaderboard-dir", str(lb)]) == 0
    out = capsys.readouterr().out
    (path,) = (lb / "submissions" / "cub200").glob("teen-*.json")
    assert f"submitted: submissions/cub200/{path.name}" in out
    doc = schema.load_json(path)
    assert schema.validate_submission(doc, "s") == []
    assert path.name == f"teen-{store.submission_id(doc)}.json"
    assert doc["metrics"]["sessions"][0]["acc"] == pytest.approx(80.4)

    # submitting the same run again is refused, also with another note; nothing changes
    for extra in ([], ["--note", "again"]):
        assert main(["submit", str(run / "result.json"), "--leaderboard-dir", str(lb)]
                    + extra) == 2
        err = capsys.readouterr().err
        assert f"on the leaderboard already as submissions/cub200/{path.name}" in err
    assert len(list((lb / "submissions").rglob("*.json"))) == 1

    assert main(["leaderboard", "--dataset", "cub200", "--format", "md",
                 "--leaderboard-dir", str(lb)]) == 0
    md = capsys.readouterr().out
    assert "| TEEN | reproduced |" in md and "| TEEN | delta |" in md and "+0.40" in md

    assert main(["regress", "--leaderboard-dir", str(lb)]) == 0
    assert "OK: no drift" in capsys.readouterr().out

    # a second run that drifts by 1.5 points in one session fails the regression
    drift = list(ours)
    drift[7] = PUB[7] - 1.5
    run2 = write_run(tmp_path / "runs", "r2", accs=drift, seed=1)
    assert main(["submit", str(run2), "--leaderboard-dir", str(lb)]) == 0
    capsys.readouterr()
    assert main(["regress", "--leaderboard-dir", str(lb)]) == 1
    out = capsys.readouterr().out
    assert "FAILED: 1 cell(s) drift beyond tolerance" in out
    assert "session 7" in out and "-1.50" in out and "±1" in out


def test_hand_written_submission_file(tmp_path, capsys):
    sub = submission(method="lark")
    sub["source"] = {"type": "manual", "reference": "Lark (ICCV 2025) Table 2"}
    del sub["environment"], sub["config_hash"]
    f = tmp_path / "lark.json"
    f.write_text(json.dumps(sub))
    lb = tmp_path / "lb"
    assert main(["submit", str(f), "--leaderboard-dir", str(lb)]) == 0
    (path,) = (lb / "submissions" / "cub200").glob("lark-*.json")
    assert json.loads(path.read_text()) == sub


def test_submit_needs_a_result(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["submit", str(tmp_path / "empty")]) == 2
    assert "has no result.json" in capsys.readouterr().err
    (tmp_path / "x.json").write_text('{"schema": "other/1"}')
    assert main(["submit", str(tmp_path / "x.json"), "--leaderboard-dir",
                 str(tmp_path / "lb")]) == 2
    assert "is not 'fsbench.result/1'" in capsys.readouterr().err


def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(store.os, "replace", boom)
    monkeypatch.setattr(store.os, "link", boom)
    with pytest.raises(OSError):
        store.write_submission(submission(), tmp_path)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_readers_never_see_a_partial_file(tmp_path):
    target = tmp_path / "f.json"
    store.atomic_write_text(target, json.dumps({"n": 0, "pad": "x" * 200_000}))
    stop = threading.Event()
    bad = []

    def reader():
        while not stop.is_set():
            try:
                json.loads(target.read_text())
            except Exception as e:  # noqa: BLE001
                bad.append(repr(e))

    def writer(k):
        for i in range(20):
            store.atomic_write_text(target, json.dumps({"n": k * 100 + i,
                                                        "pad": str(k) * 200_000}))

    readers = [threading.Thread(target=reader) for _ in range(2)]
    writers = [threading.Thread(target=writer, args=(k,)) for k in range(6)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert bad == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def _submit_in_process(args):
    lb, seed, accs = args
    return main(["submit", str(_write_tmp_run(lb, seed, accs)), "--leaderboard-dir", str(lb)])


def _write_tmp_run(lb, seed, accs):
    run = Path(lb).parent / "runs" / f"{os.getpid()}-{seed}-{threading.get_ident()}"
    run.mkdir(parents=True, exist_ok=True)
    (run / "result.json").write_text(json.dumps(fake_result(seed=seed, accs=accs)))
    return run


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork() to start worker processes")
def test_concurrent_submits_from_processes(tmp_path):
    lb = tmp_path / "lb"
    jobs = [(lb, seed % 4, [80.0 - 2 * i for i in range(11)]) for seed in range(12)]
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=6, mp_context=ctx) as pool:
        codes = list(pool.map(_submit_in_process, jobs))
    assert sorted(codes) == [0] * 4 + [2] * 8  # each run once; its duplicates are refused
    files = sorted((lb / "submissions" / "cub200").iterdir())
    assert len(files) == 4  # 4 distinct seeds -> 4 distinct contents; no temp files left
    for f in files:
        assert not f.name.startswith(".")
        doc = schema.load_json(f)
        assert schema.validate_submission(doc, f.name) == []
        assert f.name == f"teen-{store.submission_id(doc)}.json"

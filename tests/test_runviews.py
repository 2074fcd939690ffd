"""`fsbench show` of several runs (side by side, CSV, JSON) and `fsbench runs` (a line per run),
on hand-written result files."""
import csv
import io
import json

from fsbench.cli import main


def _fscil(method, accs, seed=0, status="complete"):
    sessions = [{"session": i, "num_seen": 60 + 5 * i, "acc": a, "base_acc": a + 1,
                 "novel_acc": None if i == 0 else a - 10, "hm": None if i == 0 else a - 5}
                for i, a in enumerate(accs)]
    m = {"sessions": sessions}
    if status == "complete":
        m.update(avg=sum(accs) / len(accs), pd=accs[0] - accs[-1], last=accs[-1])
    return {"schema": "fsbench.result/1", "task": "fscil", "method": method,
            "dataset": "glyphs", "seed": seed, "status": status, "metrics": m,
            "split": {"id": "glyphs-v1:abc", "generated": False}}


def _fsl(method, shots, seed=0):
    return {"schema": "fsbench.result/1", "task": "fsl", "method": method, "dataset": "glyphs",
            "seed": seed, "status": "complete",
            "metrics": {"shots": {k: {"mean": v, "ci95": 0.5, "n_episodes": 600,
                                      "per_episode": [v] * 3} for k, v in shots.items()},
                        "way": 5, "query": 15, "episodes": 600},
            "split": {"id": "glyphs-fsl", "way": 5, "query": 15, "episodes": 600}}


def _runs(tmp_path):
    folders = {"20260101-000000-teen-glyphs": _fscil("teen", [90.0, 85.0, 80.0]),
               "20260101-000100-ncm-glyphs": _fscil("ncm", [89.0, 84.5, 79.25], seed=1),
               "20260101-000200-protonet-glyphs": _fsl("protonet", {"1": 55.5, "5": 71.25}),
               "20260101-000300-teen-glyphs": _fscil("teen", [90.0, 85.0], status="partial")}
    for name, result in folders.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "result.json").write_text(json.dumps(result))
    (tmp_path / "20260101-000400-beclr-glyphs").mkdir()  # started, no result yet
    (tmp_path / "20260101-000400-beclr-glyphs" / "run.json").write_text(
        json.dumps({"method": "beclr", "dataset": "glyphs", "seed": 2}))
    (tmp_path / "notes").mkdir()  # not a run
    return sorted(p for p in tmp_path.iterdir() if p.name != "notes")


def test_show_several_runs_side_by_side(tmp_path, capsys):
    teen, ncm, proto, _, _ = _runs(tmp_path)
    assert main(["show", str(teen), str(ncm), str(proto)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "teen/glyphs/s0" in lines[0] and "ncm/glyphs/s1" in lines[0]
    assert lines[1].split() == ["s0", "90.00", "89.00"]
    assert any(ln.split() == ["AVG", "85.00", "84.25"] for ln in lines)
    assert any(ln.split()[:3] == ["1-shot", "55.50", "±0.50"] for ln in lines)  # FSL block


def test_show_csv_and_json(tmp_path, capsys):
    teen, ncm, proto, _, _ = _runs(tmp_path)
    assert main(["show", str(teen), str(proto), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["method"], r["session"], r["shot"]) for r in rows] == [
        ("teen", "0", ""), ("teen", "1", ""), ("teen", "2", ""), ("protonet", "", "1"),
        ("protonet", "", "5")]
    assert rows[1]["novel_acc"] == "75.0" and rows[0]["novel_acc"] == ""
    assert main(["show", str(ncm), str(proto), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["method"] for d in data] == ["ncm", "protonet"]
    assert data[0]["metrics"]["avg"] == 84.25
    assert "per_episode" not in data[1]["metrics"]["shots"]["5"]


def test_show_one_run_is_its_table(tmp_path, capsys):
    teen = _runs(tmp_path)[0]
    assert main(["show", str(teen)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "AVG 85.00  PD 10.00  last 80.00"


def test_runs_lists_every_run_folder(tmp_path, capsys):
    _runs(tmp_path)
    assert main(["runs", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "method", "dataset", "seed", "status", "summary"]
    assert len(lines) == 6  # the five run folders, not "notes"
    assert lines[1].split()[1:] == ["teen", "glyphs", "0", "complete", "AVG", "85.00", "last",
                                    "80.00"]
    assert "1-shot 55.50  5-shot 71.25" in lines[3]
    assert "partial" in lines[4] and "2 session(s) done" in lines[4]
    assert "beclr" in lines[5] and "running or interrupted" in lines[5]
    assert main(["runs", str(tmp_path), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in rows] == ["complete", "complete", "complete", "partial",
                                           "running or interrupted"]


def test_runs_of_a_missing_folder_is_one_line(tmp_path, capsys):
    assert main(["runs", str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err

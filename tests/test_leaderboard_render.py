"""Leaderboard rendering: Markdown (exact), text, CSV, HTML (static checks) and plots."""
from __future__ import annotations

import csv
import io
import re

import pytest

from fsbench.cli import main
from fsbench.leaderboard import render, store
from fsbench.leaderboard.testing import (fsl_published_entry, make_leaderboard, published_entry,
                                         submission)

CEC = [73.07, 68.88, 65.26, 61.19, 58.09, 55.57, 53.22, 51.34, 49.14]
TEEN = [None, 72.65, 68.74, 65.01, 62.01, 59.29, 57.90, 54.76, 52.64]
OURS = [75.0, 72.0, 68.0, 65.5, 62.0, 59.0, 57.0, 55.0, 52.0]


@pytest.fixture
def small_lb(tmp_path):
    cec = published_entry("cec", "cifar100", CEC, display="CEC", backbone="resnet20",
                          pretraining="none", source="CEC paper, Table 2", year=2021,
                          venue="CVPR",
                          paper="Few-Shot Incremental Learning with Continually Evolved "
                                "Classifiers")
    teen = published_entry(
        "teen", "cifar100", TEEN, display="TEEN", verified=False, backbone="resnet20",
        pretraining="none", source="a reprint", paper=None, venue="NeurIPS", year=2023,
        note="Session 0 is disputed.",
        cells={"sessions[0]": {"status": "unresolved", "candidates": [74.92, 76.7],
                               "note": "reprint vs figure"},
               "sessions[6]": {"status": "unverified", "note": "one reprint only"}})
    sub = submission(method="teen", dataset="cifar100", backbone="resnet20",
                     pretraining="none", accs=OURS)
    return make_leaderboard(tmp_path / "lb", [cec, teen], [sub])


EXPECTED_MD = """\
## CIFAR-100 — FSCIL (60 base classes + 8 sessions of 5-way 5-shot)

| Method | Row | Backbone | Pretraining | 0 | 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8 | AVG | PD | Verified | Ref |
|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|
| CEC | published | resnet20 | none | 73.07 | 68.88 | 65.26 | 61.19 | 58.09 | 55.57 | 53.22 | 51.34 | 49.14 | 59.53 | 23.93 | yes | 1 |
| TEEN | published | resnet20 | none | ? | 72.65 | 68.74 | 65.01 | 62.01 | 59.29 | 57.90† | 54.76 | 52.64 | — | — | no | 2 |
| TEEN | reproduced | resnet20 | none | 75.00 | 72.00 | 68.00 | 65.50 | 62.00 | 59.00 | 57.00 | 55.00 | 52.00 | 62.83 | 23.00 | — | 3 |
| TEEN | delta | resnet20 | none | — | -0.65 | -0.74 | +0.49 | -0.01 | -0.29 | -0.90 | +0.24 | -0.64 | — | — | — | 3 |

Top-1 accuracy (%) on all classes seen so far after each session; AVG = mean over all sessions, PD = session 0 − last session.
† not verified against the paper · ? unresolved, sources disagree · — not reported · Verified: yes = confirmed in a primary source or by two agreeing reprints · delta = ours − published

1. CEC — Few-Shot Incremental Learning with Continually Evolved Classifiers (CVPR 2021). Source: CEC paper, Table 2.
2. TEEN (NeurIPS 2023). Source: a reprint. Not verified. Session 0 is disputed. sessions[0] unresolved: reprint vs figure (candidates: 74.92, 76.7). sessions[6] unverified: one reprint only.
3. Reproduction submissions/cifar100/teen-{sid}.json; seeds 0; split 3f3f3f3f3f3f3f3f…; fsbench 0.1.0. Compared with [2] teen/cifar100/fscil.
"""


def _sid(lb_dir):
    (path,) = (lb_dir / "submissions" / "cifar100").glob("teen-*.json")
    return path.stem.split("-", 1)[1]


def test_markdown_exact(small_lb):
    lb = store.load(small_lb)
    md = render.to_markdown(render.build_tables(lb, "cifar100"))
    sid = _sid(small_lb)
    assert re.fullmatch(r"[0-9a-f]{12}", sid)
    assert md == EXPECTED_MD.replace("{sid}", sid)


def test_cli_markdown_to_file_and_stdout(small_lb, tmp_path, capsys):
    out = tmp_path / "board.md"
    assert main(["leaderboard", "--dataset", "cifar100", "--format", "md", "--output", str(out),
                 "--leaderboard-dir", str(small_lb)]) == 0
    assert out.read_text() == EXPECTED_MD.replace("{sid}", _sid(small_lb))
    assert main(["leaderboard", "--dataset", "cifar100", "--leaderboard-dir",
                 str(small_lb)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^TEEN +reproduced +resnet20", text, re.M) and "57.90†" in text


def test_csv_has_one_row_per_table_row(small_lb):
    lb = store.load(small_lb)
    rows = list(csv.DictReader(io.StringIO(render.to_csv(render.build_tables(lb, "cifar100")))))
    assert [r["row"] for r in rows] == ["published", "published", "reproduced", "delta"]
    assert rows[1]["session_0"] == "" and rows[1]["unresolved_cells"] == "sessions[0]"
    assert rows[1]["unverified_cells"] == "sessions[6]"
    assert rows[2]["session_3"] == "65.50" and rows[3]["session_3"] == "0.49"
    assert rows[0]["verified"] == "yes" and rows[1]["verified"] == "no"


def test_unknown_dataset_and_method_filter(small_lb, capsys):
    assert main(["leaderboard", "--dataset", "nope", "--leaderboard-dir", str(small_lb)]) == 2
    assert "no leaderboard entries for dataset 'nope'" in capsys.readouterr().err
    assert main(["leaderboard", "--dataset", "cifar100", "--methods", "cec",
                 "--leaderboard-dir", str(small_lb), "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert "CEC" in out and "TEEN" not in out


def test_generated_split_reproduction_has_no_delta_row(tmp_path):
    cec = published_entry("cec", "cifar100", CEC, display="CEC")
    sub = submission(method="cec", dataset="cifar100", accs=CEC, split_id="generated")
    root = make_leaderboard(tmp_path / "lb", [cec], [sub])
    tables = render.build_tables(store.load(root), "cifar100")
    assert [r.kind for r in tables[0].rows] == ["published", "reproduced"]
    assert "Not compared with published numbers: its split is generated" in tables[0].notes[1]


def test_fsl_table_shows_mean_and_ci(tmp_path):
    pub = fsl_published_entry("protonet", "miniimagenet",
                              cells={"shots.5.ci95": {"status": "unverified", "note": "n"}})
    sub = submission(task="fsl", method="protonet", dataset="miniimagenet",
                     shots={"1": (61.0, 0.45), "5": (77.5, 0.35)})
    root = make_leaderboard(tmp_path / "lb", [pub], [sub])
    md = render.to_markdown(render.build_tables(store.load(root), "miniimagenet"))
    assert "| protonet | published | — | — | 60.00 ± 0.50 | 78.00 ± 0.40† | no | 1 |" in md
    assert "| protonet | reproduced | resnet18 | imagenet | 61.00 ± 0.45 | 77.50 ± 0.35 |" in md
    assert "| protonet | delta | resnet18 | imagenet | +1.00 | -0.50 |" in md


def test_html_is_self_contained(small_lb):
    page = render.to_html(render.build_tables(store.load(small_lb), "cifar100"))
    assert page.startswith("<!DOCTYPE html>")
    for bad in ("<script src", "<link", "<img", "url(", "http://", "https://", "@import"):
        assert bad not in page
    assert page.count('<tr class="published') == 2
    assert '<tr class="published unverified">' in page
    assert '<tr class="reproduced">' in page and '<tr class="delta">' in page
    assert 'class="num unresolved"' in page and 'class="num unverified"' in page


def test_html_escapes_text(tmp_path):
    e = published_entry("cec", "cifar100", CEC, display="CEC", note="<script>alert(1)</script>")
    root = make_leaderboard(tmp_path / "lb", [e])
    page = render.to_html(render.build_tables(store.load(root), "cifar100"))
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page


def test_repository_leaderboard_renders_every_dataset():
    lb = store.load()
    for ds in lb.datasets():
        for fmt in render.FORMATS.values():
            assert fmt(render.build_tables(lb, ds))


def test_plot_writes_png(small_lb, tmp_path, capsys):
    out = tmp_path / "p.png"
    assert main(["plot", "--dataset", "cifar100", "--methods", "teen,cec", "--output", str(out),
                 "--leaderboard-dir", str(small_lb)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot", "--dataset", "cifar100", "--methods", "ncm",
                 "--leaderboard-dir", str(small_lb)]) == 2
    assert "no cifar100 entries for method(s) ncm" in capsys.readouterr().err
    assert main(["plot", "--dataset", "tieredimagenet", "--output", str(out)]) == 2

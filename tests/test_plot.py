"""`fsbench plot` as a paper figure: the READMEs' examples run as written, distinct colours for
up to 20 methods, the legend outside the data, --dpi/--size/--title, dataset titles."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from fsbench.cli import main
from fsbench.leaderboard import plot
from fsbench.leaderboard.testing import make_leaderboard, published_entry, submission

ROOT = Path(__file__).resolve().parent.parent
ACCS = [75.0, 72.0, 68.0, 65.5, 62.0, 59.0, 57.0, 55.0, 52.0]


def _examples():
    for readme in (ROOT / "README.md", ROOT / "leaderboard" / "README.md"):
        for line in readme.read_text().splitlines():
            if line.startswith("fsbench plot "):
                yield readme.name, shlex.split(re.sub(r"\[.*?\]|#.*", "", line))[1:]


@pytest.mark.parametrize("where, argv", list(_examples()))
def test_readme_plot_examples_work_as_written(where, argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 0, capsys.readouterr().err
    assert [p for p in tmp_path.iterdir() if p.suffix in (".png", ".pdf", ".svg")], where


def test_palette_does_not_repeat_up_to_20():
    assert len(set(plot.palette(20))) == 20
    assert len(set(plot.palette(23))) == 23


@pytest.fixture
def figure(monkeypatch):
    """The matplotlib figure `fsbench plot` draws (captured before it is closed)."""
    import matplotlib.pyplot as plt

    drawn = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (drawn.append(fig), close(fig)))
    return drawn


def test_legend_outside_options_and_titles(tmp_path, figure):
    methods = [f"method{i}" for i in range(12)]
    subs = [submission(method=m, dataset="cifar100", backbone="resnet20", pretraining="none",
                       accs=[a - i for a in ACCS]) for i, m in enumerate(methods)]
    pub = published_entry("cec", "cifar100", ACCS, display="CEC", backbone="resnet20",
                          pretraining="none", source="CEC paper", year=2021, venue="CVPR")
    lb = make_leaderboard(tmp_path / "lb", [pub], subs)
    out = tmp_path / "f.svg"
    assert main(["plot", "--dataset", "cifar100", "--output", str(out), "--dpi", "150",
                 "--size", "6,3.5", "--leaderboard-dir", str(lb)]) == 0
    assert out.read_text().lstrip().startswith("<?xml")  # the format follows the extension
    fig = figure[-1]
    ax = fig.axes[0]
    assert ax.get_title() == "CIFAR-100 — FSCIL"  # the dataset's title, not its slug
    assert tuple(fig.get_size_inches()) == (6.0, 3.5) and fig.dpi == 150
    lines = [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]
    assert len({ln.get_color() for ln in lines}) == 13  # CEC and the 12 methods
    fig.canvas.draw()
    legend, axes = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.x0 >= axes.x1  # outside the data, to the right
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0] == "CEC (published)" and labels[1].startswith("method0 (ours")  # by last

    assert main(["plot", "--dataset", "cifar100", "--output", str(tmp_path / "g.png"),
                 "--title", "Ours vs CEC", "--leaderboard-dir", str(lb)]) == 0
    assert figure[-1].axes[0].get_title() == "Ours vs CEC"


@pytest.mark.parametrize("argv, needle", [
    (["--size", "0,3"], "--size 0,3: give width,height"),
    (["--size", "big"], "--size big: give width,height"),
    (["--dpi", "5"], "--dpi 5: use 20 to 1200"),
])
def test_bad_figure_options_are_one_line(argv, needle, tmp_path, capsys):
    assert main(["plot", "--dataset", "cub200", "--output", str(tmp_path / "x.png")]
                + argv) == 2
    assert needle in capsys.readouterr().err

"""The HTML leaderboard in headless Chromium: rows render and clicking a header sorts them.

The page has a tiny test hook: opened as ``page.html#click=T.C,...`` it clicks header C of table T
after load; ``--dump-dom`` then prints the DOM as the script left it. Skips without a browser
(Debian: ``apt-get install -y chromium``)."""
from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from fsbench.leaderboard import render, store
from fsbench.leaderboard.testing import make_leaderboard, published_entry, submission

CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome",
              "google-chrome-stable")


def find_browser() -> str | None:
    for c in CANDIDATES:
        path = shutil.which(c) if not c.startswith("/") else (c if Path(c).is_file() else None)
        if path:
            return path
    return None


BROWSER = find_browser()
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium/Chrome found; install it "
                                                        "with `apt-get install -y chromium`")


class Rows(HTMLParser):
    """Collect body attributes and, per table row in tbody, its class and cells' data-v."""

    def __init__(self):
        super().__init__()
        self.body: dict = {}
        self.rows: list[tuple[str, list[str]]] = []
        self._in_tbody = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = a
        elif tag == "tbody":
            self._in_tbody = True
        elif tag == "tr" and self._in_tbody:
            self.rows.append((a.get("class", ""), []))
        elif tag == "td" and self._in_tbody and self.rows:
            self.rows[-1][1].append(a.get("data-v", ""))

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_tbody = False


def dump(page: Path, tmp_path: Path, fragment: str = "") -> Rows:
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", f"--user-data-dir={profile}", "--virtual-time-budget=5000",
           "--dump-dom", page.as_uri() + fragment]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    parser = Rows()
    parser.feed(proc.stdout)
    return parser


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("html")
    rows = {"cec": [73.0 - i for i in range(9)], "fact": [75.0 - i for i in range(9)],
            "teen": [74.0 - i for i in range(9)]}
    pubs = [published_entry(m, "cifar100", s, display=m.upper()) for m, s in rows.items()]
    pubs[2]["verified"] = False
    sub = submission(method="cec", dataset="cifar100", accs=[76.0 - i for i in range(9)])
    root = make_leaderboard(tmp / "lb", pubs, [sub])
    path = tmp / "board.html"
    path.write_text(render.to_html(render.build_tables(store.load(root), "cifar100")))
    return path


AVG = 4 + 9  # Method, Row, Backbone, Pretraining, sessions 0..8, then AVG


def methods_and_kinds(rows: Rows) -> list[tuple[str, str]]:
    return [(cells[0], cls.split()[0]) for cls, cells in rows.rows]


def test_rows_render(page, tmp_path):
    rows = dump(page, tmp_path)
    assert rows.body.get("data-ready") == "1"
    assert methods_and_kinds(rows) == [("CEC", "published"), ("CEC", "reproduced"),
                                       ("CEC", "delta"), ("FACT", "published"),
                                       ("TEEN", "published")]
    assert any("unverified" in cls for cls, _ in rows.rows)


def test_clicking_a_header_sorts(page, tmp_path):
    rows = dump(page, tmp_path, f"#click=0.{AVG}")
    assert rows.body.get("data-clicked") == f"0.{AVG}"
    # ascending by AVG; the delta row stays under its reproduced row
    assert methods_and_kinds(rows) == [("CEC", "published"), ("TEEN", "published"),
                                       ("FACT", "published"), ("CEC", "reproduced"),
                                       ("CEC", "delta")]
    avgs = [float(cells[AVG]) for cls, cells in rows.rows if "delta" not in cls]
    assert avgs == sorted(avgs)
    rows = dump(page, tmp_path, f"#click=0.{AVG},0.{AVG}")
    assert methods_and_kinds(rows) == [("CEC", "reproduced"), ("CEC", "delta"),
                                       ("FACT", "published"), ("TEEN", "published"),
                                       ("CEC", "published")]
    rows = dump(page, tmp_path, "#click=0.0")  # a text column
    assert [m for m, _ in methods_and_kinds(rows)] == ["CEC", "CEC", "CEC", "FACT", "TEEN"]

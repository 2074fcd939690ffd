"""Accuracy-vs-session plots (matplotlib, Agg backend): published dashed, ours solid."""
from __future__ import annotations

import sys
from pathlib import Path

from fsbench.atomic import atomic_open
from fsbench.errors import UserError

from . import schema
from .store import Entry, Leaderboard


def select(lb: Leaderboard, dataset: str, methods: list[str] | None) -> list[Entry]:
    """The FSCIL entries of ``dataset`` (of ``methods``). A requested method without entries is
    named on stderr and left out; none with entries is an error."""
    rows = [e for e in lb.published + lb.submissions
            if e.dataset == dataset and e.task == "fscil"]
    if not rows:
        have = sorted({e.dataset for e in lb.published + lb.submissions if e.task == "fscil"})
        raise UserError(f"no FSCIL entries for dataset {dataset!r}; `fsbench plot` draws "
                        f"accuracy per session (FSCIL datasets: {', '.join(have)})")
    if methods:
        want = {schema.canonical_method(m) for m in methods}
        known = sorted({e.method for e in rows})
        missing = want - {e.method_key for e in rows}
        if missing == want:
            raise UserError(f"no {dataset} entries for method(s) {', '.join(sorted(missing))}; "
                            f"methods with entries: {', '.join(known)}")
        if missing:
            print(f"note: no {dataset} entries for {', '.join(sorted(missing))} yet (run it and "
                  f"`fsbench submit RUN_DIR`); plotting the others", file=sys.stderr)
        rows = [e for e in rows if e.method_key in want]
    return rows


FORMATS = ("png", "pdf", "svg")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def palette(n: int) -> list:
    """``n`` distinct colours: tab20's 10 dark hues, then its 10 light ones (no repeat up to 20),
    then matplotlib's ``hsv`` map."""
    import matplotlib

    tab20 = matplotlib.colormaps["tab20"].colors
    colours = list(tab20[0::2]) + list(tab20[1::2])
    if n > len(colours):
        hsv = matplotlib.colormaps["hsv"]
        colours += [hsv(i / (n - 20)) for i in range(n - 20)]
    return colours[:n]


def parse_size(text: str | None) -> tuple[float, float]:
    """``--size W,H`` in inches (default 7.5,4.5)."""
    if not text:
        return 7.5, 4.5
    try:
        w, h = (float(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        w = h = -1.0
    if not (0 < w <= 50 and 0 < h <= 50):
        raise UserError(f"--size {text}: give width,height in inches, e.g. --size 7,4")
    return w, h


def _label(e: Entry, names: dict[str, str]) -> str:
    if e.kind == "published":
        return f"{e.display} (published{'' if e.verified else ', unverified'})"
    excl = e.exclusion()
    return f"{names.get(e.method_key, e.method)} (ours{', ' + excl.split(';')[0] if excl else ''})"


def plot(lb: Leaderboard, dataset: str, methods: list[str] | None, output: str | Path, *,
         dpi: int = 200, size: str | None = None, title: str | None = None) -> Path:
    """Accuracy per session of ``methods`` on ``dataset``: published dashed, ours solid, one
    colour and marker per method, the legend outside the axes; the format follows the
    extension. ``size`` is ``"W,H"`` in inches; ``title`` replaces ``"<Dataset> — FSCIL"``."""
    fmt = Path(output).suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise UserError(f"--output {output}: the figure format follows the extension; use "
                        f"{', '.join('.' + f for f in FORMATS)}")
    if not 20 <= int(dpi) <= 1200:
        raise UserError(f"--dpi {dpi}: use 20 to 1200 (300 for print)")
    figsize = parse_size(size)
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rows = select(lb, dataset, methods)
    order = list(dict.fromkeys(e.method_key for e in rows))
    colours = dict(zip(order, palette(len(order))))
    # the 11th-20th methods get tab20's light hues: shift their markers off the dark twin's
    markers = {m: MARKERS[(i + i // len(MARKERS)) % len(MARKERS)] for i, m in enumerate(order)}
    names = {e.method_key: e.display for e in rows if e.kind == "published"}
    fig, ax = plt.subplots(figsize=figsize, dpi=int(dpi))
    for e in rows:
        c, mk = colours[e.method_key], markers[e.method_key]
        ys = [float("nan") if v is None else v for v in e.sessions or []]
        xs = list(range(len(ys)))
        if e.kind == "published":
            ax.plot(xs, ys, linestyle="--", marker=mk, markersize=4, color=c, linewidth=1.2,
                    label=_label(e, names), alpha=0.9)
            for name, note in e.cells.items():  # unresolved cells: hollow markers at candidates
                if note.get("status") == "unresolved" and name.startswith("sessions["):
                    i = int(name[len("sessions["):-1])
                    for cand in note.get("candidates", []):
                        ax.plot([i], [cand], marker=mk, markerfacecolor="none", color=c)
        else:
            ax.plot(xs, ys, linestyle="-", marker=mk, markersize=4, color=c, linewidth=2,
                    label=_label(e, names))
    ax.set_xlabel("session")
    ax.set_ylabel("top-1 accuracy on all seen classes (%)")
    ax.set_title(title if title is not None else
                 f"{schema.DATASET_TITLES.get(dataset, dataset)} — FSCIL")
    n = schema.FSCIL_PROTOCOLS.get(dataset, {}).get("num_sessions")
    if n:
        ax.set_xticks(range(n))
    ax.grid(True, alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    handles, labels = ax.get_legend_handles_labels()  # top to bottom as the lines end
    last = [next((y for y in reversed(h.get_ydata()) if y == y), -1.0) for h in handles]
    order = sorted(range(len(handles)), key=lambda i: -last[i])
    ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=8,
              loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)
    fig.tight_layout()
    output = Path(output)
    try:
        with atomic_open(output, "wb") as f:
            fig.savefig(f, format=fmt, bbox_inches="tight")
    finally:
        plt.close(fig)
    return output

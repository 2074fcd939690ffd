"""Accuracy-vs-session plots (matplotlib, Agg backend): published dashed, ours solid."""
from __future__ import annotations

from pathlib import Path

from fsbench.atomic import atomic_open
from fsbench.errors import UserError

from . import schema
from .store import Entry, Leaderboard


def select(lb: Leaderboard, dataset: str, methods: list[str] | None) -> list[Entry]:
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
        if missing:
            raise UserError(f"no {dataset} entries for method(s) {', '.join(sorted(missing))}; "
                            f"methods with entries: {', '.join(known)}")
        rows = [e for e in rows if e.method_key in want]
    return rows


FORMATS = ("png", "pdf", "svg")


def plot(lb: Leaderboard, dataset: str, methods: list[str] | None, output: str | Path) -> Path:
    """Accuracy per session of ``methods`` on ``dataset``; the format follows the extension."""
    fmt = Path(output).suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise UserError(f"--output {output}: the figure format follows the extension; use "
                        f"{', '.join('.' + f for f in FORMATS)}")
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rows = select(lb, dataset, methods)
    colors = plt.get_cmap("tab10").colors
    by_method: dict[str, int] = {}
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for e in rows:
        c = colors[by_method.setdefault(e.method_key, len(by_method)) % len(colors)]
        ys = [float("nan") if v is None else v for v in e.sessions or []]
        xs = list(range(len(ys)))
        if e.kind == "published":
            label = f"{e.display} (published{'' if e.verified else ', unverified'})"
            ax.plot(xs, ys, linestyle="--", marker="o", markersize=3, color=c, label=label,
                    alpha=0.9)
            for name, note in e.cells.items():  # unresolved cells: hollow markers at candidates
                if note.get("status") == "unresolved" and name.startswith("sessions["):
                    i = int(name[len("sessions["):-1])
                    for cand in note.get("candidates", []):
                        ax.plot([i], [cand], marker="o", markerfacecolor="none", color=c)
        else:
            excl = e.exclusion()
            label = f"{e.method} (ours{', ' + excl.split(';')[0] if excl else ''})"
            ax.plot(xs, ys, linestyle="-", marker="s", markersize=3, color=c, label=label,
                    linewidth=2)
    ax.set_xlabel("session")
    ax.set_ylabel("top-1 accuracy on all seen classes (%)")
    ax.set_title(f"{schema.DATASET_TITLES.get(dataset, dataset)} — FSCIL")
    n = schema.FSCIL_PROTOCOLS.get(dataset, {}).get("num_sessions")
    if n:
        ax.set_xticks(range(n))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    output = Path(output)
    try:
        with atomic_open(output, "wb") as f:
            fig.savefig(f, format=fmt)
    finally:
        plt.close(fig)
    return output

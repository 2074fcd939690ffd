"""Leaderboard tables: built from a :class:`~.store.Leaderboard`, written as text, Markdown, CSV
or one self-contained HTML page (inline CSS and JS, no network fetches, sortable columns)."""
from __future__ import annotations

import csv
import html
import io
import re
from dataclasses import dataclass, field

from fsbench.errors import UserError

from . import schema
from .store import Entry, Leaderboard

MARK_UNVERIFIED = "†"
MARK_UNRESOLVED = "?"
MISSING = "—"
LEGEND = (f"{MARK_UNVERIFIED} not verified against the paper · {MARK_UNRESOLVED} unresolved, "
          f"sources disagree · {MISSING} not reported · Verified: yes = confirmed in a primary "
          f"source or by two agreeing reprints · delta = ours − published")


@dataclass
class Cell:
    value: float | None = None
    ci: float | None = None
    mark: str = ""  # "", "unverified", "unresolved", "missing"
    delta: bool = False
    title: str = ""
    std: float | None = None  # multi-seed rows: sample std over seeds (shown instead of ci)

    def text(self, marks: bool = True) -> str:
        if self.value is None:
            if self.mark == "unresolved":
                return MARK_UNRESOLVED
            return MISSING
        s = f"{self.value:+.2f}" if self.delta else f"{self.value:.2f}"
        spread = self.std if self.std is not None else self.ci
        if spread is not None:
            s += f" ± {spread:.2f}"
        if marks and self.mark == "unverified":
            s += MARK_UNVERIFIED
        return s


@dataclass
class Row:
    kind: str  # "published" | "reproduced" | "delta"
    method: str
    backbone: str
    pretraining: str
    cells: list[Cell]
    verified: str  # "yes" | "no" | "" (reproduced rows)
    ref: int
    entry: Entry | None = None


@dataclass
class Table:
    task: str
    dataset: str
    protocol: str
    columns: list[str]  # metric column labels
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        ds = schema.DATASET_TITLES.get(self.dataset, self.dataset)
        if self.task == "fscil":
            p = schema.FSCIL_PROTOCOLS.get(self.protocol, {})
            return (f"{ds} — FSCIL ({p.get('num_base')} base classes + "
                    f"{p.get('num_sessions', 1) - 1} sessions of {p.get('way')}-way "
                    f"{p.get('shot')}-shot)")
        way, _, src = self.protocol.partition("-from-")
        src_t = f", trained on {schema.DATASET_TITLES.get(src, src)}" if src else ""
        return f"{ds} — FSL ({way.replace('way', '-way')} episodes{src_t})"

    @property
    def caption(self) -> str:
        if self.task == "fscil":
            text = ("Top-1 accuracy (%) on all classes seen so far after each session; "
                    "AVG = mean over all sessions, PD = session 0 − last session.")
        else:
            text = "Accuracy (%) ± 95% confidence interval over test episodes."
        if any(r.entry is not None and r.entry.stds and r.kind == "reproduced"
               for r in self.rows):
            text += (" Rows over several seeds show the mean ± sample standard deviation over "
                     "the seeds (their note gives the seeds).")
        return text

    def header(self) -> list[str]:
        return ["Method", "Row", "Backbone", "Pretraining", *self.columns, "Verified", "Ref"]

    def numeric(self) -> list[bool]:
        return [False] * 4 + [True] * len(self.columns) + [False, True]

    def row_texts(self, row: Row, marks: bool = True) -> list[str]:
        return [row.method, row.kind, row.backbone, row.pretraining,
                *[c.text(marks) for c in row.cells], row.verified or MISSING, str(row.ref)]


# --------------------------------------------------------------------------- building

def _cell_marks(e: Entry) -> dict[str, str]:
    return {k: v.get("status", "") for k, v in e.cells.items()}


def _metric_cells(e: Entry, shots: list[int], n_sessions: int) -> list[Cell]:
    marks = _cell_marks(e)
    cells = []
    if e.task == "fscil":
        vals = list(e.sessions or []) + [None] * (n_sessions - len(e.sessions or []))
        names = [f"sessions[{i}]" for i in range(n_sessions)] + ["avg", "pd"]
        for name, v in zip(names, vals + [e.avg, e.pd]):
            mark = marks.get(name, "")
            cells.append(Cell(v, mark=mark if mark in ("unverified", "unresolved") else
                              ("" if v is not None else "missing"),
                              title=e.cells.get(name, {}).get("note", ""),
                              std=e.stds.get(name)))
    else:
        for k in shots:
            mean, ci = e.shots.get(k, (None, None))
            ms = {marks.get(f"shots.{k}"), marks.get(f"shots.{k}.mean"),
                  marks.get(f"shots.{k}.ci95")}
            mark = "unresolved" if "unresolved" in ms else \
                "unverified" if "unverified" in ms else ("" if mean is not None else "missing")
            title = "; ".join(e.cells[n]["note"] for n in
                              (f"shots.{k}", f"shots.{k}.mean", f"shots.{k}.ci95") if n in e.cells)
            cells.append(Cell(mean, ci, mark=mark, title=title, std=e.stds.get(f"shots.{k}")))
    return cells


def _delta_cells(ours: list[Cell], ref: list[Cell]) -> list[Cell]:
    out = []
    for o, r in zip(ours, ref):
        if o.value is None or r.value is None:
            out.append(Cell(None, delta=True, mark="missing"))
        else:
            out.append(Cell(round(o.value - r.value, 6), delta=True))
    return out


def _published_note(e: Entry) -> str:
    cite = e.display
    if e.paper:
        cite += f" — {e.paper}"
    arxiv = e.raw.get("arxiv")
    venue = None if (e.venue or "").lower() == "arxiv" and arxiv else e.venue
    where = ", ".join(x for x in (" ".join(str(v) for v in (venue, e.year) if v),
                                  f"arXiv {arxiv}" if arxiv else "") if x)
    if where:
        cite += f" ({where})"
    parts = [f"{cite}. Source: {e.source}."]
    if not e.verified:
        parts.append("Not verified.")
    if e.note:
        parts.append(e.note)
    computed = [k for k, v in e.cells.items() if v.get("status") == "computed"]
    for k, v in e.cells.items():
        if v.get("status") in ("unverified", "unresolved"):
            cand = v.get("candidates")
            extra = f" (candidates: {', '.join(f'{c:g}' for c in cand)})" if cand else ""
            parts.append(f"{k} {v['status']}: {v['note']}{extra}.")
    if computed:
        parts.append(f"Computed by fsbench from the row: {', '.join(computed)}.")
    return " ".join(p.rstrip() for p in parts)


def _submission_note(s: Entry, ref: Entry | None, ref_no: int | None, why_not: str) -> str:
    raw = s.raw
    split = raw["split"]["id"]
    seeds = f"seeds {', '.join(map(str, s.seeds))}"
    if s.stds:
        seeds = f"mean ± sample std over {len(s.seeds)} seeds ({', '.join(map(str, s.seeds))})"
    bits = [f"Reproduction {s.key}", seeds,
            f"split {split if len(split) <= 20 else split[:16] + '…'}"]
    src = raw.get("source") or {}
    if src.get("fsbench_version"):
        bits.append(f"fsbench {src['fsbench_version']}")
    if src.get("type") == "manual":
        bits.append("hand-written submission")
    text = "; ".join(bits) + "."
    excl = s.exclusion()
    if excl:
        text += f" Not compared with published numbers: {excl}."
    elif ref is not None:
        text += f" Compared with [{ref_no}] {ref.key}."
    elif why_not:
        text += f" Not compared: {why_not}."
    if s.note:
        text += f" {s.note}"
    return text


def build_tables(lb: Leaderboard, dataset: str, task: str | None = None,
                 methods: list[str] | None = None) -> list[Table]:
    """The tables of one dataset: one per (task, protocol); published rows in file order, each
    followed by the reproductions of it and their delta rows; other submissions at the end."""
    want = {schema.canonical_method(m) for m in methods} if methods else None
    entries = [e for e in lb.published + lb.submissions
               if e.dataset == dataset and (task is None or e.task == task)]
    if not entries:
        known = ", ".join(lb.datasets())
        raise UserError(f"no leaderboard entries for dataset {dataset!r}"
                        + (f" and task {task}" if task else "") + f"; datasets: {known}")
    keys = []
    for e in entries:
        if e.table_key not in keys:
            keys.append(e.table_key)
    keys.sort(key=lambda k: (k[0] != "fscil", "-from-" in k[2], k[2]))
    tables = []
    for key in keys:
        t_task, t_ds, t_proto = key
        pubs = [e for e in lb.published if e.table_key == key]
        subs = [e for e in lb.submissions if e.table_key == key]
        if want is not None:
            pubs = [e for e in pubs if e.method_key in want]
            subs = [e for e in subs if e.method_key in want]
        if not pubs and not subs:
            continue
        if t_task == "fscil":
            n = max([len(e.sessions or []) for e in pubs + subs]
                    + [schema.FSCIL_PROTOCOLS.get(t_proto, {}).get("num_sessions", 0)])
            shots: list[int] = []
            columns = [str(i) for i in range(n)] + ["AVG", "PD"]
        else:
            n = 0
            shots = sorted({k for e in pubs + subs for k in e.shots})
            columns = [f"{k}-shot" for k in shots]
        table = Table(t_task, t_ds, t_proto, columns)
        matched: dict[str, list[tuple[Entry, str]]] = {}
        unmatched: list[tuple[Entry, str]] = []
        for s in subs:
            ref, why = lb.reference_for(s)
            if ref is not None and ref in pubs:
                matched.setdefault(ref.key, []).append((s, why))
            else:
                unmatched.append((s, why))

        def add_sub(s: Entry, ref: Entry | None, ref_row: Row | None, why: str):
            ref_no = len(table.notes) + 1
            table.notes.append(_submission_note(s, ref, ref_row.ref if ref_row else None, why))
            cells = _metric_cells(s, shots, n)
            table.rows.append(Row("reproduced", ref.display if ref else s.method,
                                  s.backbone or MISSING, s.pretraining or MISSING, cells, "",
                                  ref_no, s))
            if ref_row is not None and not s.exclusion():
                table.rows.append(Row("delta", ref.display, s.backbone or MISSING,
                                      s.pretraining or MISSING,
                                      _delta_cells(cells, ref_row.cells), "", ref_no, s))

        for p in pubs:
            ref_no = len(table.notes) + 1
            table.notes.append(_published_note(p))
            row = Row("published", p.display, p.backbone or MISSING, p.pretraining or MISSING,
                      _metric_cells(p, shots, n), "yes" if p.verified else "no", ref_no, p)
            table.rows.append(row)
            for s, why in matched.get(p.key, []):
                add_sub(s, p, row, why)
        for s, why in unmatched:
            add_sub(s, None, None, why)
        tables.append(table)
    if not tables:
        raise UserError(f"no entries of dataset {dataset!r} match methods "
                        f"{', '.join(methods or [])}")
    return tables


# --------------------------------------------------------------------------- plain text

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def plain(s) -> str:
    """Text safe for a terminal: control characters (ANSI escape sequences start with ESC) are
    shown as ``\\xNN`` instead of being interpreted."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(s))


def grid(header: list[str], rows: list[list[str]], numeric: list[bool] | None = None) -> str:
    """An aligned plain-text table (control characters escaped, see :func:`plain`)."""
    numeric = numeric or [False] * len(header)
    header = [plain(h) for h in header]
    rows = [[plain(c) for c in r] for r in rows]
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]

    def fmt(r):
        return "  ".join((str(c).rjust(w) if num else str(c).ljust(w))
                         for c, w, num in zip(r, widths, numeric)).rstrip()
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), sep] + [fmt(r) for r in rows])


def to_text(tables: list[Table]) -> str:
    out = []
    for t in tables:
        out.append(plain(t.title))
        out.append("")
        out.append(grid(t.header(), [t.row_texts(r) for r in t.rows], t.numeric()))
        out.append("")
        out.append(plain(t.caption))
        out.append(LEGEND)
        out.append("")
        out.extend(f"[{i}] {plain(n)}" for i, n in enumerate(t.notes, 1))
        out.append("")
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------- Markdown

def _md(s: str) -> str:
    """Literal text in a Markdown table or list: raw HTML is shown, not rendered (``<script>``,
    ``<img onerror>``), no link or image can form (``](`` is escaped), control characters are
    shown (:func:`plain`)."""
    s = html.escape(plain(s).replace("\n", " "), quote=False)
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("](", "]\\(")


def to_markdown(tables: list[Table]) -> str:
    out = []
    for t in tables:
        out.append(f"## {_md(t.title)}")
        out.append("")
        out.append("| " + " | ".join(_md(h) for h in t.header()) + " |")
        out.append("|" + "|".join("---:" if num else "---" for num in t.numeric()) + "|")
        for r in t.rows:
            texts = t.row_texts(r)
            out.append("| " + " | ".join(_md(x) for x in texts) + " |")
        out.append("")
        out.append(_md(t.caption))
        out.append(_md(LEGEND))
        out.append("")
        out.extend(f"{i}. {_md(n)}" for i, n in enumerate(t.notes, 1))
        out.append("")
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------- CSV

def to_csv(tables: list[Table]) -> str:
    """One row per table row; the union of the tables' columns (empty where not applicable)."""
    n_sessions = max([len(t.columns) - 2 for t in tables if t.task == "fscil"] + [0])
    shots = sorted({int(c.split("-")[0]) for t in tables if t.task == "fsl" for c in t.columns})
    header = ["task", "dataset", "protocol", "row", "method", "backbone", "pretraining",
              "verified", "ref"]
    header += [f"session_{i}" for i in range(n_sessions)] + (["avg", "pd"] if n_sessions else [])
    for k in shots:
        header += [f"shot_{k}_mean", f"shot_{k}_ci95"]
    # Multi-seed rows add their std over seeds after each value's column (and n_seeds).
    multi = any(c.std is not None for t in tables for r in t.rows for c in r.cells)
    if multi:
        header = [h2 for h in header for h2 in
                  ([h, f"{h}_std"] if h.startswith("session_") or h in ("avg", "pd") else
                   [h, h.replace("_ci95", "_std")] if h.endswith("_ci95") else [h])]
        header.insert(header.index("verified"), "n_seeds")
    header += ["unverified_cells", "unresolved_cells", "entry", "note"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)

    def num(x):
        return "" if x is None else f"{x:.2f}" if abs(round(x, 2) - x) < 1e-9 else f"{x:.4f}"

    for t in tables:
        for r in t.rows:
            rec = {"task": t.task, "dataset": t.dataset, "protocol": t.protocol, "row": r.kind,
                   "method": r.method, "backbone": r.backbone, "pretraining": r.pretraining,
                   "verified": r.verified, "ref": r.ref,
                   "entry": r.entry.key if r.entry else "", "note": t.notes[r.ref - 1]
                   if r.kind != "delta" else ""}
            if t.task == "fscil":
                cols = [f"session_{i}" for i in range(len(r.cells) - 2)] + ["avg", "pd"]
                for col, c in zip(cols, r.cells):
                    rec[col], rec[f"{col}_std"] = num(c.value), num(c.std)
                names = [f"sessions[{i}]" for i in range(len(r.cells) - 2)] + ["avg", "pd"]
            else:
                for c, label in zip(r.cells, t.columns):
                    k = int(label.split("-")[0])
                    rec[f"shot_{k}_mean"], rec[f"shot_{k}_ci95"] = num(c.value), num(c.ci)
                    rec[f"shot_{k}_std"] = num(c.std)
                names = [f"shots.{label.split('-')[0]}" for label in t.columns]
            if r.entry is not None and r.kind == "reproduced" and r.entry.stds:
                rec["n_seeds"] = len(r.entry.seeds)
            if r.kind != "delta":
                rec["unverified_cells"] = ";".join(n for n, c in zip(names, r.cells)
                                                   if c.mark == "unverified")
                rec["unresolved_cells"] = ";".join(n for n, c in zip(names, r.cells)
                                                   if c.mark == "unresolved")
            w.writerow([rec.get(h, "") for h in header])
    return buf.getvalue()


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5rem;color:#1b1b1b}
h1{font-size:1.4rem}h2{font-size:1.15rem;margin-top:2rem}
table.lb{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
table.lb th,table.lb td{border:1px solid #ccd;padding:.25rem .45rem;white-space:nowrap}
table.lb th{background:#eef;cursor:pointer;user-select:none;position:sticky;top:0}
table.lb th[aria-sort=ascending]::after{content:" \\25B2"}
table.lb th[aria-sort=descending]::after{content:" \\25BC"}
table.lb td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.published{background:#fff}
tr.reproduced{background:#e7f4ea;font-weight:600}
tr.delta{background:#f6f6f6;color:#555;font-style:italic}
tr.unverified td.verified{color:#a33;font-weight:600}
td.unverified{text-decoration:underline dotted #a33}
td.unresolved{color:#a33;font-weight:700}
.badge{display:inline-block;border-radius:3px;padding:0 .3rem;font-size:.75rem}
.badge.published{background:#dde}.badge.reproduced{background:#bfe3c8}.badge.delta{background:#e4e4e4}
.legend,.caption{font-size:.85rem;color:#444}
ol.notes{font-size:.8rem;color:#333;max-width:70rem}
"""

# Click a header to sort by it (again to reverse). A delta row stays under its reproduced row.
# Test hook: opening the page with #click=T.C[,T.C...] clicks header C of table T after load.
_JS = """
(function(){
function key(td){var v=td.getAttribute('data-v');if(v===null||v==='')return null;
 var n=Number(v);return isNaN(n)?v.toLowerCase():n;}
function sortBy(table,col){
 var th=table.tHead.rows[0].cells[col];
 var dir=th.getAttribute('aria-sort')==='ascending'?-1:1;
 var tb=table.tBodies[0],groups=[];
 Array.prototype.forEach.call(tb.rows,function(r){
  if(r.classList.contains('delta')&&groups.length)groups[groups.length-1].rows.push(r);
  else groups.push({rows:[r],i:groups.length});});
 groups.sort(function(a,b){var x=key(a.rows[0].cells[col]),y=key(b.rows[0].cells[col]);
  if(x===null&&y===null)return a.i-b.i;if(x===null)return 1;if(y===null)return -1;
  if(typeof x!==typeof y){x=String(x);y=String(y);}
  return x<y?-dir:x>y?dir:a.i-b.i;});
 groups.forEach(function(g){g.rows.forEach(function(r){tb.appendChild(r);});});
 Array.prototype.forEach.call(table.tHead.rows[0].cells,function(h){h.removeAttribute('aria-sort');});
 th.setAttribute('aria-sort',dir===1?'ascending':'descending');}
var tables=document.querySelectorAll('table.lb');
Array.prototype.forEach.call(tables,function(t){
 Array.prototype.forEach.call(t.tHead.rows[0].cells,function(th,i){
  th.tabIndex=0;th.addEventListener('click',function(){sortBy(t,i);});
  th.addEventListener('keydown',function(e){if(e.key==='Enter')sortBy(t,i);});});});
var m=/^#click=([0-9.,]+)$/.exec(location.hash);
if(m){m[1].split(',').forEach(function(s){var p=s.split('.');
 tables[+p[0]].tHead.rows[0].cells[+p[1]].click();});
 document.body.setAttribute('data-clicked',m[1]);}
document.body.setAttribute('data-ready',String(tables.length));
})();
"""


def _h(s) -> str:
    return html.escape(str(s), quote=True)


def _td(text: str, value=None, classes: str = "", title: str = "") -> str:
    v = "" if value is None else (repr(round(value, 6)) if isinstance(value, float) else
                                  str(value))
    attrs = f' data-v="{_h(v)}"'
    if classes:
        attrs += f' class="{classes}"'
    if title:
        attrs += f' title="{_h(title)}"'
    return f"<td{attrs}>{_h(text)}</td>"


def to_html(tables: list[Table], title: str = "fsbench leaderboard") -> str:
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{_h(title)}</title>",
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<style>{_CSS}</style></head><body>", f"<h1>{_h(title)}</h1>",
             '<p class="legend">Click a column header to sort (click again to reverse). '
             '<span class="badge published">published</span> rows come from papers, '
             '<span class="badge reproduced">reproduced</span> rows from fsbench runs, '
             '<span class="badge delta">delta</span> rows are ours − published. '
             f"{_h(LEGEND)}</p>"]
    for ti, t in enumerate(tables):
        parts.append(f'<h2 id="t{ti}">{_h(t.title)}</h2>')
        parts.append(f'<p class="caption">{_h(t.caption)}</p>')
        parts.append(f'<table class="lb" data-task="{_h(t.task)}" '
                     f'data-protocol="{_h(t.protocol)}"><thead><tr>')
        parts.extend(f'<th scope="col">{_h(h)}</th>' for h in t.header())
        parts.append("</tr></thead><tbody>")
        for r in t.rows:
            cls = r.kind + (" unverified" if r.verified == "no" else "")
            parts.append(f'<tr class="{cls}">')
            parts.append(_td(r.method, r.method))
            parts.append(f'<td data-v="{_h(r.kind)}"><span class="badge {r.kind}">'
                         f"{_h(r.kind)}</span></td>")
            parts.append(_td(r.backbone, r.backbone))
            parts.append(_td(r.pretraining, r.pretraining))
            for c in r.cells:
                parts.append(_td(c.text(), c.value, " ".join(x for x in ("num", c.mark) if x),
                                 c.title))
            parts.append(_td(r.verified or MISSING, r.verified or None, "verified"))
            parts.append(_td(str(r.ref), r.ref, "num"))
            parts.append("</tr>")
        parts.append("</tbody></table>")
        parts.append('<ol class="notes">' + "".join(f"<li>{_h(n)}</li>" for n in t.notes)
                     + "</ol>")
    parts.append(f"<script>{_JS}</script></body></html>")
    return "\n".join(parts) + "\n"


FORMATS = {"text": to_text, "md": to_markdown, "csv": to_csv, "html": to_html}

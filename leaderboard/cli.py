"""Sub-commands ``leaderboard``, ``plot``, ``submit`` and ``regress`` (leaderboard/README.md)."""
from __future__ import annotations

import functools
import sys
from pathlib import Path

from fsbench.errors import UserError

from .schema import ValidationError


def _lines_then_error(handler):
    """Print a ValidationError's problems one per line on stderr, then re-raise it (exit 2)."""
    @functools.wraps(handler)
    def wrapped(args) -> int:
        try:
            return handler(args)
        except ValidationError as e:
            for line in e.problems:
                print(line, file=sys.stderr)
            raise
    return wrapped


def _dir(args) -> Path | None:
    return Path(args.leaderboard_dir) if getattr(args, "leaderboard_dir", None) else None


def _methods(text: str | None) -> list[str] | None:
    if not text:
        return None
    out = [m.strip() for m in text.split(",") if m.strip()]
    return out or None


def _emit(text: str, output: str | None, what: str) -> None:
    from .store import atomic_write_text

    if output:
        atomic_write_text(output, text)
        print(f"wrote {what} to {output}", file=sys.stderr)
    else:
        sys.stdout.write(text)


@_lines_then_error
def cmd_leaderboard(args) -> int:
    from . import render, store

    lb = store.load(_dir(args))
    if not args.dataset:
        print("datasets with leaderboard entries: " + ", ".join(lb.datasets()))
        print("show one with `fsbench leaderboard --dataset NAME [--format md|csv|html]`")
        return 0
    tables = render.build_tables(lb, args.dataset, args.task, _methods(args.methods))
    fmt = args.format or (Path(args.output).suffix.lstrip(".").lower() if args.output else "text")
    fmt = {"markdown": "md", "htm": "html", "txt": "text"}.get(fmt, fmt)
    if fmt not in render.FORMATS:
        raise UserError(f"--format {fmt}: choose text, md, csv or html")
    if fmt == "html":
        text = render.to_html(tables, f"fsbench leaderboard — {args.dataset}")
    else:
        text = render.FORMATS[fmt](tables)
    _emit(text, args.output, f"the {args.dataset} leaderboard ({fmt})")
    return 0


@_lines_then_error
def cmd_plot(args) -> int:
    from . import plot, store

    lb = store.load(_dir(args))
    out = args.output or f"{args.dataset}-sessions.png"
    path = plot.plot(lb, args.dataset, _methods(args.methods), out, dpi=args.dpi,
                     size=args.size, title=args.title)
    print(f"wrote {path}")
    return 0


@_lines_then_error
def cmd_submit(args) -> int:
    from . import store

    root = Path(args.leaderboard_dir) if args.leaderboard_dir else store.user_dir()
    if not args.leaderboard_dir and root.resolve().is_relative_to(store.PACKAGE_DIR):
        raise UserError(f"fsbench submit would write into the installed package ({root}); "
                        f"run it from another folder or pass --leaderboard-dir DIR")
    try:
        sub, label = store.read_submission_input(args.run)
        if args.reproduces:
            sub["reproduces"] = args.reproduces
        if args.note:
            sub["note"] = args.note
        path = store.write_submission(sub, root, label)
    except ValidationError as e:
        raise ValidationError(e.problems, e.what, "nothing was added to the leaderboard") \
            from None
    shown = path.relative_to(root) if path.is_relative_to(root) else path
    print(f"submitted: {shown} (in {root})")
    return 0


@_lines_then_error
def cmd_regress(args) -> int:
    from . import regress, store

    root = _dir(args) or store.default_dir()
    if args.embedded or args.update:
        path = Path(args.expected) if args.expected else store.expected_path(root)
        if args.update:
            return regress.update_expected(path, _methods(args.methods), seed=args.seed)
        return regress.regress_embedded(path, _methods(args.methods))
    if args.expected or args.methods:
        raise UserError("--expected and --methods apply to --embedded only")
    if not 0 <= args.tolerance <= 100:
        raise UserError(f"--tolerance {args.tolerance}: give a number of points in [0, 100]")
    lb = store.load(root)
    return regress.regress_published(lb, args.tolerance)


def _regress_pin(args):
    from fsbench.repro import DEFAULT_THREADS

    return DEFAULT_THREADS if args.embedded else None


def add_commands(sub) -> None:
    lb_help = ("leaderboard folder (default: $FSBENCH_LEADERBOARD_DIR, else "
               "./fsbench-leaderboard if it exists, else the packaged leaderboard); a folder "
               "without published/ uses the packaged published entries")

    p = sub.add_parser("leaderboard", help="show published and reproduced results of a dataset",
                       description="Print the leaderboard of a dataset: published rows with "
                                   "provenance, our reproductions and the delta per session.")
    p.add_argument("--dataset", help="dataset, e.g. cub200, cifar100, miniimagenet")
    p.add_argument("--task", choices=("fscil", "fsl"), help="only FSCIL or only FSL tables")
    p.add_argument("--methods", help="comma-separated methods to show (default: all)")
    p.add_argument("--format", choices=("text", "md", "csv", "html"),
                   help="output format (default: text, or from --output's extension)")
    p.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of stdout")
    p.add_argument("--leaderboard-dir", metavar="DIR", help=lb_help)
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser("plot", help="plot accuracy per session (published dashed, ours solid)")
    p.add_argument("--dataset", required=True, help="an FSCIL dataset, e.g. cub200")
    p.add_argument("--methods", help="comma-separated methods, e.g. teen,ncm (default: all)")
    p.add_argument("--output", "-o", metavar="FILE",
                   help="a .png, .pdf or .svg file (default: <dataset>-sessions.png)")
    p.add_argument("--dpi", type=int, default=200, help="resolution of a .png (default 200)")
    p.add_argument("--size", metavar="W,H", help="figure size in inches (default 7.5,4.5)")
    p.add_argument("--title", help="the figure title (default: '<Dataset> — FSCIL'; '' for none)")
    p.add_argument("--leaderboard-dir", metavar="DIR", help=lb_help)
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("submit", help="validate a run (or a hand-written submission) and add it "
                                      "to the leaderboard")
    p.add_argument("run", metavar="RUN_DIR", help="a run folder with result.json, a result.json, "
                                                  "or a submission JSON file")
    p.add_argument("--reproduces", metavar="ID", help="published entry id this run reproduces "
                                                      "(default: matched by method, protocol "
                                                      "and backbone)")
    p.add_argument("--note", help="a note stored with the submission")
    p.add_argument("--leaderboard-dir", metavar="DIR",
                   help="leaderboard folder to add to (default: $FSBENCH_LEADERBOARD_DIR, else "
                        "./fsbench-leaderboard, created; never the installed package)")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("regress", help="fail when reproductions drift from published numbers "
                                       "(or, with --embedded, glyphs re-runs from "
                                       "expected/glyphs.json)")
    p.add_argument("--embedded", action="store_true",
                   help="re-run the glyphs presets and compare with expected/glyphs.json")
    p.add_argument("--update", action="store_true",
                   help="with --embedded: re-run and rewrite expected/glyphs.json")
    p.add_argument("--methods", help="with --embedded: only these methods (comma-separated)")
    p.add_argument("--expected", metavar="FILE", help="expected file (default: "
                                                      "<leaderboard-dir>/expected/glyphs.json)")
    p.add_argument("--seed", type=int, default=0, help="seed for new entries of --update")
    p.add_argument("--tolerance", type=float, default=1.0,
                   help="default tolerance in accuracy points per cell (default 1.0)")
    p.add_argument("--leaderboard-dir", metavar="DIR", help=lb_help)
    # --embedded always runs in the reproducible CPU mode (fsbench.repro), so that its numbers do
    # not depend on the machine's instruction set or core count.
    p.set_defaults(func=cmd_regress, pin=_regress_pin)

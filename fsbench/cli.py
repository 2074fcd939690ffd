"""The ``fsbench`` command line. Sub-commands are contributed by modules through ``add_commands``."""
from __future__ import annotations

import argparse
import importlib
import sys

from fsbench.errors import UserError

# Modules that contribute sub-commands: each has ``add_commands(subparsers)`` whose parsers call
# ``set_defaults(func=handler)``; ``handler(args) -> int`` raises UserError for bad input.
_COMMAND_MODULES = (
    "fsbench.commands",
    "fsbench.datacmd",
    "fsbench.sweep",
    "fsbench.extras",
    "fsbench.leaderboard.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fsbench", description="Few-shot and few-shot class-incremental learning benchmarks.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    from fsbench import __version__
    parser.add_argument("--version", action="version", version=f"fsbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # optional module not present yet
                continue
            raise
        mod.add_commands(sub)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        args.command_line = ["fsbench", *argv]
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        # Commands that must run in the reproducible CPU mode say so with ``pin(args)`` -> threads;
        # the environment is pinned before torch is imported (re-executing this process).
        pin = getattr(args, "pin", None)
        threads = pin(args) if pin else None
        if threads:
            from fsbench import repro
            repro.ensure(argv, threads)
        return int(args.func(args) or 0)
    except UserError as e:
        if debug:
            raise
        from fsbench.distributed import label

        print(f"fsbench: error: {label()}{e}", file=sys.stderr)
        return UserError.exit_code
    except BrokenPipeError:  # `fsbench list | head`: the reader has what it wanted
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt as e:
        import shlex

        if hasattr(e, "run_dir") and e.run_dir is None:  # stopped before its first checkpoint
            print("fsbench: interrupted before the run's first checkpoint; nothing was kept, "
                  "start it again", file=sys.stderr)
            return 130
        run_dir = shlex.quote(e.run_dir) if getattr(e, "run_dir", None) else "RUN_DIR"
        print(f"fsbench: interrupted; resume with `fsbench run --resume {run_dir}`",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

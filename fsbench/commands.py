"""Core sub-commands: ``run``, ``list``, ``show``, ``runs``."""
from __future__ import annotations

from pathlib import Path

from fsbench.errors import UserError


def cmd_run(args) -> int:
    from fsbench.registry import DATASETS, METHODS

    if args.resume is None and (not args.method or not args.dataset):
        raise UserError("fsbench run needs --method and --dataset (or --resume RUN_DIR); "
                        "`fsbench list` shows the choices")
    # Unknown names are refused before torch is imported (the registries list without importing).
    for value, registry in ((args.method, METHODS), (args.dataset, DATASETS)):
        if args.resume is None and value not in registry:
            registry.get(value)  # one line naming the choices
    if args.print_config:
        import yaml

        from fsbench import config

        if args.resume:
            raise UserError("--print-config applies to a new run, not --resume")
        cfg = config.resolve(args.method, args.dataset, args.preset, args.set)
        if args.seed is not None:
            cfg["seed"] = args.seed
        print(yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False), end="")
        return 0
    from fsbench.api import run

    run(args.method, args.dataset, data_root=args.data_root, split_dir=args.split_dir,
        preset=args.preset,
        overrides=args.set, seed=args.seed, device=args.device, out_dir=args.out,
        resume=args.resume, progress=args.progress, threads=args.threads,
        reproducible=args.reproducible, log_to=args.logger,
        command=getattr(args, "command_line", None))
    return 0


def _run_pin(args) -> int | None:
    """Threads of the reproducible mode for ``fsbench run`` (None: not reproducible).

    ``--resume`` keeps the mode and thread count the run was started with (``run.json``)."""
    from fsbench import repro

    if args.resume:
        import json

        try:
            with open(Path(args.resume) / "run.json") as f:
                inv = json.load(f)
            saved = inv.get("reproducible") if isinstance(inv, dict) else None
        except (OSError, ValueError):
            return None  # fsbench.api.run reports the unreadable run file
        return repro.check_threads(saved) if saved else None
    if not args.reproducible:
        return None
    return repro.check_threads(args.threads) if args.threads is not None else \
        repro.DEFAULT_THREADS


def cmd_list(args) -> int:
    from fsbench.registry import DATASETS, METHODS

    print("methods:")
    for name, task, summary in METHODS.listing():
        print(f"  {name:<14} {task:<6} {summary}")
    print("datasets:")
    for name, task, summary in DATASETS.listing():
        print(f"  {name:<14} {task:<6} {summary}")
    return 0


def cmd_show(args) -> int:
    from fsbench import runviews

    results = [(str(p), runviews.load_result(p)) for p in args.run_dirs]
    print(runviews.show(results, args.format))
    return 0


def cmd_runs(args) -> int:
    from fsbench import runviews

    print(runviews.runs_table(runviews.list_runs(args.dir), args.format))
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("run", help="train and evaluate a method on a dataset")
    p.add_argument("--method", help="method name (fsbench list)")
    p.add_argument("--dataset", help="dataset name (fsbench list)")
    p.add_argument("--data-root", help="folder holding the dataset (default $FSBENCH_DATA)")
    p.add_argument("--split-dir", help="the official FSCIL index_list folder (TOPIC/CEC), "
                   "verified by checksum; without it a seeded split is generated")
    p.add_argument("--preset", help="a YAML file merged over the packaged preset")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a preset key, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--seed", type=int, help="random seed (default from the preset, else 0)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--out", default="runs", help="folder for run directories (default runs/)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    bars = p.add_mutually_exclusive_group()
    bars.add_argument("--progress", action="store_true", default=None,
                      help="draw progress bars even when the output is not a terminal")
    bars.add_argument("--no-progress", dest="progress", action="store_false",
                      help="no progress bars (default: bars only when stdout and stderr are "
                           "terminals)")
    p.add_argument("--logger", action="append", metavar="NAME",
                   help="also log to NAME: csv (RUN_DIR/curves.csv) or tensorboard "
                        "(RUN_DIR/tensorboard/, pip install 'fsbench[tensorboard]'); repeatable; "
                        "a resumed run keeps its loggers")
    p.add_argument("--reproducible", action="store_true",
                   help="numbers independent of the machine: pin the CPU kernels to AVX2, "
                        "MKL's reproducible mode and a fixed thread count (slower where AVX-512 "
                        "exists); see fsbench/repro.py")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads (recorded in result.json; with --reproducible default 2)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved configuration (presets, --preset, --set) and exit")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.set_defaults(func=cmd_run, pin=_run_pin)

    p = sub.add_parser("list", help="list methods and datasets")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", help="print the table of a run, or several runs side by side")
    p.add_argument("run_dirs", metavar="RUN_DIR", nargs="+",
                   help="run folders (or their result.json)")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table",
                   help="table (default; several runs: a column each), csv (one row per "
                        "session or shot) or json")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("runs", help="list the runs in a folder: method, dataset, seed, status, "
                                    "AVG/last or shot accuracies")
    p.add_argument("dir", metavar="DIR", nargs="?", default="runs",
                   help="the --out folder of the runs (default runs/)")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.set_defaults(func=cmd_runs)

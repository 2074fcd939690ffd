"""Core sub-commands: ``run``, ``list``, ``show``, ``runs``."""
from __future__ import annotations

from pathlib import Path

from fsbench.errors import UserError


def cmd_run(args) -> int:
    from fsbench.registry import DATASETS, METHODS

    if args.resume is None and (not args.method or not args.dataset):
        raise UserError("fsbench run needs --method and --dataset (or --resume RUN_DIR); "
                        "`fsbench list` shows the choices")
    from fsbench.plugins import is_import_path

    # Unknown names are refused before torch is imported (the registries list without importing);
    # an import path (pkg.module:Class, file.py:Class) is checked when it is imported.
    for value, registry in ((args.method, METHODS), (args.dataset, DATASETS)):
        if args.resume is None and value not in registry and not is_import_path(value):
            registry.get(value)  # one line naming the choices
    if args.print_config:
        import yaml

        from fsbench import config

        if args.resume:
            raise UserError("--print-config applies to a new run, not --resume")
        entry = METHODS.get(args.method)
        cfg = config.resolve(entry.name, args.dataset, args.preset, args.set, learner=entry.obj)
        if args.seed is not None:
            cfg["seed"] = args.seed
        print(yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False), end="")
        return 0
    from fsbench.api import run

    run(args.method, args.dataset, data_root=args.data_root, split_dir=args.split_dir,
        preset=args.preset,
        overrides=args.set, seed=args.seed, device=args.device, out_dir=args.out,
        resume=args.resume, progress=args.progress, threads=args.threads,
        reproducible=args.reproducible, base_from=args.base_from, run_dir=args.run_dir,
        log_to=args.logger, command=getattr(args, "command_line", None))
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
    from fsbench.registry import BACKBONES, DATASETS, METHODS

    print("methods:")
    for name, task, summary in METHODS.listing():
        print(f"  {name:<14} {task:<6} {summary}")
    print("datasets:")
    for name, task, summary in DATASETS.listing():
        print(f"  {name:<14} {task:<6} {summary}")
    plugged = BACKBONES.listing()
    if plugged:  # the built-in backbones are listed in the README (listing them imports torch)
        print("backbone plug-ins:")
        for name, _task, summary in plugged:
            print(f"  {name:<14} {summary}")
    return 0


def cmd_show(args) -> int:
    from fsbench import runviews, summary

    paths = [Path(p) for p in args.run_dirs]
    sums = [p for p in paths if summary.is_summary(p)]
    if sums:
        if len(sums) != len(paths) or args.format != "table":
            raise UserError("fsbench show: give run folders, or sweep summaries (SUMMARY.json or "
                            "SWEEP_DIR) on their own and without --format; a summary is JSON "
                            "already")
        print("\n\n".join(summary.show(p) for p in sums))
        return 0
    results = [(str(p), runviews.load_result(p)) for p in args.run_dirs]
    print(runviews.show(results, args.format))
    return 0


def cmd_runs(args) -> int:
    from fsbench import runviews

    print(runviews.runs_table(runviews.list_runs(args.dir), args.format))
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("run", help="train and evaluate a method on a dataset")
    p.add_argument("--method", help="method name (fsbench list), or a learner class to import: "
                   "my_pkg.module:MyLearner or path/to/file.py:MyLearner")
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
    p.add_argument("--run-dir", metavar="DIR", help="the new run's folder, exactly (default "
                   "OUT/<time>-<method>-<dataset>); used by `fsbench sweep`")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    p.add_argument("--base-from", metavar="RUN_DIR",
                   help="FSCIL: load the base session's model from an earlier compatible run "
                        "(same dataset, split, seed, base configuration) and skip base training")
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

    p = sub.add_parser("show", help="print the table of a run, several runs side by side, or a "
                                    "sweep's summary (mean ± std over seeds)")
    p.add_argument("run_dirs", metavar="RUN_DIR|SUMMARY.json|SWEEP_DIR", nargs="+",
                   help="run folders (or their result.json), or sweep summaries")
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

"""``fsbench data check|prepare|download``: the standard datasets on disk.

* ``check`` - layout, image and class counts per split (against the published counts), unreadable
  images, the FSCIL split files' checksums and whether they fit the data, prepared caches. Prints
  one row per check and how to fix what is wrong; exit 0 when nothing failed, 2 otherwise
  (``--strict``: warnings count too).
* ``prepare`` - decode and resize every image once into ``$FSBENCH_CACHE/prepared/
  <dataset>-<split>-<resolution>/`` (``images.npy`` uint8, ``labels.npy``, ``meta.json``); later
  loads at that resolution memory-map it automatically.
* ``download`` - fetch CIFAR-100 (the only standard set with a stable public URL and checksum)
  into the data root, verified by MD5 and extracted atomically.

``check`` and ``prepare`` never write into the data root.
"""
from __future__ import annotations

import math
import os
import shutil
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


from fsbench.errors import UserError

DOWNLOAD_HELP = {
    "cub200": "download CUB_200_2011.tgz (md5 97eceeb196236b17998738112f37df78) from "
              "https://data.caltech.edu/records/65de6-vp158 and extract it into the data root",
    "miniimagenet": "build images/ + CSVs from ILSVRC-2012 with the mini-imagenet-tools scripts, "
                    "add split/{train,test}.csv from the CEC repository (data/index_list/"
                    "mini_imagenet) for FSCIL, or use the Ren et al. pickle caches",
    "tieredimagenet": "get the Ren et al. tiered-imagenet pickles ({train,val,test}_images_png.pkl "
                      "and _labels.pkl) and put them in <data root>/tiered-imagenet/",
    "omniglot": "download images_background.zip and images_evaluation.zip from "
                "https://github.com/brendenlake/omniglot (python/) and extract both into "
                "<data root>/omniglot/",
}
OK, WARN, FAIL = "ok", "WARN", "FAIL"


@dataclass
class Row:
    check: str
    status: str
    detail: str
    fix: str = ""


# ---------------------------------------------------------------------------------- helpers
def _entry(name: str):
    from fsbench.registry import DATASETS

    entry = DATASETS.get(name)
    if "splits" not in entry.extra:
        raise UserError(f"dataset {name} is not read from a data root (it is generated); "
                        f"data check/prepare apply to: {', '.join(_disk_datasets())}")
    return entry


def _disk_datasets() -> list:
    from fsbench.registry import DATASETS

    return [e.name for e in DATASETS.entries() if "splits" in e.extra]


def _root(arg) -> Path | None:
    root = arg or os.environ.get("FSBENCH_DATA")
    return Path(root).expanduser() if root else None


def _tasks(entry, task: str | None) -> list:
    if task:
        if entry.task not in (task, "both"):
            raise UserError(f"{entry.name} has no {task.upper()} protocol (it is {entry.task})")
        return [task]
    return ["fscil", "fsl"] if entry.task == "both" else [entry.task]


def _options(args) -> dict:
    o = {}
    if getattr(args, "form", None):
        o["form"] = args.form
    if getattr(args, "bbox_crop", False):
        o["bbox_crop"] = True
    return o


def _res(entry, arg) -> int | None:
    if arg is None:
        return entry.extra.get("resolution")
    if arg < 1:
        raise UserError(f"--resolution must be a positive integer, got {arg}")
    return arg


def _n(x: int) -> str:
    return f"{x:,}"


# ---------------------------------------------------------------------------------- check
def _check_split(split, res, scan_images: bool) -> list:
    from fsbench.episodes import prepare as P

    rows = []
    label = split.name.replace("_", " ")
    try:
        data = split.source(res)
    except UserError as e:
        return [Row(f"{label} files", FAIL, str(e), "re-extract or complete the dataset")]
    import numpy as np

    classes, per = np.unique(data.labels, return_counts=True)
    detail = (f"{_n(len(data))} images, {len(classes)} classes, "
              f"{per.min() if len(per) else 0}-{per.max() if len(per) else 0} per class")
    off = split.official
    diff = [f"{k} {_n(v)}" for k, v in off.items()
            if v != {"images": len(data), "classes": len(classes)}[k]]
    if diff:
        rows.append(Row(f"{label} counts", WARN, f"{detail}; the published split has "
                        f"{', '.join(diff)}", "a partial copy gives numbers that are not "
                        "comparable with papers; re-extract the complete dataset"))
    else:
        rows.append(Row(f"{label} counts", OK, detail))
    if scan_images and P.decodes(data):
        t0 = time.perf_counter()
        errs = [msg for _, msg in P.unreadable(data)]
        if errs:
            rows.append(Row(f"{label} images", FAIL, f"{len(errs)} of {_n(len(data))} unreadable; "
                            f"first: {errs[0].split('; replace')[0]}",
                            "replace the files (re-extract them), or set skip_corrupt "
                            "(--set data.options.skip_corrupt=true / data prepare --skip-corrupt) "
                            "to leave them out"))
        else:
            rows.append(Row(f"{label} images", OK, f"all {_n(len(data))} decode "
                            f"({time.perf_counter() - t0:.1f} s)"))
    hit, why = P.cache_status(split, res, verify="always")  # content hash checked every time
    if hit is not None:
        rows.append(Row(f"{label} prepared", OK, f"{P.cache_dir(split, res)} "
                        f"({_n(len(hit[0]))} images, content hash ok)"))
    elif why:
        rows.append(Row(f"{label} prepared", WARN, why.split("; ignoring it")[0],
                        f"rerun fsbench data prepare --dataset {split.dataset}"))
    return rows


def _check_split_files(name, root, splits, split_dir, res) -> list:
    from fsbench.episodes import fscil_splits as F

    rows = []
    folder = F.FOLDERS[name]
    for fname, path in splits["train"].index_files.items():
        want = F.checksums()[folder].get(fname)
        if want and F.sha256_file(path) != want["sha256"]:
            rows.append(Row(f"fscil {fname}", WARN,
                            f"{path} differs from {F.describe(folder, fname)}",
                            f"copy {folder}/{fname} from the CEC index_list"))
    split_dir = split_dir or F.default_split_dir(root, name)
    if split_dir is None:
        rows.append(Row("fscil split files", WARN, "none given: runs will use a seeded generated "
                        "split (split_id 'generated'), not comparable with papers",
                        "pass --split-dir INDEX_LIST (the data/index_list folder of the CEC "
                        "repository) to data check and to fsbench run"))
        return rows
    try:
        checks = F.check_folder(split_dir, name)
    except UserError as e:
        return rows + [Row("fscil split files", FAIL, str(e), F.OFFICIAL)]
    bad = [c for c in checks if not c.ok]
    for c in bad:
        rows.append(Row(f"fscil {c.name}", FAIL, c.message(folder).split("; use")[0], F.OFFICIAL))
    if not bad:
        rows.append(Row("fscil split files", OK, f"{len(checks)} files in {checks[0].path.parent} "
                        f"match the official checksums"))
    if any(c.sha256 is None for c in checks):
        return rows
    try:  # do the files fit the data on disk?
        train = splits["train"].source(res)
        keys = len(train) if name == "cifar100" else splits["train"].keys
        proto, _ = F.build_protocol(name, train.labels, keys, split_dir=split_dir, verify=False)
        n = sum(len(proto.train_indices(t)) for t in range(proto.num_sessions))
        rows.append(Row("fscil sessions", OK, f"every session file maps onto the training split "
                        f"({n} images)"))
    except UserError as e:
        rows.append(Row("fscil sessions", FAIL, str(e), "use split files and data of the same "
                        "release (official index_list + official dataset)"))
    return rows


def cmd_check(args) -> int:
    from fsbench.episodes.prepare import require_root

    entry = _entry(args.dataset)
    root = require_root(entry.name, _root(args.data_root), entry.extra["layout"])
    res = _res(entry, args.resolution)
    rows: list[Row] = []
    tasks = _tasks(entry, args.task)
    found_any = False
    for task in tasks:
        try:
            splits = entry.extra["splits"](root, task, _options(args))
        except UserError as e:
            fix = DOWNLOAD_HELP.get(entry.name, "run fsbench data download cifar100")
            rows.append(Row(f"{task} layout", FAIL, str(e), fix))
            continue
        found_any = True
        rows.append(Row(f"{task} layout", OK, f"{entry.extra['layout']} under {root}"))
        for split in splits.values():
            rows += _check_split(split, res, not args.no_images)
        if task == "fscil":
            rows += _check_split_files(entry.name, root, splits, args.split_dir, res)
    layout = [r for r in rows if r.check.endswith("layout") and r.status == FAIL]
    if len(layout) > 1 and len({r.detail for r in layout}) == 1:  # same files for both tasks
        rows = [Row("layout", FAIL, layout[0].detail, layout[0].fix)]
    if found_any and len(tasks) > 1:  # a form present for one task only is not a failure
        rows = [r if not (r.status == FAIL and r.check.endswith("layout")) else
                Row(r.check, WARN, r.detail, r.fix) for r in rows]
    _print_rows(entry.name, root, rows)
    failed = [r for r in rows if r.status == FAIL or (args.strict and r.status == WARN)]
    warned = [r for r in rows if r.status == WARN]
    if failed:
        print(f"{entry.name}: {len(failed)} problem(s) to fix" +
              (f", {len(warned)} warning(s)" if warned and not args.strict else ""))
        return 2
    print(f"{entry.name}: all good" + (f" ({len(warned)} warning(s))" if warned else ""))
    return 0


def _print_rows(name: str, root, rows) -> None:
    width = max([len(r.check) for r in rows] + [5])
    print(f"fsbench data check: {name} (data root {root})")
    print(f"  {'STATUS':<6}  {'CHECK':<{width}}  DETAIL")
    for r in rows:
        print(f"  {r.status:<6}  {r.check:<{width}}  {r.detail}")
        if r.fix and r.status != OK:
            print(f"  {'':<6}  {'':<{width}}  fix: {r.fix}")


# ---------------------------------------------------------------------------------- prepare
def cmd_prepare(args) -> int:
    from fsbench.episodes.prepare import prepare_split

    entry = _entry(args.dataset)
    root = _root(args.data_root)
    res = _res(entry, args.resolution)
    tasks = _tasks(entry, args.task)
    jobs, errors = {}, []
    for task in tasks:
        try:
            for split in entry.extra["splits"](root, task, _options(args)).values():
                jobs.setdefault(split.key(res), split)
        except UserError as e:
            errors.append(e)
    if not jobs:
        raise errors[0]
    for e in errors:  # e.g. miniImageNet present in its FSL form only
        print(f"note: {e}", file=sys.stderr)
    tty = sys.stderr.isatty()
    for key, split in jobs.items():
        def progress(done, total, key=key):
            if tty:
                print(f"\r  {key}: {done}/{total}", end="", file=sys.stderr, flush=True)
        meta = prepare_split(split, res, skip_corrupt=args.skip_corrupt, workers=args.workers,
                             progress=progress)
        if tty:
            print("\r", end="", file=sys.stderr)
        mb = math.prod(meta["shape"]) / 2**20
        print(f"  {key}: {_n(meta['count'])} images {'x'.join(map(str, meta['shape'][1:]))} "
              f"uint8, {mb:.1f} MiB, {meta['seconds']:.1f} s -> {meta['path']}")
        if meta["skipped"]:
            print(f"    skipped {len(meta['skipped'])} unreadable image(s) "
                  f"(first: {meta['skipped'][0]})")
    print(f"{entry.name}: prepared {len(jobs)} split(s); runs at resolution "
          f"{res} use them automatically")
    return 0


# ---------------------------------------------------------------------------------- download
def copy_with_bar(response, out, desc: str, chunk: int = 1 << 20) -> int:
    """Copy an HTTP ``response`` into the file ``out`` with a progress bar in bytes (sized by the
    Content-Length when the server sends one); returns the bytes copied."""
    from fsbench.context import progress_bar

    size = response.headers.get("Content-Length") if getattr(response, "headers", None) else None
    done = 0
    with progress_bar(total=int(size) if size and size.isdigit() else None, desc=desc, leave=True,
                      unit="B", unit_scale=True, unit_divisor=1024) as bar:
        while block := response.read(chunk):
            out.write(block)
            done += len(block)
            bar.update(len(block))
    return done


def _safe_extract(tar: "tarfile.TarFile", dest: Path) -> None:
    """Extract only plain files and folders inside ``dest``: tarfile's ``data`` filter where the
    Python has it (3.11.4+, 3.10.12+), the same refusals written out on older ones."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    root = dest.resolve()
    for m in tar.getmembers():
        target = (dest / m.name).resolve()
        if not (m.isfile() or m.isdir()) or m.name.startswith("/") or \
                not target.is_relative_to(root):
            raise UserError(f"the archive member {m.name!r} is not a plain file inside the "
                            f"archive's folder; refusing to extract it")
    tar.extractall(dest)


def cmd_download(args) -> int:
    from fsbench.episodes import cifar
    from fsbench.episodes.fscil_splits import file_digest

    name = args.dataset
    if name not in ("cifar100", "cifarfs", "fc100"):
        how = DOWNLOAD_HELP.get(name)
        if how is None:
            raise UserError(f"unknown dataset {name!r}; fsbench downloads cifar100 (also used by "
                            f"cifarfs and fc100)")
        raise UserError(f"fsbench cannot download {name} (no stable public URL with a checksum); "
                        f"{how}")
    root = _root(args.data_root)
    if root is None:
        raise UserError("pass --data-root DIR (or set FSBENCH_DATA): the archive is extracted to "
                        "DIR/cifar-100-python/")
    dest = root / cifar.FOLDER
    if all((dest / f).is_file() for f in ("train", "test", "meta")):
        print(f"{dest} is already there")
        return 0
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".cifar-100-python.tar.gz.", dir=root)
    tmp = Path(tmp_name)
    work = None
    try:
        import urllib.request

        print(f"downloading {cifar.URL}")
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(cifar.URL, timeout=60) as r:
            copy_with_bar(r, out, "cifar-100-python.tar.gz")
        got = file_digest(tmp, "md5")
        if got != cifar.MD5:
            raise UserError(f"downloaded {cifar.URL} has md5 {got}, expected {cifar.MD5} "
                            f"(cifar-100-python.tar.gz); try again")
        work = Path(tempfile.mkdtemp(prefix=".cifar-100-python.", dir=root))
        with tarfile.open(tmp) as tar:
            _safe_extract(tar, work)
        if not (work / cifar.FOLDER / "train").is_file():
            raise UserError(f"{cifar.URL} did not contain {cifar.FOLDER}/train")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(work / cifar.FOLDER, dest)
    except OSError as e:
        raise UserError(f"download of {cifar.URL} failed: {e}") from None
    finally:
        tmp.unlink(missing_ok=True)
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{dest}: CIFAR-100 ready (md5 {cifar.MD5} verified)")
    return 0


# ---------------------------------------------------------------------------------- parser
def add_commands(sub) -> None:
    p = sub.add_parser("data", help="check, prepare or download the standard datasets on disk",
                       description="Standard datasets on disk (never written to, except by "
                                   "download).")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    act = p.add_subparsers(dest="data_command", metavar="ACTION")

    def common(q):
        q.add_argument("--dataset", required=True, help="dataset name (fsbench list)")
        q.add_argument("--data-root", help="folder holding the dataset (default $FSBENCH_DATA)")
        q.add_argument("--task", choices=["fsl", "fscil"],
                       help="only this task's splits (default: every task the dataset has)")
        q.add_argument("--form", choices=["fscil", "ravi", "pickle"],
                       help="miniimagenet on-disk form (default: found automatically)")
        q.add_argument("--bbox-crop", action="store_true",
                       help="cub200: crop images to their bounding boxes")
        q.add_argument("--resolution", type=int,
                       help="image side in pixels (default: the dataset's usual size)")

    q = act.add_parser("check", help="layout, counts, unreadable images, split-file checksums")
    common(q)
    q.add_argument("--split-dir", help="the TOPIC/CEC index_list folder (FSCIL split files)")
    q.add_argument("--no-images", action="store_true", help="do not decode every image")
    q.add_argument("--strict", action="store_true", help="warnings count as problems")
    q.set_defaults(func=cmd_check)

    q = act.add_parser("prepare", help="decode every image once into a memory-mapped cache "
                                       "under $FSBENCH_CACHE/prepared/")
    common(q)
    q.add_argument("--skip-corrupt", action="store_true",
                   help="leave unreadable images out (reported) instead of stopping")
    q.add_argument("--workers", type=int, help="decoding threads (default: CPU cores, max 8)")
    q.set_defaults(func=cmd_prepare)

    q = act.add_parser("download", help="download CIFAR-100 (verified by MD5) into the data root")
    q.add_argument("dataset", help="cifar100 (cifarfs and fc100 use the same files)")
    q.add_argument("--data-root", help="where to put it (default $FSBENCH_DATA)")
    q.set_defaults(func=cmd_download)

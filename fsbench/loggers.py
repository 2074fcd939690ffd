"""Loggers are plug-ins (Avalanche style): the runner calls hooks, loggers decide what to write.

Always on: :class:`ConsoleLogger` (the run folder, a line per epoch, session and shot, the final
table; replaced by ``fsbench.api.run(loggers=...)``), :class:`FileLogger` (``run.log``) and
:class:`JSONLinesLogger` (``metrics.jsonl``: one record per session, shot, training epoch and
model selection). Chosen with ``fsbench run --logger NAME`` (:data:`LOGGERS`): ``csv``
(``RUN_DIR/curves.csv``, the training curves) and ``tensorboard`` (``RUN_DIR/tensorboard/``, the
optional extra ``pip install 'fsbench[tensorboard]'``). Add your own by subclassing
:class:`Logger` and passing it to :func:`fsbench.api.run`, or by name with
:func:`register_logger`.

Events: ``on_start`` (with ``run_dir``), ``on_message``, ``on_epoch`` / ``on_step`` /
``on_selection`` (training curves, :mod:`fsbench.curves`), ``on_session`` (FSCIL), ``on_shot``
(FSL), ``on_resume``, ``on_end``.
"""
from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Callable

from fsbench.errors import UserError


class Logger:
    def on_start(self, info: dict) -> None: ...
    def on_message(self, text: str) -> None: ...
    def on_epoch(self, record: dict) -> None:
        """One training epoch: ``{kind, session, stage, epoch, loss, val_acc?, lr?, ...}``."""
    def on_step(self, record: dict) -> None:
        """One optimisation step: ``{kind, session, stage, step, loss, ...}`` (not stored)."""
    def on_selection(self, record: dict) -> None:
        """The epoch a trainer kept: ``{kind, session, stage, selected_epoch, select}``."""
    def on_session(self, record: dict) -> None: ...
    def on_shot(self, shot: int, record: dict) -> None: ...
    def on_end(self, result: dict) -> None: ...
    def on_resume(self, next_index: int) -> None:
        """A resumed run continues at session ``next_index`` (FSL: 1 when the fit was
        checkpointed, else 0; the episodes are always evaluated again); records of later sessions
        from the interrupted process will be written again."""


def _fmt(v, nd=2):
    return "-" if v is None else f"{v:.{nd}f}"


def fscil_table(result: dict) -> str:
    m = result["metrics"]
    lines = [f"{result['method']} on {result['dataset']} "
             f"(split {result['split']['id'][:24]}, seed {result['seed']})",
             f"{'session':>7} {'classes':>7} {'acc':>7} {'base':>7} {'novel':>7} {'hm':>7}"]
    for s in m["sessions"]:
        lines.append(f"{s['session']:>7} {s['num_seen']:>7} {_fmt(s['acc']):>7} "
                     f"{_fmt(s['base_acc']):>7} {_fmt(s['novel_acc']):>7} {_fmt(s['hm']):>7}")
    if "avg" in m:
        lines.append(f"AVG {m['avg']:.2f}  PD {m['pd']:.2f}  last {m['last']:.2f}")
    return "\n".join(lines)


def fsl_table(result: dict) -> str:
    split = result["split"]
    lines = [f"{result['method']} on {result['dataset']}: {split['way']}-way, "
             f"{split['query']} queries, {split['episodes']} episodes (seed {result['seed']})",
             f"{'shot':>5} {'acc':>7} {'±95%':>6}"]
    for k, v in result["metrics"]["shots"].items():
        lines.append(f"{k:>5} {v['mean']:>7.2f} {v['ci95']:>6.2f}")
    return "\n".join(lines)


def result_table(result: dict) -> str:
    return fscil_table(result) if result["task"] == "fscil" else fsl_table(result)


def _value(key: str, v) -> str:
    if not isinstance(v, float):
        return str(v)
    return f"{v:.2f}" if key.endswith("acc") else f"{v:.4g}" if key == "lr" else f"{v:.4f}"


def epoch_line(record: dict) -> str:
    """``base epoch 3: loss 0.8312  val_acc 71.20  lr 0.05`` (``session 2 ...`` after the base)."""
    where = f"session {record['session']} " if record["session"] else ""
    values = "  ".join(f"{k} {_value(k, v)}" for k, v in record.items()
                       if k not in ("kind", "session", "stage", "epoch") and v is not None)
    return f"{where}{record['stage']} epoch {record['epoch']}: {values}"


def session_line(record: dict) -> str:
    parts = [f"session {record['session']}: acc {record['acc']:.2f}"]
    for k in ("base_acc", "novel_acc"):
        if record.get(k) is not None:
            parts.append(f"{k.split('_')[0]} {record[k]:.2f}")
    return "  ".join(parts) + f"  ({record['num_seen']} classes)"


class ConsoleLogger(Logger):
    """The run folder, a line per training epoch, session and shot (they stay above the progress
    bars), and the final table."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout

    def _print(self, text):
        from tqdm.auto import tqdm

        tqdm.write(text, file=self.stream)
        self.stream.flush()

    def on_start(self, info):
        self._print(f"run folder: {info['run_dir']}" + (" (resumed)" if info.get("resume") else ""))

    def on_message(self, text):
        self._print(text)

    def on_epoch(self, record):
        self._print(epoch_line(record))

    def on_selection(self, record):
        if record["selected_epoch"] is not None:
            self._print(f"{record['stage']}: kept epoch {record['selected_epoch']} "
                        f"(selection: {record['select']})")

    def on_session(self, record):
        self._print(session_line(record))

    def on_shot(self, shot, record):
        self._print(f"{shot}-shot: {record['mean']:.2f} ± {record['ci95']:.2f} "
                    f"({record['n_episodes']} episodes)")

    def on_end(self, result):
        self._print(f"run folder: {result['run_dir']}\n{result_table(result)}")


class FileLogger(Logger):
    def __init__(self, path: Path):
        self.path = Path(path)

    def _write(self, text: str) -> None:
        with open(self.path, "a") as f:
            f.write(text.rstrip("\n") + "\n")

    def on_start(self, info):
        self._write(f"start {json.dumps(info, sort_keys=True)}")

    def on_message(self, text):
        self._write(text)

    def on_epoch(self, record):
        self._write(f"epoch {json.dumps(record)}")

    def on_selection(self, record):
        self._write(f"selection {json.dumps(record)}")

    def on_session(self, record):
        self._write(f"session {json.dumps(record)}")

    def on_shot(self, shot, record):
        brief = {k: v for k, v in record.items() if k != "per_episode"}
        self._write(f"shot {shot} {json.dumps(brief)}")

    def on_end(self, result):
        self._write(result_table(result))


class JSONLinesLogger(Logger):
    _KEPT = ("session", "epoch", "selection")  # kept on resume when their session is finished

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_resume(self, next_index):
        """Drop what the interrupted process logged past its last checkpoint (a session whose
        checkpoint write was killed, partial shot records), so every record appears once."""
        if not self.path.is_file():
            return
        from fsbench.atomic import atomic_write_text

        keep = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut short by the kill
            if rec.get("kind") in self._KEPT and int(rec.get("session", -1)) < next_index:
                keep.append(line)
        atomic_write_text(self.path, "".join(ln + "\n" for ln in keep))

    def _append(self, rec):
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    def on_epoch(self, record):
        self._append(record)

    def on_selection(self, record):
        self._append(record)

    def on_session(self, record):
        self._append({"kind": "session", **record})

    def on_shot(self, shot, record):
        self._append({"kind": "shot", "shot": shot,
                      **{k: v for k, v in record.items() if k != "per_episode"}})


class CSVLogger(Logger):
    """The training curves as a table, ``RUN_DIR/curves.csv``: one row per reported epoch, columns
    ``session, stage, epoch`` and every value a trainer reported (empty where it reported none).
    The file is rewritten (atomically) after every epoch, so it is complete at every moment."""

    FILE = "curves.csv"

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else None
        self.rows: list[dict] = []

    def on_start(self, info):
        if self.path is None:
            self.path = Path(info["run_dir"]) / self.FILE

    def on_resume(self, next_index):
        """Keep the rows of finished sessions; the interrupted one is reported again."""
        if self.path is None or not self.path.is_file():
            return
        with open(self.path, newline="") as f:
            self.rows = [r for r in csv.DictReader(f)
                         if r.get("session", "").isdigit() and int(r["session"]) < next_index]
        self._flush()

    def on_epoch(self, record):
        self.rows.append({k: v for k, v in record.items() if k != "kind"})
        self._flush()

    def _flush(self):
        from fsbench.atomic import atomic_write_text

        cols = list(dict.fromkeys(k for r in self.rows for k in r))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, restval="", lineterminator="\n")
        w.writeheader()
        w.writerows(self.rows)
        atomic_write_text(self.path, buf.getvalue())


class TensorBoardLogger(Logger):
    """Scalars for TensorBoard in ``RUN_DIR/tensorboard/``: per-epoch and per-step training values
    (tag ``STAGE/KEY``, ``sessionN/STAGE/KEY`` after the base session), session accuracies
    (``fscil/acc``...) and shot accuracies (``fsl/acc``). Needs the optional extra
    ``pip install 'fsbench[tensorboard]'``."""

    def __init__(self, log_dir: str | Path | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("--logger tensorboard needs the tensorboard package: "
                            "pip install 'fsbench[tensorboard]'") from None
        self._writer_cls, self.log_dir, self.writer = SummaryWriter, log_dir, None

    def on_start(self, info):
        self.writer = self._writer_cls(str(self.log_dir or Path(info["run_dir"]) / "tensorboard"))

    def _scalars(self, prefix: str, record: dict, step: int, skip=()) -> None:
        for k, v in record.items():
            if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool):
                self.writer.add_scalar(f"{prefix}/{k}", v, step)

    @staticmethod
    def _prefix(record):
        return record["stage"] if not record["session"] else \
            f"session{record['session']}/{record['stage']}"

    def on_epoch(self, record):
        self._scalars(self._prefix(record), record, record["epoch"], ("session", "epoch"))

    def on_step(self, record):
        self._scalars(self._prefix(record) + "/step", record, record["step"],
                      ("session", "step"))

    def on_session(self, record):
        self._scalars("fscil", record, record["session"], ("session",))
        self.writer.flush()  # a session is a checkpoint: its curves are on disk too

    def on_shot(self, shot, record):
        self._scalars("fsl", {"acc": record["mean"], "ci95": record["ci95"]}, shot)

    def on_end(self, result):
        if self.writer is not None:
            self.writer.close()


LOGGERS: dict[str, Callable[[], Logger]] = {"csv": CSVLogger, "tensorboard": TensorBoardLogger}


def register_logger(name: str):
    """Make a :class:`Logger` subclass (constructed without arguments; it learns the run folder in
    ``on_start``) selectable as ``fsbench run --logger NAME``."""
    def deco(cls):
        LOGGERS[name] = cls
        return cls
    return deco


def make_loggers(names) -> list[Logger]:
    """Loggers by name (``--logger``); an unknown name is a one-line error listing the choices."""
    out = []
    for name in names or []:
        if name not in LOGGERS:
            raise UserError(f"--logger {name}: unknown logger; choose from "
                            f"{', '.join(sorted(LOGGERS))}")
        out.append(LOGGERS[name]())
    return out

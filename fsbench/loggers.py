"""Loggers are plug-ins (Avalanche style): the runner calls hooks, loggers decide what to write.

Built-ins: :class:`ConsoleLogger` (the end-of-run table), :class:`FileLogger` (``run.log``) and
:class:`JSONLinesLogger` (``metrics.jsonl``, one record per session or shot). Add your own by
subclassing :class:`Logger` and passing it to :func:`fsbench.api.run`.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


class Logger:
    def on_start(self, info: dict) -> None: ...
    def on_message(self, text: str) -> None: ...
    def on_session(self, record: dict) -> None: ...
    def on_shot(self, shot: int, record: dict) -> None: ...
    def on_end(self, result: dict) -> None: ...
    def on_resume(self, next_index: int) -> None:
        """A resumed run continues at session ``next_index`` (FSL: 0, everything re-evaluated);
        records of later sessions from the interrupted process will be written again."""


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


class ConsoleLogger(Logger):
    def __init__(self, stream=None):
        self.stream = stream or sys.stdout

    def on_message(self, text):
        print(text, file=self.stream, flush=True)

    def on_end(self, result):
        print(result_table(result), file=self.stream, flush=True)


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

    def on_session(self, record):
        self._write(f"session {json.dumps(record)}")

    def on_shot(self, shot, record):
        brief = {k: v for k, v in record.items() if k != "per_episode"}
        self._write(f"shot {shot} {json.dumps(brief)}")

    def on_end(self, result):
        self._write(result_table(result))


class JSONLinesLogger(Logger):
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
            if rec.get("kind") == "session" and int(rec.get("session", -1)) < next_index:
                keep.append(line)
        atomic_write_text(self.path, "".join(ln + "\n" for ln in keep))

    def _append(self, rec):
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    def on_session(self, record):
        self._append({"kind": "session", **record})

    def on_shot(self, shot, record):
        self._append({"kind": "shot", "shot": shot,
                      **{k: v for k, v in record.items() if k != "per_episode"}})

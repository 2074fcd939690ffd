"""Training curves: what a trainer reports through ``ctx.log_epoch`` / ``ctx.log_step`` /
``ctx.log_selection``, routed to the loggers and kept for ``result.json``.

A trainer reports, for one *stage* of a session (``"base"``, ``"pretrain"``, ``"prompts"``...)::

    ctx.log_epoch("base", epoch, loss=0.83, val_acc=71.2, lr=0.1)   # after every epoch
    ctx.log_step("base", step, loss=0.91)                             # optional, every batch
    ctx.log_selection("base", epoch=7, rule="val")                    # the weights it kept

Epoch and selection records go to the loggers' ``on_epoch`` / ``on_selection`` (``metrics.jsonl``
keeps them), and into the ``history`` block of ``result.json``: one entry per (session, stage)
with its epochs, ``selected_epoch`` and ``select`` rule. Steps go to ``on_step`` only (e.g. the
TensorBoard logger); they are not stored. Reporting never draws random numbers.

Resume: the session checkpoint stores :meth:`Curves.state`, and an epoch checkpoint
(:mod:`fsbench.trainstate`) stores the records of the session it interrupts; restoring either
brings the records back without duplicates (:meth:`Curves.restore`).
"""
from __future__ import annotations

import math
from typing import Iterable


def _plain(v):
    """A JSON- and ``weights_only``-safe value: numbers (non-finite -> None), strings, bools."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if hasattr(v, "item"):  # tensor / numpy scalar
        v = v.item()
    if isinstance(v, int):
        return v
    v = float(v)
    return v if math.isfinite(v) else None


def _key(rec: dict) -> tuple:
    return rec["kind"], rec["session"], rec["stage"], rec.get("epoch")


class Curves:
    """The epoch and selection records of one run, forwarded to ``loggers`` as they come."""

    def __init__(self, loggers: Iterable = ()):
        self.loggers = list(loggers)
        self.session = 0  # set by the runner before each session
        self.records: list[dict] = []

    def _emit(self, rec: dict) -> None:
        self.records.append(rec)
        hook = "on_epoch" if rec["kind"] == "epoch" else "on_selection"
        for lg in self.loggers:
            getattr(lg, hook)(rec)

    def epoch(self, stage: str, epoch: int, values: dict) -> None:
        self._emit({"kind": "epoch", "session": self.session, "stage": str(stage),
                    "epoch": int(epoch), **{k: _plain(v) for k, v in values.items()}})

    def selection(self, stage: str, epoch: int | None, rule: str) -> None:
        self._emit({"kind": "selection", "session": self.session, "stage": str(stage),
                    "selected_epoch": None if epoch is None else int(epoch), "select": str(rule)})

    def step(self, stage: str, step: int, values: dict) -> None:
        rec = {"kind": "step", "session": self.session, "stage": str(stage), "step": int(step),
               **{k: _plain(v) for k, v in values.items()}}
        for lg in self.loggers:
            lg.on_step(rec)

    # -- resume ----------------------------------------------------------------------------
    def state(self, session: int | None = None) -> list[dict]:
        """The records (of ``session`` only, when given), for a checkpoint."""
        return [dict(r) for r in self.records if session is None or r["session"] == session]

    def restore(self, records: list[dict], replay: bool = False) -> None:
        """Take back records from a checkpoint; those already held are skipped. ``replay``
        also sends them to the loggers (whose files dropped them in ``on_resume``)."""
        have = {_key(r) for r in self.records}
        for rec in records or []:
            if _key(rec) in have:
                continue
            have.add(_key(rec))
            if replay:
                self._emit(dict(rec))
            else:
                self.records.append(dict(rec))

    def history(self) -> list[dict]:
        """The ``history`` block of ``result.json``: one entry per (session, stage), in order."""
        out: dict[tuple, dict] = {}
        for r in self.records:
            h = out.setdefault((r["session"], r["stage"]), {
                "session": r["session"], "stage": r["stage"], "epochs": [],
                "selected_epoch": None, "select": None})
            if r["kind"] == "epoch":
                h["epochs"].append({k: v for k, v in r.items()
                                    if k not in ("kind", "session", "stage")})
            else:
                h["selected_epoch"], h["select"] = r["selected_epoch"], r["select"]
        return list(out.values())


class EpisodeBlocks:
    """Per-"epoch" reports for episodic trainers (ProtoNet, meta-tuning): the means of the values
    of each block of ``size`` episodes, as in the Prototypical Networks code (100 episodes an
    epoch). ``add(i, loss=..., acc=..., lr=...)`` after episode ``i`` of ``total``."""

    def __init__(self, ctx, stage: str, total: int, size: int = 100):
        self.ctx, self.stage, self.total, self.size = ctx, stage, int(total), int(size)
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, i: int, **values) -> bool:
        """Returns whether episode ``i`` closed a block (the trainer checkpoints there)."""
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.count += 1
        if (i + 1) % self.size == 0 or i + 1 == self.total:
            self.ctx.log_epoch(self.stage, i // self.size, episodes=i + 1,
                               **{k: v / self.count for k, v in self.sums.items()})
            self.sums, self.count = {}, 0
            return True
        return False

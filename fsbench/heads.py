"""Inference heads for FSL: a head turns (support features, labels, query features) into logits
and can sit on top of any learner that exposes ``embed`` (``--set head=NAME``).

``none`` keeps the learner's own ``predict_episodes``. Methods register more (e.g. ``opta``).
"""
from __future__ import annotations

from typing import Callable

from fsbench.errors import UserError

HEADS: dict[str, Callable] = {}


def register_head(name: str):
    def deco(fn):
        HEADS[name] = fn
        return fn
    return deco


def get_head(name: str | None, config: dict):
    """A callable ``(support, support_labels, query) -> logits`` for batched episodes, or None."""
    from fsbench.registry import load_builtins

    if name in (None, "none", ""):
        return None
    load_builtins()
    if name not in HEADS:
        raise UserError(f"head: unknown head {name!r}; valid: none, {', '.join(sorted(HEADS))}")
    return HEADS[name](config)

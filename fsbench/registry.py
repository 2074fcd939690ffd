"""Named registries for methods (learners) and datasets, in the style of timm and learn2learn.

>>> from fsbench.registry import METHODS, register_method
>>> @register_method("mine", task="fsl", summary="my learner")
... class Mine(FSLLearner): ...
>>> METHODS.names()
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import UserError

# Packages whose import registers built-in methods and datasets.
_BUILTIN_PACKAGES = (
    "fsbench.episodes",
    "fsbench.baselines",
    "fsbench.fewshot",
    "fsbench.incremental",
)
_loaded = False


def load_builtins() -> None:
    """Import the packages that register the built-in methods and datasets (idempotent)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name in _BUILTIN_PACKAGES:
        importlib.import_module(name)


@dataclass
class Entry:
    name: str
    obj: Any
    task: str  # "fsl", "fscil" or "both"
    summary: str
    extra: dict = field(default_factory=dict)


class Registry:
    """A name -> object map with a helpful error for unknown names."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, *, task: str, summary: str, **extra) -> Callable:
        if task not in ("fsl", "fscil", "both"):
            raise ValueError(f"task must be 'fsl', 'fscil' or 'both', not {task!r}")

        def deco(obj):
            if name in self._entries and self._entries[name].obj is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = Entry(name, obj, task, summary, dict(extra))
            obj.registry_name = name
            return obj

        return deco

    def get(self, name: str) -> Entry:
        load_builtins()
        if name not in self._entries:
            raise UserError(
                f"unknown {self.kind} {name!r}; valid {self.kind}s: {', '.join(self.names())}"
            )
        return self._entries[name]

    def names(self, task: str | None = None) -> list[str]:
        load_builtins()
        return sorted(
            n for n, e in self._entries.items() if task is None or e.task in (task, "both")
        )

    def entries(self) -> list[Entry]:
        load_builtins()
        return [self._entries[n] for n in sorted(self._entries)]

    def __contains__(self, name: str) -> bool:
        load_builtins()
        return name in self._entries


METHODS = Registry("method")
DATASETS = Registry("dataset")


def register_method(name: str, *, task: str, summary: str, **extra) -> Callable:
    """Register a learner class under ``name`` (``task`` is ``"fsl"`` or ``"fscil"``)."""
    return METHODS.register(name, task=task, summary=summary, **extra)


def register_dataset(name: str, *, task: str, summary: str, **extra) -> Callable:
    """Register a dataset builder ``fn(root, options) -> FSLBenchmark | FSCILBenchmark``."""
    return DATASETS.register(name, task=task, summary=summary, **extra)


def list_methods(task: str | None = None) -> list[str]:
    return METHODS.names(task)


def list_datasets(task: str | None = None) -> list[str]:
    return DATASETS.names(task)

"""Named registries for methods (learners), datasets and backbones, in the style of timm and
learn2learn.

>>> from fsbench.registry import METHODS, register_method
>>> @register_method("mine", task="fsl", summary="my learner")
... class Mine(FSLLearner): ...
>>> METHODS.names()

Registration is lazy for the built-ins: their names, tasks and summaries are read from the
``register_method(...)`` / ``register_dataset(...)`` calls in the source (:func:`builtin_index`,
a static scan that imports nothing), so ``fsbench list`` and name checks never import torch; a
module is imported when one of its entries is used (:meth:`Registry.get`).
"""
from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import plugins
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


_REGISTER_CALLS = {"register_method": "method", "register_dataset": "dataset"}


@functools.lru_cache(maxsize=None)
def builtin_index() -> dict[str, dict[str, tuple[str, str, str]]]:
    """``{kind: {name: (module, task, summary)}}`` of the built-in registrations, read from the
    source with :mod:`ast` (literal arguments only; anything else is found by importing)."""
    out: dict[str, dict[str, tuple[str, str, str]]] = {k: {} for k in _REGISTER_CALLS.values()}
    for pkg in _BUILTIN_PACKAGES:
        spec = importlib.util.find_spec(pkg)
        for loc in (spec.submodule_search_locations or []) if spec else []:
            for path in sorted(Path(loc).rglob("*.py")):
                parts = [p for p in path.relative_to(loc).with_suffix("").parts if p != "__init__"]
                try:
                    tree = ast.parse(path.read_text(encoding="utf-8"))
                except (OSError, SyntaxError, UnicodeDecodeError):
                    continue
                for node in ast.walk(tree):
                    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                            and node.func.id in _REGISTER_CALLS and node.args
                            and isinstance(node.args[0], ast.Constant)
                            and isinstance(node.args[0].value, str)):
                        continue
                    kw = {k.arg: k.value.value for k in node.keywords
                          if isinstance(k.value, ast.Constant) and isinstance(k.value.value, str)}
                    if "task" in kw and "summary" in kw:
                        out[_REGISTER_CALLS[node.func.id]][node.args[0].value] = (
                            ".".join([pkg, *parts]), kw["task"], kw["summary"])
    return out


def _same_definition(a, b) -> bool:
    """Whether ``b`` is ``a`` defined again (its module re-imported after an edit)."""
    return (getattr(a, "__module__", None), getattr(a, "__qualname__", None)) == \
        (getattr(b, "__module__", 0), getattr(b, "__qualname__", 0))


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
            old = self._entries.get(name)
            if old is not None and old.obj is not obj and not _same_definition(old.obj, obj):
                raise ValueError(f"{self.kind} {name!r} is already registered")
            builtin = self._index().get(name)
            if builtin and getattr(obj, "__module__", None) != builtin[0]:
                raise ValueError(f"{self.kind} {name!r} is a built-in name; choose another")
            self._entries[name] = Entry(name, obj, task, summary, dict(extra))
            obj.registry_name = name
            return obj

        return deco

    def _index(self) -> dict[str, tuple[str, str, str]]:
        return builtin_index().get(self.kind, {})

    def get(self, name: str) -> Entry:
        if plugins.is_import_path(name) and self.kind == "method":
            return self._import_learner(name)
        if name not in self._entries and name in self._index():
            importlib.import_module(self._index()[name][0])  # only the module that registers it
        if name not in self._entries and name in plugins.entry_points(self.kind):
            self._load_entry_point(name)
        if name not in self._entries and not self._index() \
                and self.kind in _REGISTER_CALLS.values():
            load_builtins()  # no source to scan (e.g. a zipped install): import everything
        if name not in self._entries:
            hint = " (or MODULE:CLASS, FILE.py:CLASS)" if self.kind == "method" else ""
            raise UserError(
                f"unknown {self.kind} {name!r}; valid {self.kind}s{hint}: "
                f"{', '.join(self.names())}")
        return self._entries[name]

    def _import_learner(self, spec: str) -> Entry:
        """The entry of the learner class at ``spec``, named by its own registration or its
        class name; ``entry.extra["import_path"]`` is what ``run.json`` records. It is not
        registered under that name (two plug-ins may share a class name)."""
        cls, recorded = plugins.import_object(spec, "--method")
        task = plugins.learner_task(cls, f"--method {spec}")
        return Entry(plugins.own_name(cls) or cls.__name__, cls, task, plugins.summary_of(cls),
                     {"import_path": recorded})

    def _load_entry_point(self, name: str) -> None:
        obj = plugins.load_entry_point(self.kind, name)
        if name in self._entries:  # the module registered it itself
            return
        where = f"{self.kind} entry point {name!r}"
        if self.kind == "method":
            self.register(name, task=plugins.learner_task(obj, where),
                          summary=plugins.summary_of(obj))(obj)
        elif self.kind == "backbone" and callable(obj):
            self.register(name, task="both", summary=plugins.summary_of(obj))(obj)
        else:
            raise UserError(f"{where} loaded {getattr(obj, '__name__', obj)!r} but registered "
                            f"nothing; decorate the builder with @register_{self.kind}"
                            f"({name!r}, task=..., summary=...)")

    def loaded(self, name: str) -> Entry | None:
        """The entry of ``name`` if it is registered already (imports nothing)."""
        return self._entries.get(name)

    def listing(self, task: str | None = None) -> list[tuple[str, str, str]]:
        """``(name, task, summary)`` of every entry, sorted by name, without importing modules."""
        rows = {n: (n, "?", f"entry point {ep.value} (task known once loaded)")
                for n, ep in plugins.entry_points(self.kind).items()}
        rows.update({n: (n, t, s) for n, (_m, t, s) in self._index().items()})
        rows.update({n: (n, e.task, e.summary) for n, e in self._entries.items()})
        return [rows[n] for n in sorted(rows)
                if task is None or rows[n][1] in (task, "both", "?")]

    def names(self, task: str | None = None) -> list[str]:
        return [n for n, _t, _s in self.listing(task)]

    def entries(self) -> list[Entry]:
        load_builtins()
        return [self._entries[n] for n in sorted(self._entries)]

    def __contains__(self, name: str) -> bool:
        return (name in self._entries or name in self._index()
                or name in plugins.entry_points(self.kind))


METHODS = Registry("method")
DATASETS = Registry("dataset")
BACKBONES = Registry("backbone")  # plug-ins only; the built-ins are in fsbench.baselines.backbones


def register_method(name: str, *, task: str, summary: str, **extra) -> Callable:
    """Register a learner class under ``name`` (``task`` is ``"fsl"`` or ``"fscil"``)."""
    return METHODS.register(name, task=task, summary=summary, **extra)


def register_dataset(name: str, *, task: str, summary: str, **extra) -> Callable:
    """Register a dataset builder ``fn(root, options) -> FSLBenchmark | FSCILBenchmark``."""
    return DATASETS.register(name, task=task, summary=summary, **extra)


def register_backbone(name: str, *, summary: str = "") -> Callable:
    """Register a backbone builder ``fn(in_channels, **options) -> nn.Module`` (the module has
    an ``out_dim`` attribute: its feature size); ``backbone.name: NAME`` in a preset uses it."""
    return BACKBONES.register(name, task="both", summary=summary or name)


def list_methods(task: str | None = None) -> list[str]:
    return METHODS.names(task)


def list_datasets(task: str | None = None) -> list[str]:
    return DATASETS.names(task)

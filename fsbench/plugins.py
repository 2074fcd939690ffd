"""Methods, datasets and backbones from outside the package: import paths and entry points.

**Import paths.** ``fsbench run --method SPEC`` accepts, besides a registered name:

- ``my_pkg.my_module:MyLearner`` - a class of any importable module (the current folder is
  searched after the installed packages, as ``python -m`` would);
- ``path/to/file.py:MyLearner`` - a class of a Python file, imported as a standalone module.

The class must subclass :class:`fsbench.learner.FSLLearner` or
:class:`fsbench.learner.FSCILLearner`. Its method name is the name it was registered under with
``@register_method`` (when the module does that) or else the class name; ``run.json`` records
the import path (a file's absolute path) so that ``--resume`` finds it again.

**Presets of a plug-in.** Like the packaged ``presets/<method>/<dataset>.yaml``, a plug-in's
hyper-parameters are YAML files next to its module, named after the module:
``<module>.<dataset>.yaml`` for one dataset, else ``<module>.yaml`` (:func:`preset_path`).
Without such a file, a subclass of a registered method (say of ``TEEN``) gets that method's
packaged preset. The preset's keys are what ``--set`` may override.

**Entry points.** An installed distribution can contribute names in the groups
``fsbench.methods``, ``fsbench.datasets`` and ``fsbench.backbones``::

    [project.entry-points."fsbench.methods"]
    mymethod = "my_pkg.learners:MyLearner"

They are listed by name from the package metadata (nothing is imported: ``fsbench list`` stays
fast) and loaded when used. A method or backbone entry point may name an unregistered class or
builder (it is registered under the entry point's name); a dataset's builder must be registered
with ``@register_dataset`` (which declares its task).
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Any

from fsbench.errors import UserError

GROUPS = {"method": "fsbench.methods", "dataset": "fsbench.datasets",
          "backbone": "fsbench.backbones"}


def is_import_path(name) -> bool:
    """Whether ``name`` is ``MODULE:ATTR`` or ``FILE.py:ATTR`` rather than a registered name."""
    return isinstance(name, str) and ":" in name


def _split(spec: str, flag: str) -> tuple[str, str]:
    where, _, attr = spec.rpartition(":")
    if not where or not attr.isidentifier():
        raise UserError(f"{flag} {spec}: expected MODULE:CLASS or FILE.py:CLASS, e.g. "
                        f"my_pkg.learners:MyLearner or ./my_method.py:MyLearner")
    return where, attr


def _import_file(path: Path, spec: str, flag: str):
    """Import a .py file as a module named after its absolute path; imported again when the
    file changed since (an edited method in a notebook session is picked up)."""
    if not path.is_file():
        raise UserError(f"{flag} {spec}: file {path} not found")
    path = path.resolve()
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    name = f"fsbench_plugin_{re.sub(r'[^0-9a-zA-Z_]', '_', path.stem)}_{digest}"
    stat = path.stat()
    stamp = (stat.st_mtime_ns, stat.st_size)
    old = sys.modules.get(name)
    if old is not None and getattr(old, "__fsbench_stamp__", None) == stamp:
        return old
    mod_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(mod_spec)
    module.__fsbench_stamp__ = stamp
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        mod_spec.loader.exec_module(module)
    except BaseException:
        if old is not None:
            sys.modules[name] = old
        else:
            del sys.modules[name]
        raise
    return module


def _import_module(name: str, spec: str, flag: str):
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)  # after the installed packages: never shadows one
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and (name == e.name or name.startswith(e.name + ".")):
            raise UserError(f"{flag} {spec}: no module named {e.name!r}; install the package "
                            f"or run from the folder that holds it") from None
        raise


def import_object(spec: str, flag: str = "--method") -> tuple[Any, str]:
    """The object named by ``MODULE:ATTR`` or ``FILE.py:ATTR`` and the import path to record
    (a file as its absolute path). Every failure is a one-line :class:`UserError`."""
    where, attr = _split(spec, flag)
    is_file = where.endswith(".py") or "/" in where or os.sep in where
    try:
        if is_file:
            module = _import_file(Path(where).expanduser(), spec, flag)
            recorded = f"{Path(where).expanduser().resolve()}:{attr}"
        else:
            module = _import_module(where, spec, flag)
            recorded = spec
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - the plug-in's own import failed
        detail = " ".join(str(e).split())[:200]
        raise UserError(f"{flag} {spec}: importing {where} failed ({type(e).__name__}: "
                        f"{detail}); --debug shows the traceback") from e
    if not hasattr(module, attr):
        raise UserError(f"{flag} {spec}: {where} defines no {attr!r}")
    return getattr(module, attr), recorded


def learner_task(cls, where: str) -> str:
    """The task of a learner class (``fsl`` or ``fscil``); a one-line error for anything else."""
    from fsbench.learner import Learner

    if not (isinstance(cls, type) and issubclass(cls, Learner)):
        raise UserError(f"{where}: {getattr(cls, '__name__', cls)!r} is not a learner; subclass "
                        f"fsbench.learner.FSCILLearner or fsbench.learner.FSLLearner")
    if cls.task not in ("fsl", "fscil"):
        raise UserError(f"{where}: {cls.__name__} must subclass FSCILLearner or FSLLearner "
                        f"(its task is {cls.task!r})")
    missing = _missing_methods(cls)
    if missing:
        raise UserError(f"{where}: {cls.__name__} does not implement {' and '.join(missing)} "
                        f"(the learner contract: fsbench/learner.py)")
    return cls.task


def _missing_methods(cls) -> list[str]:
    from fsbench.learner import FSCILLearner, FSLLearner

    def own(*names):  # overridden below the contract's base class
        return any(getattr(cls, n) is not getattr(base, n) for n in names)

    if cls.task == "fscil":
        base = FSCILLearner
        need = [("fit_base",), ("learn_session",), ("predict", "predict_features")]
    else:
        base = FSLLearner
        need = [("predict_episode", "predict_episodes")]
    return [" or ".join(names) for names in need if not own(*names)]


def summary_of(obj) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else f"plug-in {getattr(obj, '__name__', obj)}"


def own_name(cls) -> str | None:
    """The name ``cls`` itself was registered under (not one inherited from a base class)."""
    return vars(cls).get("registry_name") if isinstance(cls, type) else None


@functools.lru_cache(maxsize=None)
def entry_points(kind: str) -> dict:
    """``{name: EntryPoint}`` of the installed distributions for ``kind`` (metadata only)."""
    from importlib import metadata

    return {ep.name: ep for ep in metadata.entry_points(group=GROUPS[kind])}


def load_entry_point(kind: str, name: str):
    """Import the object behind an entry point; a failure is one line naming the distribution."""
    ep = entry_points(kind)[name]
    try:
        return ep.load()
    except Exception as e:  # noqa: BLE001
        dist = getattr(getattr(ep, "dist", None), "name", "an installed package")
        detail = " ".join(str(e).split())[:200]
        raise UserError(f"{kind} {name!r} (entry point {ep.value} of {dist}) failed to load "
                        f"({type(e).__name__}: {detail})") from e


def preset_path(cls, dataset: str) -> Path | None:
    """The preset file of a plug-in learner: ``<module>.<dataset>.yaml`` next to its module,
    else ``<module>.yaml``; None when neither exists (or the class has no source file)."""
    module = sys.modules.get(getattr(cls, "__module__", ""), None)
    source = getattr(module, "__file__", None)
    if not source:
        return None
    source = Path(source)
    stem = source.stem if source.name != "__init__.py" else "__init__"
    for cand in (source.with_name(f"{stem}.{dataset}.yaml"), source.with_name(f"{stem}.yaml")):
        if cand.is_file():
            return cand
    return None

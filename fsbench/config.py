"""Presets (data, not code) and their resolution into one run configuration.

Resolution order, later wins:

0. ``presets/defaults.yaml`` - keys every run has (seed, device, select_on_test, head, ...);
1. ``presets/datasets/<dataset>.yaml`` - data defaults (transforms, evaluation episodes, options);
2. ``presets/<method>/<dataset>.yaml`` - the method's paper hyper-parameters for that dataset
   (``presets/<method>/default.yaml`` when no dataset-specific file exists); a plug-in method's
   ``<module>.<dataset>.yaml`` or ``<module>.yaml`` next to its module (:mod:`fsbench.plugins`);
3. ``--preset FILE`` - a user file;
4. ``--set key.path=value`` overrides (values parsed as YAML; the key must already exist).
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from fsbench.errors import UserError

PRESET_PACKAGE = "fsbench.presets"


def _preset_dir():
    return resources.files("fsbench").joinpath("presets")


def read_yaml(path, label: str | None = None) -> dict:
    """Read a YAML mapping with one-line errors naming the file."""
    label = label or str(path)
    try:
        text = Path(path).read_text() if not hasattr(path, "read_text") else path.read_text()
    except FileNotFoundError:
        raise UserError(f"preset {label} not found; check the path") from None
    except OSError as e:
        raise UserError(f"preset {label}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise UserError(f"preset {label} is not a text (YAML) file; pass a .yaml preset") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"preset {label}:{where} is not valid YAML "
                        f"({getattr(e, 'problem', None) or e}); fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"preset {label}: the top level must be a mapping of keys, "
                        f"got {type(data).__name__}")
    return data


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def merge_checked(base: dict, over: dict, source: str, prefix: str = "") -> dict:
    """``deep_merge`` for user presets: every key must exist in ``base`` (an empty mapping or a
    null accepts anything) and keep its type (:mod:`fsbench.configschema`)."""
    from fsbench import configschema

    out = copy.deepcopy(base)
    for k, v in over.items():
        key = f"{prefix}{k}"
        if isinstance(out, dict) and out and k not in out:
            raise configschema.unknown_key(key, str(k), out, source)
        old = out.get(k)
        configschema.check_replace(key, old, v, source)
        if isinstance(v, dict) and isinstance(old, dict):
            out[k] = merge_checked(old, v, source, f"{key}.") if old else copy.deepcopy(v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def packaged_preset(method: str, dataset: str):
    d = _preset_dir()
    for cand in (d / method / f"{dataset}.yaml", d / method / "default.yaml"):
        if cand.is_file():
            return cand
    return None


def method_preset(method: str, dataset: str, learner=None):
    """``(path, label)`` of the method's preset, or ``(None, None)``: the packaged one; for a
    plug-in ``learner`` class (or a loaded entry point) the YAML file next to its module
    (:func:`fsbench.plugins.preset_path`), else the packaged preset of the registered method it
    subclasses."""
    from fsbench import plugins
    from fsbench.registry import METHODS

    mp = packaged_preset(method, dataset)
    if mp is not None:
        return mp, f"{method}/{mp.name}"
    if learner is None and METHODS.loaded(method) is not None:
        learner = METHODS.loaded(method).obj
    path = plugins.preset_path(learner, dataset) if learner is not None else None
    if path is not None:
        return path, str(path)
    parent = getattr(learner, "registry_name", None)
    mp = packaged_preset(parent, dataset) if parent else None
    return (mp, f"{parent}/{mp.name}") if mp is not None else (None, None)


def dataset_preset(dataset: str):
    cand = _preset_dir() / "datasets" / f"{dataset}.yaml"
    return cand if cand.is_file() else None


def parse_set(items: list[str] | None) -> list[tuple[list[str], Any]]:
    out = []
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected key=value, e.g. --set train.epochs=3")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        out.append((key.strip().split("."), value))
    return out


def apply_overrides(cfg: dict, overrides: list[tuple[list[str], Any]]) -> dict:
    from fsbench import configschema

    cfg = copy.deepcopy(cfg)
    for path, value in overrides:
        node = cfg
        key = ".".join(path)
        for i, part in enumerate(path):
            last = i == len(path) - 1
            if not isinstance(node, dict):
                raise UserError(f"--set {key}: {'.'.join(path[:i])} is a "
                                f"{configschema._kind(node)}, not a mapping of keys")
            if part not in node:
                raise configschema.unknown_key(".".join(path[:i + 1]), part, node, "--set")
            if last:
                configschema.check_replace(key, node[part], value, "--set")
                node[part] = value
            else:
                node = node[part]
    return cfg


def resolve(method: str, dataset: str, preset_file: str | None = None,
            overrides: list[str] | dict | None = None, learner=None) -> dict:
    """The full configuration of a run (a plain, JSON-serialisable dict); ``learner``: the
    class of a plug-in method (its presets live next to its module)."""
    cfg: dict = read_yaml(_preset_dir() / "defaults.yaml", "defaults.yaml")
    dp = dataset_preset(dataset)
    if dp is not None:
        cfg = deep_merge(cfg, read_yaml(dp, f"datasets/{dataset}.yaml"))
    mp, label = method_preset(method, dataset, learner)
    if mp is not None:
        cfg = deep_merge(cfg, read_yaml(mp, label))
    if preset_file:
        cfg = merge_checked(cfg, read_yaml(Path(preset_file)), f"--preset {preset_file}:")
    if isinstance(overrides, dict):
        overrides = [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    cfg = apply_overrides(cfg, parse_set(overrides))
    cfg["method"] = method
    cfg["dataset"] = dataset
    from fsbench import configschema

    configschema.check(cfg)
    try:
        json.dumps(cfg, allow_nan=False)
    except (TypeError, ValueError) as e:
        where = _not_plain(cfg)
        raise UserError(f"configuration{' key ' + where if where else ''} is not plain data ({e});"
                        f" use finite numbers, strings, lists and mappings in presets") from None
    return cfg


def _not_plain(node, path: str = "") -> str | None:
    """The dotted key of the first value JSON cannot hold (NaN, infinity, an object)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) \
        if isinstance(node, list) else None
    if items is None:
        ok = node is None or isinstance(node, (str, bool, int)) or (
            isinstance(node, float) and math.isfinite(node))
        return None if ok else path
    for k, v in items:
        found = _not_plain(v, f"{path}.{k}" if path else str(k))
        if found:
            return found
    return None


def config_hash(cfg: dict) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()


def get(cfg: dict, path: str, default=None):
    node = cfg
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def flatten(cfg: dict, prefix: str = "") -> dict:
    """``{"train.lr": 0.1, ...}``: the leaves of a nested configuration by dotted path."""
    out = {}
    for k, v in cfg.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, path + "."))
        else:
            out[path] = v
    return out


def diff_from_preset(cfg: dict) -> dict:
    """What a run's configuration changes in its packaged preset (``--preset``, ``--set``,
    ``--seed``): ``{dotted key: {"preset": value, "run": value}}``, absent keys as ``None``."""
    packaged = flatten(resolve(cfg["method"], cfg["dataset"]))
    run = flatten(cfg)
    return {k: {"preset": packaged.get(k), "run": run.get(k)}
            for k in sorted(set(packaged) | set(run)) if packaged.get(k) != run.get(k)}

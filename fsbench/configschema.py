"""The declared schema of a run configuration (pydantic v2), checked before anything is built.

Two layers, both applied by :func:`fsbench.config.resolve` and :func:`fsbench.api.run`:

1. **Types follow the packaged presets.** A ``--set`` or ``--preset`` value must have the type of
   the value it replaces (an integer stays an integer, a mapping a mapping, ...; ``null`` in a
   preset accepts anything), and a key must exist - a typo is named with the nearest valid key.
2. **Ranges of the keys every method shares** (:class:`RunConfig`): the seed, workers, the
   ``train`` and ``eval`` budgets and rates, backbone sizes. Each field says what it means.
3. **A method's own block** (``teen``, ``dyce``, ``opta``, ...) is a :class:`MethodBlock` model
   declared beside the method and read through :func:`validate_block` when the learner is built,
   before any data is touched or anything trained.

An error is one line: the key, the value, what is allowed.
"""
from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from fsbench.errors import UserError

_BIG = 10_000_000
PosInt = Annotated[StrictInt, Field(ge=1, le=_BIG)]
Count = Annotated[StrictInt, Field(ge=0, le=_BIG)]
Rate = Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
NonNeg = Annotated[float, Field(ge=0, le=1_000_000, allow_inf_nan=False)]
# PosInt, Count, Rate, Fraction and NonNeg are shared by the methods' MethodBlock models.


class _Block(BaseModel):
    # Methods add their own keys to these blocks; the declared ones are checked.
    model_config = ConfigDict(extra="allow")


class Train(_Block):
    epochs: Optional[Annotated[StrictInt, Field(ge=1, le=100_000)]] = Field(
        None, description="training epochs (a whole number >= 1)")
    batch_size: Optional[PosInt] = Field(None, description="images per training batch (total)")
    lr: Optional[Rate] = Field(None, description="learning rate (> 0)")
    min_lr: Optional[Annotated[float, Field(ge=0, le=1000, allow_inf_nan=False)]] = Field(
        None, description="final learning rate of a cosine schedule")
    momentum: Optional[Fraction] = Field(None, description="SGD momentum in [0, 1]")
    weight_decay: Optional[Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]] = Field(
        None, description="L2 weight decay")
    val_fraction: Optional[Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]] = Field(
        None, description="share of each base class held out for model selection, in [0, 1)")
    max_images: Optional[PosInt] = Field(None, description="cap on training images (null = all)")
    episodes: Optional[Count] = Field(None, description="episodic training episodes (0 = none)")
    warmup_epochs: Optional[Count] = Field(None, description="linear warm-up epochs")
    nesterov: Optional[StrictBool] = Field(None, description="Nesterov momentum (SGD)")
    milestones: Optional[list[Count]] = Field(None, description="schedule multistep: epochs "
                                                                "where the lr is multiplied")
    gamma: Optional[Annotated[float, Field(gt=0, le=10, allow_inf_nan=False)]] = Field(
        None, description="schedule multistep: the lr factor at each milestone")
    warmup_iters: Optional[Count] = Field(None, description="linear warm-up over the first "
                                                            "iterations (mmcv), 0 = none")
    warmup_ratio: Optional[Fraction] = Field(None, description="warm-up starts at this share "
                                                               "of the lr")
    min_lr_ratio: Optional[Fraction] = Field(None, description="schedule cooldown: the cosine's "
                                                               "floor as a share of the lr")
    cooldown_iters: Optional[Count] = Field(None, description="schedule cooldown: last "
                                                              "iterations at floor x ratio")
    cooldown_ratio: Optional[Fraction] = Field(None, description="schedule cooldown: the final "
                                                                 "lr as a share of the floor")
    backbone_lr_mult: Optional[NonNeg] = Field(None, description="the backbone's lr as a "
                                                                 "multiple of train.lr")
    batch_augments: Optional[list[dict[str, Any]]] = Field(
        None, description="per batch one of [{name: mixup|cutmix|identity, p, alpha}]")
    select: Optional[Literal["val", "last", "test"]] = Field(
        None, description="model selection: val (held-out base images), last, test (flagged)")


class Eval(_Block):
    batch_size: Optional[PosInt] = Field(None, description="evaluation batch size (images)")
    way: Optional[Annotated[StrictInt, Field(ge=2, le=10_000)]] = Field(
        None, description="FSL: classes per episode")
    shots: Optional[list[PosInt]] = Field(None, description="FSL: support images per class, "
                                                            "one evaluation per entry")
    query: Optional[PosInt] = Field(None, description="FSL: query images per class")
    episodes: Optional[PosInt] = Field(None, description="FSL: evaluation episodes")
    episodes_per_batch: Optional[PosInt] = Field(None, description="FSL: episodes per batch")
    seed: Optional[Annotated[StrictInt, Field(ge=0, le=2**63 - 1)]] = Field(
        None, description="FSL: seed of the fixed episodes")
    manifest: Optional[str] = Field(None, description="FSL: episodes.npz of an earlier run")


class Backbone(_Block):
    name: Optional[str] = Field(None, description="conv4, resnet12, resnet18, resnet20, ..., "
                                                  "a registered name or timm/<model>")
    hidden: Optional[PosInt] = Field(None, description="channels of the first stage")
    weights: Optional[str] = Field(None, description="local weights file (never downloaded)")


class Transforms(_Block):
    train: Optional[list[dict[str, Any]]] = Field(None, description="training transforms, "
                                                                    "[{name: ..., args}]")
    test: Optional[list[dict[str, Any]]] = Field(None, description="evaluation transforms")
    normalize: Optional[dict[str, list[float]]] = Field(None, description="{mean: [...], "
                                                                          "std: [...]}")


class Data(_Block):
    options: dict[str, Any] = Field(default_factory=dict, description="dataset loader options")


class Distributed(_Block):
    timeout_s: Optional[Annotated[float, Field(gt=0, le=86_400, allow_inf_nan=False)]] = Field(
        None, description="torchrun: seconds a process waits for the others before the run ends")
    per_rank_batch: Optional[PosInt] = Field(
        None, description="torchrun: images per process per step (null = total / processes)")


class RunConfig(_Block):
    seed: Annotated[StrictInt, Field(ge=0, le=2**32 - 1)] = Field(
        0, description="random seed, 0 to 2^32-1")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    num_workers: Annotated[StrictInt, Field(ge=0, le=256)] = Field(
        0, description="DataLoader worker processes")
    channels_last: StrictBool = Field(False, description="NHWC convolutions in supervised "
                                                         "training (faster on CPU; other last "
                                                         "bits)")
    select_on_test: StrictBool = Field(False, description="the original CEC/TEEN protocol: "
                                                          "best base epoch on the test set "
                                                          "(flagged)")
    head: str = Field("none", description="FSL inference head on the learner's features "
                                          "(none, opta)")
    pretraining: str = Field("none", description="recorded: none, imagenet, self-supervised, "
                                                 "...")
    standard_backbone: Optional[str] = Field(None, description="the literature's backbone for "
                                                               "the dataset (set by presets)")
    train: Optional[Train] = None
    eval: Optional[Eval] = None
    backbone: Optional[Backbone] = None
    transforms: Optional[Transforms] = None
    data: Optional[Data] = None
    distributed: Optional[Distributed] = None


class MethodBlock(BaseModel):
    """Base of a method's own configuration block: every key declared (a typo is an error naming
    the nearest key), values checked strictly enough that a bool is not a number."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _keys(model: type[BaseModel]) -> list[str]:
    """The keys a configuration spells for ``model``'s fields (an alias where one is set)."""
    return [info.alias or name for name, info in model.model_fields.items()]


def validate_block(model: type[MethodBlock], raw, where: str) -> MethodBlock:
    """``raw`` (the ``where:`` block of a configuration; None = defaults) as ``model``; a
    :class:`UserError` of one line naming the key, the value and the rule otherwise."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"config {where or 'file'} = {_short(raw)}: expected a mapping of "
                        f"{', '.join(_keys(model))}")
    bools = [k for k, v in raw.items() if isinstance(v, bool) and k in model.model_fields
             and _type_name(model.model_fields[k].annotation) in ("integer", "number")]
    if bools:  # pydantic's lax mode reads True as 1
        raise UserError(f"config {where}.{bools[0]} = {raw[bools[0]]!r}: expected a number")
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = [str(p) for p in err["loc"]]
        key = ".".join([p for p in (where, *loc) if p])
        if err["type"] == "extra_forbidden":
            raise unknown_key(key, loc[-1], _keys(model), "config") from None
        raise UserError(f"config {key} = {_short(err.get('input'))}: {err['msg'].lower()}; fix "
                        f"it with --set {key}=VALUE or in the preset") from None


def _short(v) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def check(cfg: dict) -> None:
    """Validate the shared keys of a resolved configuration; one-line :class:`UserError`."""
    try:
        RunConfig.model_validate(cfg)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise UserError(f"config {key} = {_short(err.get('input'))}: {err['msg'].lower()}"
                        f"{more}; fix it with --set {key}=VALUE or in the preset") from None


# Python types in the words errors and the README use (bool before int: a bool is an int).
_KINDS = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
          (list, "list"), (dict, "mapping"))


def _kind(v) -> str:
    if v is None:
        return "null"
    return next((name for t, name in _KINDS if isinstance(v, t)), type(v).__name__)


def compatible(old, new) -> bool:
    """Whether ``new`` may replace the preset's ``old``: the same kind, null either way, and
    integers and numbers interchangeably (a preset's ``16`` may be a real-valued scale; the keys
    that must be whole numbers are declared in :class:`RunConfig` or checked by their method)."""
    if old is None or new is None:
        return True
    numeric = {"integer", "number"}
    ko, kn = _kind(old), _kind(new)
    return ko == kn or (ko in numeric and kn in numeric)


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def check_replace(key: str, old, new, source: str) -> None:
    if not compatible(old, new):
        raise UserError(f"{source} {key} = {_short(new)}: expected {_a(_kind(old))} like the "
                        f"preset's {_short(old)}, got {_a(_kind(new))}")


def unknown_key(key: str, part: str, known, source: str) -> UserError:
    known = sorted(map(str, known))
    near = difflib.get_close_matches(part, known, n=1)
    hint = f"; did you mean {'.'.join(key.split('.')[:-1] + [near[0]])}?" if near else ""
    listed = f" (valid here: {', '.join(known)})" if known and len(known) <= 25 else ""
    return UserError(f"{source} {key}: unknown key {part!r}{hint}{listed}")


def _constraints(ann, info) -> list:
    """Every constraint object on a field: its own metadata and inside ``Optional[Annotated]``."""
    found = list(info.metadata)
    stack = [ann]
    while stack:
        t = stack.pop()
        for m in getattr(t, "__metadata__", ()):
            found.extend(getattr(m, "metadata", [m]))
        if getattr(t, "__origin__", None) is not list:  # a list's items: say so in the type
            stack.extend(a for a in getattr(t, "__args__", ()) if a is not type(None))
    return found


def _rule(ann, info) -> str:
    parts = []
    for m in _constraints(ann, info):
        for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            v = getattr(m, attr, None)
            if v is not None:
                parts.append(f"{sym} {v:,}" if isinstance(v, int) else f"{sym} {v}")
        if getattr(m, "allow_inf_nan", True) is False:
            parts.append("finite")
    return ", ".join(dict.fromkeys(parts))


def _type_name(ann) -> str:
    """The base type of an annotation (through Optional and Annotated), in words."""
    import typing

    names = dict(_KINDS)
    while True:
        origin = typing.get_origin(ann)
        if origin is typing.Annotated:
            ann = typing.get_args(ann)[0]
        elif origin is typing.Union:
            ann = next(a for a in typing.get_args(ann) if a is not type(None))
        elif origin in names:
            return names[origin]
        elif origin is Literal:
            return "choice"
        else:
            return names.get(ann, str(ann))


def _walk(model, prefix: str, row, defaults=None) -> None:
    """``row(key, annotation, field info, default)`` for every leaf key of ``model``; a nested
    block's defaults are those of its parent's default instance."""
    for name, info in model.model_fields.items():
        ann, key = info.annotation, info.alias or name
        default = getattr(defaults, name) if defaults is not None else info.default
        sub = next((a for a in getattr(ann, "__args__", (ann,))
                    if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if sub is not None:
            _walk(sub, f"{prefix}{key}.", row, default if isinstance(default, BaseModel) else None)
        else:
            row(f"{prefix}{key}", ann, info, default)


def _allowed(ann, info) -> str:
    import typing

    choices = [a for t in (ann, *typing.get_args(ann)) if typing.get_origin(t) is Literal
               for a in typing.get_args(t)]
    return ", ".join(map(str, choices)) if choices else (_rule(ann, info) or "-")


def markdown_table() -> str:
    """The README's configuration table, generated from :class:`RunConfig` (a test keeps the
    README equal to it)."""
    rows = ["| key | type | allowed | meaning |", "|---|---|---|---|"]
    _walk(RunConfig, "", lambda key, ann, info, _: rows.append(
        f"| `{key}` | {_type_name(ann)} | {_allowed(ann, info)} | {_cell(info.description)} |"))
    return "\n".join(rows)


def markdown_method_table() -> str:
    """The README's table of the methods' own keys, generated from each built-in learner's
    ``config_blocks`` (imports the methods, hence torch)."""
    from fsbench.registry import METHODS, load_builtins

    load_builtins()
    rows = ["| method | key | type | allowed | default | meaning |", "|---|---|---|---|---|---|"]
    for entry in sorted(METHODS.entries(), key=lambda e: e.name):
        for block, model in getattr(entry.obj, "config_blocks", {}).items():
            _walk(model, f"{block}." if block else "", lambda key, ann, info, d: rows.append(
                f"| {entry.name} | `{key}` | {_type_name(ann)} | {_allowed(ann, info)} | "
                f"{_default(d)} | {_cell(info.description)} |"))
    return "\n".join(rows)


def _cell(text) -> str:
    return (text or "").replace("|", "\\|")


def _default(d) -> str:
    return "null" if d is None else f"`{str(d).lower() if isinstance(d, bool) else d}`"

"""A learner's plain attributes in its checkpoints, without the learner asking for it.

A learner that keeps state outside its ``nn.Module`` parts - a prototype matrix in a plain tensor,
counts in a NumPy array, ``self.num_seen`` - used to lose it on ``--resume`` unless it wrote
:meth:`~fsbench.learner.Learner.extra_state` by hand, and the resumed run reported wrong numbers
as ``complete``. :meth:`Learner.state_dict` now also saves **every attribute whose value is a
tensor, a NumPy array or scalar, or plain data** (``None``, booleans, numbers, strings, and lists,
tuples and dicts of these), except:

- ``nn.Module`` attributes (saved as modules), ``config``, ``info`` and ``device``;
- names that :meth:`extra_state` returns (the learner saves those itself) and names in the
  class's ``checkpoint_exclude`` (caches it rebuilds);
- when a snapshot of the freshly built learner exists (:func:`remember_initial`, which every
  learner constructor calls at its end, see :class:`fsbench.learner.Learner`),
  attributes whose value is still the one the constructor set: a new learner built from the same
  configuration has it already, and a base model reused with another configuration
  (``--base-from``) keeps the new run's own configuration-derived values (e.g. TEEN's ``opts``).

An attribute of any other type (an optimizer, a custom object) that was assigned after the
constructor cannot be saved this way: the first checkpoint refuses with its name (save it in
``extra_state`` or list it in ``checkpoint_exclude``). Checkpoints stay loadable with
``torch.load(weights_only=True)``: NumPy values are stored as tensors (or lists for non-numeric
dtypes) with their dtype and restored as NumPy.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fsbench.errors import UserError

NOT_STATE = frozenset({"config", "info", "device"})
INITIAL = "_fsbench_initial_attributes"  # where remember_initial keeps the snapshot
_NUMPY = "__fsbench_numpy__"
_PLAIN = (type(None), bool, int, float, str)


class _Unsupported(Exception):
    pass


def encode(value):
    """``value`` as data ``torch.load(weights_only=True)`` reads; raises _Unsupported."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, (np.ndarray, np.generic)):
        arr = np.asarray(value)
        if arr.dtype.kind in "biufc":
            data = torch.from_numpy(np.array(arr, order="C", copy=True))
        elif arr.dtype.kind in "USa":
            data = arr.tolist()
        else:
            raise _Unsupported(f"NumPy dtype {arr.dtype}")
        return {_NUMPY: data, "dtype": arr.dtype.str, "scalar": isinstance(value, np.generic)}
    if isinstance(value, (list, tuple)):
        items = [encode(v) for v in value]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, dict) and _NUMPY not in value:
        return {k: encode(v) for k, v in value.items() if _check_key(k)}
    raise _Unsupported(type(value).__name__)


def _check_key(k) -> bool:
    if not isinstance(k, _PLAIN):
        raise _Unsupported(f"a dict key of type {type(k).__name__}")
    return True


def decode(data, like=None):
    """The inverse of :func:`encode`; a tensor goes to the device of ``like`` (the attribute's
    current value) when that is a tensor."""
    if isinstance(data, torch.Tensor):
        if isinstance(like, torch.Tensor) and like.shape == data.shape and \
                like.dtype == data.dtype:
            with torch.no_grad():  # in place: a Parameter stays one, references stay valid
                return like.copy_(data)
        return data.to(like.device) if isinstance(like, torch.Tensor) else data
    if isinstance(data, dict) and _NUMPY in data:
        raw = data[_NUMPY]
        arr = np.asarray(raw.numpy() if isinstance(raw, torch.Tensor) else raw,
                         dtype=np.dtype(data["dtype"]))
        return arr[()] if data.get("scalar") else arr
    if isinstance(data, list):
        return [decode(v) for v in data]
    if isinstance(data, tuple):
        return tuple(decode(v) for v in data)
    if isinstance(data, dict):
        return {k: decode(v) for k, v in data.items()}
    return data


def _same(a, b) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu())
    if isinstance(a, (np.ndarray, np.generic)):
        return a.dtype == b.dtype and np.shape(a) == np.shape(b) and \
            bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - an object whose == is not a truth value
        return False


def _candidates(learner, skip) -> dict[str, Any]:
    return {k: v for k, v in vars(learner).items()
            if k not in NOT_STATE and k not in skip and k != INITIAL
            and not isinstance(v, torch.nn.Module)}


def _copy(value):
    """A copy of data :func:`encode` accepts; any other object is remembered by identity."""
    try:
        return decode(encode(value))
    except _Unsupported:
        return value


def remember_initial(learner) -> None:
    """Snapshot the attributes a freshly built learner has (its constructor calls this)."""
    skip = set(getattr(type(learner), "checkpoint_exclude", ()))
    vars(learner)[INITIAL] = {k: _copy(v) for k, v in _candidates(learner, skip).items()}


def save(learner, extra_keys) -> dict[str, Any]:
    """The attributes of ``learner`` to checkpoint, encoded (see the module docstring)."""
    skip = set(extra_keys) | set(getattr(type(learner), "checkpoint_exclude", ()))
    initial = vars(learner).get(INITIAL)
    out = {}
    for name, value in _candidates(learner, skip).items():
        if initial is not None and name in initial and (
                initial[name] is value or _same(initial[name], value)):
            continue  # still what the constructor set (an object: still the same object)
        try:
            out[name] = encode(value)
        except _Unsupported as e:
            cls = type(learner).__name__
            raise UserError(f"{cls}.{name} ({e}) cannot be checkpointed automatically; save it "
                            f"in {cls}.extra_state()/load_extra_state() or, if it is a cache "
                            f"the learner rebuilds, list it in {cls}.checkpoint_exclude") from None
    return out


def load(learner, saved: dict[str, Any]) -> None:
    """Restore attributes saved by :func:`save` (tensors on the current value's device)."""
    current = vars(learner)
    for name, data in saved.items():
        setattr(learner, name, decode(data, current.get(name)))

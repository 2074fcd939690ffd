"""A restricted unpickler for the datasets that are distributed as pickles.

CIFAR-100's python version, the miniImageNet caches and Ren et al.'s tieredImageNet files are
pickles, and users download them from mirrors. ``pickle.load`` runs whatever callable a pickle
names, so a crafted file executes code. :func:`load` resolves only the globals such a dataset file
needs - builtins containers and scalars, NumPy's array and scalar reconstruction and its dtype -
and refuses every other one with :class:`~fsbench.errors.UserError`, naming the file and the global.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

from fsbench.errors import UserError

_BUILTINS = frozenset({"dict", "list", "tuple", "set", "frozenset", "bytes", "bytearray", "str",
                       "int", "float", "complex", "bool", "slice"})
_NUMPY_CORE = frozenset({"_reconstruct", "scalar", "_frombuffer"})
#: (module, name) pairs a dataset pickle may name; Python 2 and NumPy 1 module names included.
ALLOWED = frozenset(
    {(m, n) for m in ("builtins", "__builtin__") for n in _BUILTINS}
    | {(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric",
                        "numpy._core.numeric") for n in _NUMPY_CORE}
    | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
       ("collections", "OrderedDict")})


class Refused(pickle.UnpicklingError):
    """A pickle named a global outside :data:`ALLOWED`."""

    def __init__(self, module: str, name: str):
        self.qualname = f"{module}.{name}"
        super().__init__(f"refused global {self.qualname}")


class _Restricted(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in ALLOWED:
            raise Refused(module, name)
        return super().find_class(module, name)


def loads(data: bytes, *, encoding: str = "latin1"):
    """Unpickle ``data`` with only :data:`ALLOWED` globals (raises :class:`Refused` otherwise)."""
    return _Restricted(io.BytesIO(data), encoding=encoding).load()


def load(path: str | Path, fix: str, *, encoding: str = "latin1"):
    """Unpickle a dataset file safely; any problem is a one-line :class:`UserError` with ``fix``."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _Restricted(f, encoding=encoding).load()
    except Refused as e:
        raise UserError(f"{path}: refused to unpickle {e.qualname}: a dataset pickle holds only "
                        f"arrays, lists and dicts, so this file may be crafted to run code; do not "
                        f"use it - {fix} from the official source") from None
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, AttributeError,
            ImportError, IndexError, KeyError, TypeError, MemoryError) as e:
        raise UserError(f"cannot read {path}: {type(e).__name__}: {e}; the file is truncated or "
                        f"not the expected pickle (a download that saved an HTML page?); "
                        f"{fix}") from None

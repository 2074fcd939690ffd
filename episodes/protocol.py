"""FSCIL session protocols (TOPIC / CEC convention, ``../shared``-free).

A protocol fixes: the classes in arrival order (``class_order``: native class ids), ``num_base`` base
classes, then ``num_sessions - 1`` incremental sessions of ``way`` classes with ``shot`` training
images each. Session 0 trains on every training image of the base classes; session ``t >= 1`` on
the ``way * shot`` images listed for it. The test set of session ``t`` is every test image of every
class seen so far (``num_base + t * way`` classes) - the CEC rule, not TOPIC's ``test_t.txt`` lists.

Class *positions* are the indices into ``class_order``: base classes are positions
``0 .. num_base-1``, session ``t``'s new classes ``num_base + (t-1)*way .. num_base + t*way - 1``.
Learners only ever see positions (see :meth:`SessionProtocol.position_of`).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from fsbench.errors import UserError

#: Standard protocol shapes: (num_base, way, shot, num_sessions incl. base).
PRESETS = {
    "cifar100": dict(num_base=60, way=5, shot=5, num_sessions=9),
    "miniimagenet": dict(num_base=60, way=5, shot=5, num_sessions=9),
    "cub200": dict(num_base=100, way=10, shot=5, num_sessions=11),
    "glyphs": dict(num_base=60, way=5, shot=5, num_sessions=9),
}


@dataclass
class SessionProtocol:
    name: str
    num_base: int
    way: int
    shot: int
    num_sessions: int
    class_order: np.ndarray  # (num_classes,) native class ids in arrival order
    session_train_indices: list  # list of int64 arrays: indices into the train dataset
    split_id: str = "generated"  # "generated" or the SHA-256 identity of official split files

    def __post_init__(self):
        self.class_order = np.asarray(self.class_order, dtype=np.int64)
        self.session_train_indices = [np.asarray(i, dtype=np.int64)
                                      for i in self.session_train_indices]
        need = self.num_base + (self.num_sessions - 1) * self.way
        if len(self.class_order) < need:
            raise UserError(f"protocol {self.name}: {need} classes needed "
                            f"({self.num_base} base + {self.num_sessions - 1} x {self.way}-way), "
                            f"class_order has {len(self.class_order)}")
        if len(np.unique(self.class_order)) != len(self.class_order):
            raise UserError(f"protocol {self.name}: class_order repeats a class")
        if len(self.session_train_indices) != self.num_sessions:
            raise UserError(f"protocol {self.name}: {self.num_sessions} sessions but "
                            f"{len(self.session_train_indices)} lists of training indices")

    # ----------------------------------------------------------------- geometry
    @property
    def num_classes(self) -> int:
        return self.num_base + (self.num_sessions - 1) * self.way

    @property
    def generated(self) -> bool:
        return self.split_id == "generated"

    def num_seen(self, t: int) -> int:
        self._check_session(t)
        return self.num_base + t * self.way

    def session_classes(self, t: int) -> np.ndarray:
        """Positions of the classes introduced in session ``t``."""
        self._check_session(t)
        lo = 0 if t == 0 else self.num_base + (t - 1) * self.way
        return np.arange(lo, self.num_seen(t), dtype=np.int64)

    def position_of(self, native_labels) -> np.ndarray:
        """Map native class ids to positions; classes outside the protocol map to -1."""
        native_labels = np.asarray(native_labels, dtype=np.int64)
        size = max(int(native_labels.max(initial=-1)), int(self.class_order.max())) + 1
        lut = np.full(size, -1, dtype=np.int64)
        lut[self.class_order[: self.num_classes]] = np.arange(self.num_classes)
        out = np.full(native_labels.shape, -1, dtype=np.int64)
        ok = native_labels >= 0
        out[ok] = lut[native_labels[ok]]
        return out

    def train_indices(self, t: int) -> np.ndarray:
        self._check_session(t)
        return self.session_train_indices[t]

    def test_indices(self, t: int, test_labels) -> np.ndarray:
        """Indices of the test images of every class seen by session ``t`` (cumulative)."""
        pos = self.position_of(test_labels)
        return np.flatnonzero((pos >= 0) & (pos < self.num_seen(t)))

    def describe(self) -> dict:
        return {"name": self.name, "num_base": self.num_base, "way": self.way, "shot": self.shot,
                "num_sessions": self.num_sessions, "split_id": self.split_id,
                "generated": self.generated}

    def _check_session(self, t: int) -> None:
        if not 0 <= t < self.num_sessions:
            raise IndexError(f"session {t} outside 0..{self.num_sessions - 1}")

    # ----------------------------------------------------------------- checks
    def validate(self, train_labels) -> None:
        """Check every session's training images against the protocol (counts and classes)."""
        pos = self.position_of(train_labels)
        for t in range(self.num_sessions):
            idx = self.train_indices(t)
            if len(idx) and (idx.min() < 0 or idx.max() >= len(pos)):
                raise UserError(f"protocol {self.name}: session {t} lists an image index outside "
                                f"the training set (0..{len(pos) - 1})")
            got = pos[idx]
            want = self.session_classes(t)
            if not np.isin(got, want).all():
                bad = sorted(set(got.tolist()) - set(want.tolist()))[:5]
                raise UserError(f"protocol {self.name}: session {t} has images of classes at "
                                f"positions {bad}, expected only {want[0]}..{want[-1]}")
            counts = np.bincount(got - want[0], minlength=len(want))
            if t > 0 and not (counts == self.shot).all():
                raise UserError(f"protocol {self.name}: session {t} should hold {self.shot} "
                                f"images for each of its {self.way} classes, got counts "
                                f"{counts.tolist()}")
            if t == 0 and (counts == 0).any():
                raise UserError(f"protocol {self.name}: base session has no image for "
                                f"{int((counts == 0).sum())} base classes")

    # ----------------------------------------------------------------- builders
    @classmethod
    def generate(cls, train_labels, *, name: str, num_base: int, way: int, shot: int,
                 num_sessions: int, seed: int = 0, class_order=None) -> "SessionProtocol":
        """A deterministic seeded protocol: base sessions take every training image of the base
        classes; each incremental class takes ``shot`` images chosen by ``seed``.

        ``class_order`` defaults to the sorted native class ids (the standard benchmarks' native
        order); pass a permutation to shuffle classes.
        """
        train_labels = np.asarray(train_labels, dtype=np.int64)
        if class_order is None:
            class_order = np.unique(train_labels)
        class_order = np.asarray(class_order, dtype=np.int64)
        need = num_base + (num_sessions - 1) * way
        if len(class_order) < need:
            raise UserError(f"dataset has {len(class_order)} classes but protocol {name} needs "
                            f"{need}; pick a smaller protocol or another dataset")
        rng = np.random.default_rng(seed)
        sessions = [np.flatnonzero(np.isin(train_labels, class_order[:num_base]))]
        for t in range(1, num_sessions):
            chosen = []
            for c in class_order[num_base + (t - 1) * way: num_base + t * way]:
                members = np.flatnonzero(train_labels == c)
                if len(members) < shot:
                    raise UserError(f"class {c} has {len(members)} training images, fewer than "
                                    f"the {shot} shots protocol {name} needs")
                chosen.append(np.sort(rng.choice(members, size=shot, replace=False)))
            sessions.append(np.concatenate(chosen))
        return cls(name=name, num_base=num_base, way=way, shot=shot, num_sessions=num_sessions,
                   class_order=class_order[:need], session_train_indices=sessions,
                   split_id="generated")

    @classmethod
    def from_preset(cls, preset: str, train_labels, *, seed: int = 0, class_order=None,
                    session_train_indices=None, split_id: str | None = None) -> "SessionProtocol":
        """A standard protocol shape; with ``session_train_indices`` (e.g. read from the official
        split files) those indices are used and ``split_id`` records their identity."""
        if preset not in PRESETS:
            raise UserError(f"unknown protocol {preset!r}; valid: {', '.join(PRESETS)}")
        shape = PRESETS[preset]
        if session_train_indices is None:
            return cls.generate(train_labels, name=preset, seed=seed, class_order=class_order,
                                **shape)
        if class_order is None:
            class_order = np.unique(np.asarray(train_labels))
        need = shape["num_base"] + (shape["num_sessions"] - 1) * shape["way"]
        proto = cls(name=preset, class_order=np.asarray(class_order)[:need],
                    session_train_indices=session_train_indices,
                    split_id=split_id or fingerprint(session_train_indices), **shape)
        proto.validate(train_labels)
        return proto


def fingerprint(arrays) -> str:
    """SHA-256 over a list of index arrays (a split's identity when no file checksum exists)."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.asarray(a, dtype="<i8").tobytes())
        h.update(b"|")
    return h.hexdigest()

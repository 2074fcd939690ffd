"""Episodic sampler: N-way K-shot Q-query episodes over a label array, vectorised and counter-based.

Every random number is a pure function of ``(seed, episode index, slot)``: a splitmix64 hash of the
counter ``episode * slots_per_episode + slot`` keyed by the seed, computed with numpy ``uint64``
array operations. There is no RNG state that advances from one episode to the next, so episode ``i``
is the same whether it is drawn alone, after 10,000 others, or by shard 3 of 8 in another process.

Per batch of episodes the sampler runs

1. vectorised Floyd's algorithm over the eligible classes (``way`` steps over an ``(E,)`` array),
   then a vectorised Fisher-Yates shuffle of the ``way`` picks, which fixes the label order;
2. the same over the samples of each chosen class (``shot + query`` steps over an ``(E * way,)``
   array); the first ``shot`` picks are the support set, the rest the query set, so support and
   query are disjoint and both are uniform random subsets in random order.

Samples are looked up through a class-sorted index table (``order``, ``class_start``,
``class_size``), so there is no Python loop over classes or episodes. Bounded integers use the
high 32 bits of a hash times the bound (Lemire's multiply-shift without rejection): the bias is
below ``bound / 2**32``, i.e. < 1e-6 for any realistic class count or class size.

Typical use::

    sampler = EpisodeSampler(test.labels, way=5, shot=5, query=15, seed=0)
    eps = sampler.sample(0, 600)   # classes (600, 5), support (600, 5, 5), query (600, 5, 15)
    xs, ys, xq, yq = materialize(test, eps[:10])
    one_shot = eps.with_shot(1)              # BECLR-style 1-shot from the same draw
    save_manifest("test-5w5s.npz", eps, test.labels, sampler.meta)
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from fsbench.atomic import atomic_open
from fsbench.errors import UserError
from fsbench.jsonio import json_default

__all__ = [
    "ALGORITHM",
    "Episode",
    "EpisodeSampler",
    "Episodes",
    "episode_labels",
    "labels_sha256",
    "load_manifest",
    "materialize",
    "save_manifest",
]

#: Identifies the sampling scheme; stored in manifests and ``EpisodeSampler.meta``. Bump it if the
#: mapping (seed, episode) -> indices ever changes.
ALGORITHM = "splitmix64-floyd-v1"

_MANIFEST_FORMAT = "fsbench-episodes"
_MANIFEST_VERSION = 1

# splitmix64 constants (Steele, Lea & Flood 2014; Vigna's reference implementation).
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_SH30, _SH27, _SH31, _SH32 = (np.uint64(s) for s in (30, 27, 31, 32))
_LOW32 = np.uint64(0xFFFFFFFF)
_MASK64 = (1 << 64) - 1

# Episodes per internal block: keeps the temporaries of a 5-way 20-sample block inside L2/L3.
_BLOCK = 2048
# ``EpisodeSampler.episode(i)`` draws the aligned block of this many episodes around ``i`` once and
# serves single episodes from it (one draw costs ~1.7x one episode, ~1/30 per episode); the last
# few blocks are kept.
_SINGLE_BLOCK = 64
_SINGLE_CACHE = 4


def _mix_inplace(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, in place on a uint64 array (wrap-around arithmetic)."""
    z ^= z >> _SH30
    z *= _MIX1
    z ^= z >> _SH27
    z *= _MIX2
    z ^= z >> _SH31
    return z


def _seed_key(seed: int) -> np.uint64:
    """Spread the user seed over 64 bits so that nearby seeds give unrelated streams."""
    z = np.array([(int(seed) ^ 0x5EED_F5BE_AC40_0001) & _MASK64], dtype=np.uint64)
    return _mix_inplace(z * _GOLDEN)[0]


def _ordered_sample(n: np.ndarray, k: int, ctr0: np.ndarray, key: np.uint64) -> np.ndarray:
    """A uniformly random ordered k-subset of ``range(n[r])`` for every row r.

    ``n``: (rows,) or (1,) uint64 population sizes, all >= k (and < 2**31). Step ``s`` of row ``r``
    uses the 64-bit word ``splitmix64(key, ctr0[r] + s)``: its high 32 bits drive Floyd's algorithm,
    its low 32 bits the Fisher-Yates shuffle of the picks (Floyd's own output order depends on the
    values: n-1 can only come last). Returns a (k, rows) int32 array. All random words are made in
    one vectorised pass; the sequential parts (collision checks, swaps) work on contiguous rows.
    """
    rows = ctr0.shape[0]
    steps = np.arange(k, dtype=np.uint64)[:, None]
    z = ctr0 + steps  # (k, rows) counters -> splitmix64 outputs, in place
    z *= _GOLDEN
    z += key
    tmp = z >> _SH30
    z ^= tmp
    z *= _MIX1
    np.right_shift(z, _SH27, out=tmp)
    z ^= tmp
    z *= _MIX2
    np.right_shift(z, _SH31, out=tmp)
    z ^= tmp
    # Floyd: for j = n-k+s (s = 0..k-1) draw t in [0, j]; take t unless already taken, else j.
    bound = n - (np.uint64(k - 1) - steps)  # j + 1, shape (k, rows) or (k, 1)
    np.right_shift(z, _SH32, out=tmp)
    tmp *= bound
    tmp >>= _SH32
    out = tmp.astype(np.int32)
    # Fisher-Yates partner of position s: uniform in [0, s], as a flat index into `out`.
    z &= _LOW32
    z *= steps + np.uint64(1)
    z >>= _SH32
    partner = z.view(np.int64)
    partner *= rows
    partner += np.arange(rows, dtype=np.int64)
    j = None
    for s in range(1, k):
        row = out[s]
        taken = (out[:s] == row).any(axis=0)
        if taken.any():
            if j is None:
                j = (bound - np.uint64(1)).astype(np.int32)
            np.copyto(row, j[s], where=taken)
    flat = out.reshape(-1)
    for i in range(k - 1, 0, -1):
        p = partner[i]
        t = flat[p]
        flat[p] = out[i]
        out[i] = t
    return out


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise UserError(f"{name} must be a positive integer, got {value!r}")
    if value <= 0:
        raise UserError(f"{name} must be a positive integer, got {value}")
    return int(value)


def labels_sha256(labels) -> str:
    """SHA-256 of a label array, whatever its integer dtype (hashed as little-endian int64)."""
    arr = np.ascontiguousarray(np.asarray(labels).reshape(-1), dtype="<i8")
    return hashlib.sha256(arr.tobytes()).hexdigest()


def episode_labels(way: int, per_class: int, num_episodes: int | None = None) -> np.ndarray:
    """Episode-local labels ``0..way-1`` repeated ``per_class`` times, in class order.

    Shape ``(way * per_class,)`` or, with ``num_episodes``, ``(num_episodes, way * per_class)``
    (a broadcast view; copy it before writing).
    """
    lab = np.repeat(np.arange(way, dtype=np.int64), per_class)
    if num_episodes is None:
        return lab
    return np.broadcast_to(lab, (num_episodes, lab.size))


@dataclass(frozen=True, eq=False)
class Episode:
    """One episode: ``classes (way,)`` class ids, ``support (way, shot)``, ``query (way, query)``
    dataset indices."""

    index: int
    classes: np.ndarray
    support: np.ndarray
    query: np.ndarray

    @property
    def way(self) -> int:
        return self.classes.shape[0]

    @property
    def shot(self) -> int:
        return self.support.shape[1]

    @property
    def n_query(self) -> int:
        return self.query.shape[1]

    def support_indices(self) -> np.ndarray:
        """``(way * shot,)`` dataset indices, class-major (matches :meth:`support_labels`)."""
        return self.support.reshape(-1)

    def query_indices(self) -> np.ndarray:
        return self.query.reshape(-1)

    def support_labels(self) -> np.ndarray:
        return episode_labels(self.way, self.shot)

    def query_labels(self) -> np.ndarray:
        return episode_labels(self.way, self.n_query)

    def indices(self) -> np.ndarray:
        """Support then query dataset indices, flat (usable as one DataLoader batch)."""
        return np.concatenate([self.support_indices(), self.query_indices()])


@dataclass(frozen=True, eq=False)
class Episodes:
    """A block of consecutive episodes ``start .. start + len - 1``.

    ``classes (E, way)``: dataset class ids, in label order (label ``c`` is ``classes[:, c]``);
    ``support (E, way, shot)`` and ``query (E, way, query)``: dataset indices.
    """

    classes: np.ndarray
    support: np.ndarray
    query: np.ndarray
    start: int = 0

    def __post_init__(self):
        e, w = self.classes.shape
        if self.support.shape[:2] != (e, w) or self.query.shape[:2] != (e, w):
            raise ValueError(f"inconsistent episode arrays: classes {self.classes.shape}, "
                             f"support {self.support.shape}, query {self.query.shape}")

    def __len__(self) -> int:
        return self.classes.shape[0]

    def __repr__(self) -> str:
        return (f"Episodes({len(self)} episodes from #{self.start}, {self.way}-way "
                f"{self.shot}-shot {self.n_query}-query)")

    @property
    def way(self) -> int:
        return self.classes.shape[1]

    @property
    def shot(self) -> int:
        return self.support.shape[2]

    @property
    def n_query(self) -> int:
        return self.query.shape[2]

    @property
    def episode_ids(self) -> np.ndarray:
        return np.arange(self.start, self.start + len(self), dtype=np.int64)

    def __getitem__(self, item):
        """``eps[i]``: :class:`Episode` at position i of this block; ``eps[a:b]``: a sub-block."""
        if isinstance(item, slice):
            lo, hi, step = item.indices(len(self))
            if step != 1:
                raise ValueError("Episodes slices must be contiguous (step 1)")
            return Episodes(self.classes[lo:hi], self.support[lo:hi], self.query[lo:hi],
                            self.start + lo)
        i = int(item)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"episode position {item} out of range for {len(self)} episodes")
        return Episode(self.start + i, self.classes[i], self.support[i], self.query[i])

    def __iter__(self) -> Iterator[Episode]:
        for i in range(len(self)):
            yield self[i]

    def with_shot(self, k: int) -> "Episodes":
        """The same episodes keeping the first ``k`` support samples per class (query unchanged).

        The support order is random, so these are uniform k-shot episodes; they are not the
        episodes a ``shot=k`` sampler would draw (its random words are laid out differently).
        """
        k = _positive_int("shot", k)
        if k > self.shot:
            raise UserError(f"cannot take {k}-shot episodes from {self.shot}-shot ones; "
                            f"draw them with shot >= {k}")
        return Episodes(self.classes, np.ascontiguousarray(self.support[:, :, :k]), self.query,
                        self.start)

    def support_indices(self) -> np.ndarray:
        """``(E, way * shot)`` dataset indices, class-major (matches :meth:`support_labels`)."""
        return self.support.reshape(len(self), -1)

    def query_indices(self) -> np.ndarray:
        return self.query.reshape(len(self), -1)

    def support_labels(self) -> np.ndarray:
        """``(E, way * shot)`` episode labels ``0..way-1`` in class order (a read-only view)."""
        return episode_labels(self.way, self.shot, len(self))

    def query_labels(self) -> np.ndarray:
        return episode_labels(self.way, self.n_query, len(self))

    def equals(self, other: "Episodes") -> bool:
        return (self.start == other.start and np.array_equal(self.classes, other.classes)
                and np.array_equal(self.support, other.support)
                and np.array_equal(self.query, other.query))

    @staticmethod
    def concat(parts: Sequence["Episodes"]) -> "Episodes":
        """Join consecutive blocks (e.g. from several shards) into one."""
        if not parts:
            raise ValueError("nothing to concatenate")
        for a, b in zip(parts, parts[1:]):
            if b.start != a.start + len(a):
                raise ValueError(f"blocks are not consecutive: {a.start}+{len(a)} then {b.start}")
        return Episodes(np.concatenate([p.classes for p in parts]),
                        np.concatenate([p.support for p in parts]),
                        np.concatenate([p.query for p in parts]), parts[0].start)


class EpisodeSampler:
    """N-way K-shot Q-query episodes over ``labels``; episode ``i`` depends only on (seed, i).

    Classes with fewer than ``shot + query`` samples are left out (``excluded_classes``).
    """

    def __init__(self, labels, way: int, shot: int, query: int, seed: int = 0):
        self.way = _positive_int("way", way)
        self.shot = _positive_int("shot", shot)
        self.query = _positive_int("query", query)
        if isinstance(seed, bool) or not isinstance(seed, Integral):
            raise UserError(f"seed must be an integer, got {seed!r}")
        self.seed = int(seed)
        labels = np.asarray(labels)
        if labels.ndim != 1:
            raise UserError(f"labels must be a 1-D array, got shape {labels.shape}")
        if labels.size == 0:
            raise UserError("cannot sample episodes from an empty dataset (no labels)")
        if not np.issubdtype(labels.dtype, np.integer):
            raise UserError(f"labels must be integers, got dtype {labels.dtype}")
        self.num_samples = int(labels.size)
        self.labels_sha256 = labels_sha256(labels)

        need = self.shot + self.query
        class_ids, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        ok = counts >= need
        self.excluded_classes = class_ids[~ok].astype(np.int64)
        self.classes = class_ids[ok].astype(np.int64)  # eligible class ids, ascending
        self.class_sizes = counts[ok].astype(np.int64)
        if not ok.any():
            raise UserError(
                f"{self.shot}-shot + {self.query}-query needs {need} samples per class but the "
                f"largest class has {int(counts.max())} (class sizes {int(counts.min())}.."
                f"{int(counts.max())}); lower shot/query so that shot+query <= {int(counts.max())}")
        if self.way > ok.sum():
            raise UserError(
                f"N-way larger than the classes available: {self.way}-way needs {self.way} classes "
                f"with >= {need} samples, only {int(ok.sum())} of {class_ids.size} have them; "
                f"lower way to <= {int(ok.sum())} or lower shot/query")

        # Class-sorted index table: eligible class c owns order[start[c] : start[c] + size[c]].
        order = np.argsort(inverse, kind="stable")
        starts_all = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self._order = order.astype(np.int64)
        self._class_start = starts_all[ok].astype(np.int64)
        self._size_u64 = self.class_sizes.astype(np.uint64)
        self._num_classes_u64 = np.full(1, ok.sum(), dtype=np.uint64)
        if counts.max() >= 2**31:
            raise ValueError("classes with 2**31 or more samples are not supported")
        self._key = _seed_key(self.seed)
        self._slots = self.way * (1 + need)  # random words per episode
        self._single: dict[int, Episodes] = {}  # block start -> read-only block (episode(i))

    # -- description -------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Classes episodes are drawn from (those with >= shot + query samples)."""
        return int(self.classes.size)

    @property
    def num_excluded(self) -> int:
        return int(self.excluded_classes.size)

    @property
    def meta(self) -> dict:
        """Sampler parameters, for manifests and result files."""
        return {"way": self.way, "shot": self.shot, "query": self.query, "seed": self.seed,
                "algorithm": ALGORITHM, "num_classes": self.num_classes,
                "num_excluded": self.num_excluded, "labels_sha256": self.labels_sha256}

    def __repr__(self) -> str:
        return (f"EpisodeSampler({self.way}-way {self.shot}-shot {self.query}-query, "
                f"seed={self.seed}, {self.num_classes} classes, {self.num_excluded} excluded)")

    # -- sampling ----------------------------------------------------------------------------
    def sample(self, start: int, count: int) -> Episodes:
        """Episodes ``start .. start + count - 1``."""
        if isinstance(start, bool) or not isinstance(start, Integral) or start < 0:
            raise UserError(f"episode start must be a non-negative integer, got {start!r}")
        if isinstance(count, bool) or not isinstance(count, Integral) or count < 0:
            raise UserError(f"episode count must be a non-negative integer, got {count!r}")
        start, count = int(start), int(count)
        w = self.way
        classes = np.empty((count, w), dtype=np.int64)
        support = np.empty((count, w, self.shot), dtype=np.int64)
        query = np.empty((count, w, self.query), dtype=np.int64)
        for lo in range(0, count, _BLOCK):
            hi = min(count, lo + _BLOCK)
            c, s = self._block(start + lo, hi - lo)
            classes[lo:hi] = c
            support[lo:hi] = s[:, :, :self.shot]
            query[lo:hi] = s[:, :, self.shot:]
        return Episodes(classes, support, query, start)

    def _block(self, first: int, e: int) -> tuple[np.ndarray, np.ndarray]:
        """Episodes ``first .. first+e-1``: class ids (e, way) and sample indices (e, way, need)."""
        w, need = self.way, self.shot + self.query
        base = np.arange(first, first + e, dtype=np.uint64)
        base *= np.uint64(self._slots)
        # Random words of episode i: slots 0..way-1 choose its classes; slot way + c*need + s is
        # pick s of class slot c. Counter = i * slots + slot.
        cpos = _ordered_sample(self._num_classes_u64, w, base, self._key)  # (way, e)
        cpos = np.ascontiguousarray(cpos.T).reshape(-1)  # row = episode * way + class slot
        ctr0 = (base[:, None] + (np.uint64(w) + np.arange(w, dtype=np.uint64) * np.uint64(need)))
        picks = _ordered_sample(self._size_u64[cpos], need, ctr0.reshape(-1), self._key)
        pos = picks.T + self._class_start[cpos][:, None]  # (e*way, need) int64
        samples = self._order[pos].reshape(e, w, need)
        return self.classes[cpos].reshape(e, w), samples

    def episode(self, i: int) -> Episode:
        """Episode ``i`` (same as ``sample(i, 1)[0]``).

        Served from a cached, read-only block of ``_SINGLE_BLOCK`` consecutive episodes, so that a
        loop over ``episode(i)`` costs about what ``sample`` costs per episode."""
        if isinstance(i, bool) or not isinstance(i, Integral) or i < 0:
            raise UserError(f"episode index must be a non-negative integer, got {i!r}")
        lo = int(i) - int(i) % _SINGLE_BLOCK
        block = self._single.pop(lo, None)
        if block is None:
            block = self.sample(lo, _SINGLE_BLOCK)
            for a in (block.classes, block.support, block.query):
                a.setflags(write=False)
            if len(self._single) >= _SINGLE_CACHE:
                self._single.pop(next(iter(self._single)))  # least recently used
        self._single[lo] = block  # most recently used last
        return block[int(i) - lo]

    def batches(self, count: int | None = None, batch_size: int = 1000,
                start: int = 0) -> Iterator[Episodes]:
        """Consecutive :class:`Episodes` blocks of ``batch_size`` from ``start`` (``count`` in all,
        or without end when ``count`` is None)."""
        batch_size = _positive_int("batch_size", batch_size)
        end = None if count is None else start + int(count)
        lo = start
        while end is None or lo < end:
            n = batch_size if end is None else min(batch_size, end - lo)
            yield self.sample(lo, n)
            lo += n

    def __iter__(self) -> Iterator[Episode]:
        """Episodes 0, 1, 2, ... without end (drawn in blocks)."""
        for block in self.batches(None, batch_size=256):
            yield from block

    def shard(self, count: int, num_shards: int, shard: int) -> Episodes:
        """Shard ``shard`` of ``num_shards``: its contiguous part of episodes ``0..count-1``."""
        num_shards = _positive_int("num_shards", num_shards)
        if not 0 <= shard < num_shards:
            raise UserError(f"shard must be in 0..{num_shards - 1}, got {shard}")
        lo = count * shard // num_shards
        hi = count * (shard + 1) // num_shards
        return self.sample(lo, hi - lo)


# -- materialisation ---------------------------------------------------------------------------
_LABELS: dict = {}


def _label_tensor(way: int, per_class: int, lead: tuple, device):
    """A fresh int64 tensor of :func:`episode_labels` (copied from a per-shape cache)."""
    key = (way, per_class, lead, str(device))
    t = _LABELS.get(key)
    if t is None:
        import torch

        lab = np.broadcast_to(episode_labels(way, per_class), (*lead, way * per_class))
        t = _LABELS[key] = torch.from_numpy(np.array(lab, order="C")).to(device or "cpu")
    return t.clone()


def materialize(dataset, episodes, *, device=None, dtype=None, scale: float | None = 1 / 255,
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                channels_last: bool = False):
    """Episode tensors from an image dataset: one gather and one conversion per tensor.

    Returns ``(support_images (E, way*shot, C, H, W), support_labels (E, way*shot),
    query_images (E, way*query, C, H, W), query_labels (E, way*query))`` as torch tensors: labels
    int64 ``0..way-1`` in class order, images ``dtype`` (default float32) multiplied by ``scale``
    (default 1/255, like torchvision ``ToTensor``) and then normalised with ``mean``/``std`` when
    given. For a single :class:`Episode` the leading ``E`` dimension is dropped.

    Fast path: an :class:`ArrayDataset` keeps a channel-first uint8 copy of its images
    (:meth:`ArrayDataset.channels_first`, made on first use), so each tensor is one
    ``index_select`` of whole CHW images and one conversion to float; a memmap is gathered with one
    fancy index and transposed per call. The uint8 batch goes to ``device`` before the conversion.
    Other datasets go through ``load_many`` or per-item ``load``.

    ``channels_last=True`` skips the uint8 HWC -> CHW reordering (the most expensive step on CPU):
    the tensors keep their logical ``(E, n, C, H, W)`` shape with ``(E, n, H, W, C)`` memory order,
    so ``x.flatten(0, 1)`` is a ``torch.channels_last`` batch that convolutions take as is (but
    ``x.view(...)`` across C, H, W needs ``reshape``).
    """
    import torch

    single = isinstance(episodes, Episode)
    dtype = torch.float32 if dtype is None else dtype
    gain = bias = None
    if mean is not None or std is not None:
        # x * scale, then (x - mean) / std  ==  x * (scale / std) - mean / std
        sc = 1.0 if scale is None else float(scale)
        m = torch.as_tensor(0.0 if mean is None else mean, dtype=torch.float64).reshape(-1)
        sd = torch.as_tensor(1.0 if std is None else std, dtype=torch.float64).reshape(-1)
        gain = (sc / sd).to(dtype).view(-1, 1, 1)
        bias = (-m / sd).to(dtype).view(-1, 1, 1)
        if device is not None:
            gain, bias = gain.to(device), bias.to(device)

    def finish(src):  # uint8 (..., C, H, W) -> dtype, scaled / normalised
        if device is not None:
            src = src.to(device)
        out = src.to(dtype)  # the one conversion (keeps the memory order)
        if gain is not None:
            out.mul_(gain).add_(bias)
        elif scale is not None and scale != 1:
            out.mul_(scale)
        return out

    chw = dataset.channels_first() if hasattr(dataset, "channels_first") and not channels_last \
        else None
    if chw is not None:  # the fast path: whole CHW images, one gather + one conversion per tensor
        lead = () if single else (len(episodes),)

        def take(idx: np.ndarray):
            flat = torch.from_numpy(idx.reshape(-1).astype(np.int64, copy=False))
            return finish(chw.index_select(0, flat)).view(*lead, -1, *chw.shape[1:])

        way = episodes.classes.shape[-1]
        ys = _label_tensor(way, episodes.support.shape[-1], lead, device)
        yq = _label_tensor(way, episodes.query.shape[-1], lead, device)
        return take(episodes.support), ys, take(episodes.query), yq

    if single:
        episodes = Episodes(episodes.classes[None], episodes.support[None], episodes.query[None],
                            episodes.index)
    e, way = len(episodes), episodes.way
    images = getattr(dataset, "images", None)

    def gather(idx: np.ndarray) -> np.ndarray:
        flat = idx.reshape(-1)
        if isinstance(images, np.ndarray):  # ArrayDataset, in memory or memmap
            raw = images[flat]
        elif hasattr(dataset, "load_many"):
            raw = np.asarray(dataset.load_many(flat))
        else:
            raw = np.stack([np.asarray(dataset.load(int(i))) for i in flat])
        if raw.ndim == 3:  # (n, H, W) grayscale
            raw = raw[..., None]
        return raw.reshape(idx.shape + raw.shape[1:])  # (E, n, H, W, C)

    def convert(raw: np.ndarray):
        if channels_last:
            src = torch.from_numpy(raw).permute(0, 1, 4, 2, 3)  # a view; the memory stays HWC
        else:  # HWC -> CHW on the uint8 bytes (4x less memory traffic than on floats)
            src = torch.from_numpy(np.ascontiguousarray(raw.transpose(0, 1, 4, 2, 3)))
        return finish(src)

    xs = convert(gather(episodes.support_indices()))
    xq = convert(gather(episodes.query_indices()))
    classes = torch.arange(way, device=device)
    ys = classes.repeat_interleave(episodes.shot).expand(e, -1).contiguous()
    yq = classes.repeat_interleave(episodes.n_query).expand(e, -1).contiguous()
    if single:
        return xs[0], ys[0], xq[0], yq[0]
    return xs, ys, xq, yq


# -- manifests ---------------------------------------------------------------------------------
def _checksum(classes, support, query, start, label_sha, meta_json) -> str:
    h = hashlib.sha256()
    for a in (classes, support, query):
        a = np.ascontiguousarray(a, dtype="<i8")
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    h.update(f"{int(start)}|{label_sha}|{meta_json}".encode())
    return h.hexdigest()


def save_manifest(path, episodes: Episodes, labels, meta: dict | None = None) -> Path:
    """Write ``episodes`` to a ``.npz`` manifest tied to ``labels`` (atomic: temp file + rename).

    Stored: the index arrays, ``start``, the SHA-256 of the label array, ``meta`` as JSON (pass
    ``sampler.meta`` plus anything else, e.g. dataset name and split) and a checksum over all of it.
    """
    path = Path(path)
    label_sha = labels_sha256(labels)
    meta_json = json.dumps(dict(meta or {}), sort_keys=True, default=json_default)
    classes = np.ascontiguousarray(episodes.classes, dtype=np.int64)
    support = np.ascontiguousarray(episodes.support, dtype=np.int64)
    query = np.ascontiguousarray(episodes.query, dtype=np.int64)
    arrays = {
        "format": np.array(_MANIFEST_FORMAT),
        "version": np.array(_MANIFEST_VERSION, dtype=np.int64),
        "classes": classes,
        "support": support,
        "query": query,
        "start": np.array(episodes.start, dtype=np.int64),
        "num_labels": np.array(np.asarray(labels).size, dtype=np.int64),
        "labels_sha256": np.array(label_sha),
        "meta_json": np.array(meta_json),
        "checksum": np.array(_checksum(classes, support, query, episodes.start, label_sha,
                                       meta_json)),
    }
    with atomic_open(path, "wb") as f:
        np.savez_compressed(f, **arrays)
    return path


def load_manifest(path, labels) -> tuple[Episodes, dict]:
    """Read a manifest written by :func:`save_manifest`; ``labels`` must be the same label array.

    Returns ``(episodes, meta)``. Raises :class:`UserError` when the file is missing, is not a
    manifest, is corrupt, or was made for another dataset/split.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"episode manifest {path} not found; check the path or create it with "
                        f"save_manifest")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile.BadZipFile, ValueError (pickled object arrays), OSError
        raise UserError(f"{path} is not a readable fsbench episode manifest ({type(e).__name__}: "
                        f"{e}); regenerate it") from e
    need = {"format", "version", "classes", "support", "query", "start", "labels_sha256",
            "meta_json", "checksum"}
    if not need <= data.keys() or str(data["format"]) != _MANIFEST_FORMAT:
        raise UserError(f"{path} is not an fsbench episode manifest (missing "
                        f"{sorted(need - data.keys()) or 'format tag'}); regenerate it")
    if int(data["version"]) > _MANIFEST_VERSION:
        raise UserError(f"episode manifest {path} has version {int(data['version'])}, newer than "
                        f"this fsbench supports ({_MANIFEST_VERSION}); upgrade fsbench")
    label_sha, meta_json = str(data["labels_sha256"]), str(data["meta_json"])
    classes, support, query = data["classes"], data["support"], data["query"]
    start = int(data["start"])
    if _checksum(classes, support, query, start, label_sha, meta_json) != str(data["checksum"]):
        raise UserError(f"episode manifest {path} is corrupt (checksum mismatch); regenerate it")
    got = labels_sha256(labels)
    if got != label_sha:
        raise UserError(f"episode manifest {path} belongs to another dataset/split: it was made "
                        f"for labels with SHA-256 {label_sha[:12]}..., the labels given hash to "
                        f"{got[:12]}...; use the matching split or regenerate the manifest")
    episodes = Episodes(classes.astype(np.int64), support.astype(np.int64),
                        query.astype(np.int64), start)
    return episodes, json.loads(meta_json)

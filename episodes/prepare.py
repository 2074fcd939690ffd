"""Image sources of the on-disk datasets, and the prepared cache (``fsbench data prepare``).

Every standard loader (cifar, cub, miniimagenet, tiered, omniglot) describes each split it reads as
a :class:`Split`: a lazy *source* dataset that decodes from the user's data root, plus a
``source_id`` fingerprint of what it lists. :func:`open_split` turns a split into the dataset a
benchmark uses:

* when ``$FSBENCH_CACHE/prepared/<dataset>-<split>-<res>/`` holds a cache whose sidecar matches the
  split's ``source_id`` and resolution, an :class:`ArrayDataset` over ``np.load(mmap_mode='r')`` -
  no decoding, no pickle, no per-item file open;
* otherwise the source itself, decoding each image on access, at the same resolution.

Both give identical pixels: the cache is written by decoding the source once (:func:`prepare_split`)
with the very same functions (:func:`decode_image`, :func:`fit`). ``source_id`` covers the
dataset folder's location, the listed files and their labels (file sources) or the pickles'
size and modification time (pickle sources): a moved or edited copy is not mistaken for the
prepared one, but images replaced in place under the same names need ``fsbench data prepare``
again. The ``<split>`` of the key names the split and its form or variant, e.g.
``cub200-train-256``, ``cub200-fsl_val_bbox-84``, ``miniimagenet-ravi_test-84``.

Resolution: ``None`` keeps each image's own size (CUB). An integer ``N`` gives ``N x N`` images:
an image that is already square is resized; one that is not has its shorter side resized to ``N``
and the centre cropped (the ``Resize(N) -> CenterCrop(N)`` of the test pipelines). Images already
``N x N`` are returned untouched.

Nothing here ever writes into the data root: caches go to ``$FSBENCH_CACHE`` (default
``~/.cache/fsbench``) and every file is written to a temporary name and moved into place.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from fsbench.atomic import atomic_write_text, remove_orphans, temp_dir
from fsbench.errors import UserError

from .base import ArrayDataset, FileDataset, ImageDataset

log = logging.getLogger("fsbench.episodes")
CACHE_VERSION = 1
#: Options every standard loader accepts (``data.options`` in presets).
COMMON_OPTIONS = ("resolution", "use_prepared", "skip_corrupt")
_CHUNK = 256  # images decoded per batch when preparing or scanning


# ---------------------------------------------------------------------------------- options
def check_options(dataset: str, options: dict | None, valid: Sequence[str]) -> dict:
    """``options`` as a dict, or a UserError naming unknown keys."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise UserError(f"data.options: unknown option(s) {unknown} for {dataset}; "
                        f"valid: {sorted(valid)}")
    return options


def resolution_option(dataset: str, options: dict, default: int | None) -> int | None:
    res = options.get("resolution")
    if res is None:  # not given (or null in a preset): the dataset's usual size
        return default
    if res in (0, "native"):
        return None
    try:
        res = int(res)
    except (TypeError, ValueError):
        res = -1
    if res < 1:
        raise UserError(f"data.options.resolution for {dataset} must be a positive integer or "
                        f"'native', got {options.get('resolution')!r}")
    return res


# ---------------------------------------------------------------------------------- layout
def require_root(dataset: str, root: Path | None, expected: str) -> Path:
    """The data root as a Path, or a UserError naming ``--data-root``/``FSBENCH_DATA`` and the
    expected layout (``expected`` is relative to the root, e.g. ``CUB_200_2011/images.txt``)."""
    if root is None:
        raise UserError(f"{dataset} reads its files from a data root: pass --data-root DIR or set "
                        f"FSBENCH_DATA; expected DIR/{expected}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"data root {root} does not exist or is not a folder; expected "
                        f"{root}/{expected}")
    return root


def missing_file(path: Path, root: Path, what: str) -> UserError:
    """A UserError for a missing dataset file, with a hint for the usual near misses: a
    misspelled or differently cased folder, an archive extracted one level too deep, or the
    dataset folder itself given as the data root."""
    rel = path.relative_to(root).parts
    cur, hint = root, ""
    for i, part in enumerate(rel):
        if (cur / part).exists():
            cur = cur / part
            continue
        rest = Path(*rel[i:])
        if (cur / cur.name / rest).exists():
            hint = f"; found {cur / cur.name / rest}: extracted one folder too deep?"
        elif i == 0 and len(rel) > 1 and (root / Path(*rel[1:])).exists():
            hint = f"; {root} looks like the {rel[0]} folder itself: pass its parent instead"
        elif cur.is_dir():
            import difflib

            names = [p.name for p in cur.iterdir()]
            lower = {n.lower(): n for n in names}
            close = ([lower[part.lower()]] if part.lower() in lower else
                     difflib.get_close_matches(part, names, n=1, cutoff=0.75))
            if close:
                hint = f"; found {cur / close[0]}: misspelled or differently cased?"
        break
    return UserError(f"expected {path} ({what}){hint}")


def require_file(path: Path, root: Path, what: str) -> Path:
    if not path.is_file():
        raise missing_file(path, root, what)
    return path


def read_user_pickle(path: Path, fix: str):
    """Unpickle one of a dataset's own files (CIFAR-100, the miniImageNet and tieredImageNet
    caches are distributed as pickles) with :mod:`fsbench.safepickle`: only containers, scalars
    and NumPy arrays are resolved, so a crafted file cannot run code; anything else is a one-line
    error naming the file and the refused global. Python-2 pickles load with ``encoding='latin1'``."""
    from fsbench import safepickle

    return safepickle.load(path, fix)


def file_stamp(*paths: Path) -> str:
    """A cheap identity of files (name, size, mtime) for sources read whole (pickles)."""
    h = hashlib.sha256()
    for p in paths:
        st = p.stat()
        h.update(f"{p.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def list_stamp(*parts) -> str:
    """SHA-256 over JSON-able parts (file lists, labels, form names)."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(np.ascontiguousarray(p, dtype="<i8").tobytes())
        else:
            h.update(json.dumps(p, separators=(",", ":")).encode())
        h.update(b"|")
    return h.hexdigest()


def missing_images(paths: Sequence[str], root: Path, listed_in: str) -> None:
    """A UserError when image files listed in an index are absent (names the first ones)."""
    gone = [p for p in paths if not os.path.isfile(p)]
    if gone:
        first = ", ".join(gone[:2])
        raise UserError(f"{len(gone)} of {len(paths)} images listed in {listed_in} are missing "
                        f"(first: {first}); re-extract the dataset archive under {root}")


# ---------------------------------------------------------------------------------- decoding
def fit(arr: np.ndarray, res: int | None) -> np.ndarray:
    """``(H, W, C)`` uint8 -> ``(res, res, C)``: shorter side to ``res``, centre crop."""
    if res is None or arr.shape[:2] == (res, res):
        return arr
    from PIL import Image

    im = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    out = np.asarray(_fit_pil(im, res), dtype=np.uint8)
    return out[..., None] if out.ndim == 2 else out


def _fit_pil(im, res: int):
    from PIL import Image

    w, h = im.size
    if (w, h) == (res, res):
        return im
    s = res / min(w, h)
    nw, nh = max(res, round(w * s)), max(res, round(h * s))
    im = im.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - res) // 2, (nh - res) // 2
    return im.crop((left, top, left + res, top + res))


def decode_image(src, mode: str = "RGB", res: int | None = None, box=None,
                 name: str | None = None) -> np.ndarray:
    """Decode an image file or bytes to ``(H, W, C)`` uint8, optionally cropping ``box``
    (x, y, w, h) and fitting to ``res``; a UserError names the file when it is unreadable."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src) as im:
            if res is not None and box is None and im.format == "JPEG":
                im.draft(mode, (res, res))  # DCT-domain downscale: never below res
            im = im.convert(mode)
            if box is not None:
                x, y, w, h = (float(v) for v in box)
                im = im.crop((int(x), int(y), int(x + w), int(y + h)))
            if res is not None:
                im = _fit_pil(im, res)
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot read image {name or src}: {e}; replace the file or set "
                        f"skip_corrupt (data.options.skip_corrupt=true / --skip-corrupt) to leave "
                        f"it out") from e
    return arr[..., None] if arr.ndim == 2 else arr


class ImageFiles(FileDataset):
    """:class:`FileDataset` whose decoding goes through :func:`decode_image` (resolution,
    JPEG draft mode, a message that names the file and the ``skip_corrupt`` option)."""

    def __init__(self, paths, labels, class_names, name: str = "", mode: str = "RGB",
                 crop_boxes=None, resolution: int | None = None):
        super().__init__(paths, labels, class_names, name, mode, crop_boxes)
        self.resolution = resolution

    def load(self, i: int) -> np.ndarray:
        box = None if self.crop_boxes is None else self.crop_boxes[i]
        return decode_image(self.paths[i], self.mode, self.resolution, box)

    def subset(self, indices) -> "ImageFiles":
        idx = np.asarray(indices, dtype=np.int64)
        boxes = None if self.crop_boxes is None else self.crop_boxes[idx]
        return ImageFiles([self.paths[i] for i in idx], self.labels[idx], self.class_names,
                          self.name, self.mode, boxes, self.resolution)

    def with_labels(self, labels, class_names) -> "ImageFiles":
        return ImageFiles(self.paths, labels, class_names, self.name, self.mode,
                          self.crop_boxes, self.resolution)


class _Lazy(ImageDataset):
    """Shared parts of the per-item decoding datasets below."""

    def load_many(self, indices) -> np.ndarray:
        return np.stack([self.load(int(i)) for i in np.asarray(indices).reshape(-1)])


class EncodedImages(_Lazy):
    """Encoded image bytes (PNG/JPEG) held in memory, decoded on access (tieredImageNet)."""

    def __init__(self, blobs: Sequence[bytes], labels, class_names, name: str = "",
                 mode: str = "RGB", resolution: int | None = None, origin: str = "item"):
        self.blobs = blobs
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.labels) != len(blobs):
            raise ValueError(f"{len(blobs)} images but {len(self.labels)} labels")
        self.class_names = list(class_names)
        self.name, self.mode, self.resolution, self.origin = name, mode, resolution, origin
        self._rows = np.arange(len(blobs))

    def load(self, i: int) -> np.ndarray:
        row = int(self._rows[i])
        return decode_image(bytes(self.blobs[row]), self.mode, self.resolution,
                            name=f"{self.origin} {row}")

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3

    def _view(self, rows, labels, class_names) -> "EncodedImages":
        out = EncodedImages.__new__(EncodedImages)
        out.__dict__.update(self.__dict__)
        out._rows, out.labels = rows, np.asarray(labels, dtype=np.int64)
        out.class_names = list(class_names)
        return out

    def subset(self, indices) -> "EncodedImages":
        idx = np.asarray(indices, dtype=np.int64)
        return self._view(self._rows[idx], self.labels[idx], self.class_names)

    def with_labels(self, labels, class_names) -> "EncodedImages":
        return self._view(self._rows, labels, class_names)


class Resized(_Lazy):
    """Another dataset's images fitted to ``res x res`` on access (array sources)."""

    def __init__(self, base: ImageDataset, res: int):
        self.base, self.res = base, res
        self.labels, self.class_names, self.name = base.labels, base.class_names, base.name

    def load(self, i: int) -> np.ndarray:
        return fit(self.base.load(i), self.res)

    @property
    def channels(self) -> int:
        return self.base.channels

    def subset(self, indices) -> "Resized":
        return Resized(self.base.subset(indices), self.res)

    def with_labels(self, labels, class_names) -> "Resized":
        return Resized(self.base.with_labels(labels, class_names), self.res)


class Rotated(_Lazy):
    """Each image of ``base`` under the rotations ``ks`` (multiples of 90 degrees) as new classes:
    item ``j * len(base) + i`` is image ``i`` rotated by ``ks[j] * 90`` degrees, with label
    ``base_label * len(ks) + j`` (Omniglot's rotation augmentation)."""

    def __init__(self, base: ImageDataset, ks: Sequence[int] = (0, 1, 2, 3), _items=None):
        self.base, self.ks = base, tuple(int(k) for k in ks)
        r = len(self.ks)
        n = len(base)
        items = _items if _items is not None else np.stack(
            [np.tile(np.arange(n), r), np.repeat(np.arange(r), n)], 1)
        self.items = np.asarray(items, dtype=np.int64).reshape(-1, 2)
        self.labels = base.labels[self.items[:, 0]] * r + self.items[:, 1]
        self.class_names = [f"{c}/rot{k * 90:03d}" for c in base.class_names for k in self.ks]
        self.name = base.name

    def load(self, i: int) -> np.ndarray:
        b, j = self.items[i]
        return np.ascontiguousarray(np.rot90(self.base.load(int(b)), self.ks[j], axes=(0, 1)))

    @property
    def channels(self) -> int:
        return self.base.channels

    def subset(self, indices) -> "Rotated":
        return Rotated(self.base, self.ks, self.items[np.asarray(indices, dtype=np.int64)])

    def with_labels(self, labels, class_names) -> ImageDataset:
        out = Rotated(self.base, self.ks, self.items)
        out.labels, out.class_names = np.asarray(labels, dtype=np.int64), list(class_names)
        return out


def array_source(images: np.ndarray, labels, class_names, name: str,
                 res: int | None) -> ImageDataset:
    """Decoded arrays as a dataset at ``res`` (fitted on access when their size differs)."""
    data = ArrayDataset(images, labels, class_names, name)
    if res is None or data.images.shape[1:3] == (res, res):
        return data
    return Resized(data, res)


# ---------------------------------------------------------------------------------- splits
@dataclass
class Split:
    """One split of a dataset as the loader reads it from the data root.

    ``source(res)`` builds the source dataset (decoding at ``res``); ``keys`` are the per-item
    identities (relative paths) of file sources, used to map split files to indices; ``official``
    holds the published counts (``images``, ``classes``) that ``fsbench data check`` compares.
    """

    dataset: str
    name: str
    source: Callable[[int | None], ImageDataset]
    source_id: str
    keys: list | None = None
    official: dict = field(default_factory=dict)
    index_files: dict = field(default_factory=dict)  # official-table name -> file on disk

    def key(self, res: int | None) -> str:
        return f"{self.dataset}-{self.name}-{res if res is not None else 'native'}"


@dataclass
class Opened:
    """What :func:`open_split` returns: the dataset and how it was obtained."""

    data: ImageDataset
    keys: list | None
    prepared: str | None = None  # cache folder used, if any
    skipped: list = field(default_factory=list)  # keys (or row numbers) left out as corrupt


def cache_root() -> Path:
    return Path(os.environ.get("FSBENCH_CACHE") or "~/.cache/fsbench").expanduser() / "prepared"


def cache_dir(split: Split, res: int | None) -> Path:
    return cache_root() / split.key(res)


_warned: set = set()


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        log.warning(msg)


def read_cache(split: Split, res: int | None, warn: bool = True, verify: str = "lazy"
               ) -> tuple[ArrayDataset, dict] | None:
    """The prepared cache of ``split`` at ``res`` when present, made from the same source and
    intact; otherwise None (with one warning line unless ``warn`` is off).

    ``verify="lazy"`` checks the images' SHA-256 when the file changed since its last check
    (size, mtime, inode; recorded in ``verified.json``), ``"always"`` checks it now (``data
    check``)."""
    hit, why = cache_status(split, res, verify)
    if hit is None and why and warn:
        _warn_once(why)
    return hit


def cache_status(split: Split, res: int | None, verify: str = "lazy"
                 ) -> tuple[tuple[ArrayDataset, dict] | None, str | None]:
    """``((dataset, meta), None)`` for a usable cache, ``(None, reason)`` for one that is not,
    ``(None, None)`` when there is none."""
    d = cache_dir(split, res)
    meta_path = d / "meta.json"
    if not meta_path.is_file():
        return None, None
    try:
        meta = json.loads(meta_path.read_text())
        ok = (meta.get("version") == CACHE_VERSION and meta.get("source_id") == split.source_id
              and meta.get("resolution") == res)
    except (OSError, ValueError, AttributeError):
        ok, meta = False, {}
    if not ok:
        return None, (f"prepared cache {d} was made from a different copy or version of "
                      f"{split.dataset}; ignoring it (rerun `fsbench data prepare --dataset "
                      f"{split.dataset}` to refresh it)")
    try:
        images = np.load(d / "images.npy", mmap_mode="r")
        labels = np.load(d / "labels.npy")
    except (OSError, ValueError) as e:
        return None, f"prepared cache {d} is unreadable ({e}); ignoring it"
    if len(images) != meta.get("count") or len(labels) != len(images):
        return None, f"prepared cache {d} is incomplete; ignoring it"
    if meta.get("sha256") and not _content_ok(d, images, meta["sha256"], verify == "always"):
        return None, (f"prepared cache {d} fails its SHA-256 check (changed or corrupt on disk); "
                      f"ignoring it (rerun `fsbench data prepare --dataset {split.dataset}`)")
    return (ArrayDataset(images, labels, meta["class_names"], split.dataset), meta), None


def _content_ok(d: Path, images: np.ndarray, want: str, force: bool) -> bool:
    """Whether ``images`` (a memmap of ``d/images.npy``) hash to ``want``; skipped when the file is
    unchanged since a check recorded in ``verified.json`` (unless ``force``)."""
    st = (d / "images.npy").stat()
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino, "sha256": want}
    if not force:
        try:
            if json.loads((d / "verified.json").read_text()) == stamp:
                return True
        except (OSError, ValueError):
            pass
    h = hashlib.sha256()
    step = max(1, (64 << 20) // max(1, images[0].nbytes))  # ~64 MiB at a time
    for s in range(0, len(images), step):
        h.update(np.ascontiguousarray(images[s:s + step]).data)
    if h.hexdigest() != want:
        return False
    try:
        atomic_write_text(d / "verified.json", json.dumps(stamp))
    except OSError:  # a read-only cache is still usable; it is checked again next time
        pass
    return True


def open_split(split: Split, res: int | None, *, use_prepared: bool = True,
               skip_corrupt: bool = False) -> Opened:
    """The dataset for ``split`` at ``res``: the prepared cache when valid, else the source
    (with corrupt images left out when ``skip_corrupt``)."""
    if use_prepared:
        hit = read_cache(split, res)
        if hit is not None:
            data, meta = hit
            skipped = meta.get("skipped", [])
            if skipped and not skip_corrupt:
                raise UserError(f"the prepared cache {cache_dir(split, res)} left out "
                                f"{len(skipped)} unreadable image(s) (first: {skipped[0]}); "
                                f"replace them and rerun `fsbench data prepare`, or set "
                                f"skip_corrupt (data.options.skip_corrupt=true)")
            keys = split.keys
            if keys is not None and skipped:
                gone = set(skipped)
                keys = [k for k in keys if k not in gone]
            return Opened(data, keys, str(cache_dir(split, res)), list(skipped))
    data = split.source(res)
    keys = split.keys
    if not skip_corrupt or not decodes(data):
        return Opened(data, keys)
    bad = [i for i, _ in unreadable(data)]
    if not bad:
        return Opened(data, keys)
    names = [keys[i] if keys is not None else i for i in bad]
    good = np.setdiff1d(np.arange(len(data)), bad)
    log.warning(f"{split.dataset} {split.name}: skipped {len(bad)} unreadable image(s) "
                f"(first: {names[0]})")
    keys = None if keys is None else [keys[i] for i in good]
    return Opened(data.subset(good), keys, None, names)


def decodes(data: ImageDataset) -> bool:
    """Whether ``data`` decodes encoded images on access (so an item can be unreadable)."""
    return isinstance(data, (ImageFiles, EncodedImages))


def _load_or_error(data: ImageDataset, i: int):
    try:
        return data.load(i), None
    except UserError as e:
        return None, str(e)


def _decode_all(data: ImageDataset, workers: int | None):
    """Yields ``(start, list of (image | None, error | None))`` for consecutive chunks."""
    workers = max(1, workers or min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        for s in range(0, len(data), _CHUNK):
            idx = range(s, min(len(data), s + _CHUNK))
            yield s, list(pool.map(lambda i: _load_or_error(data, i), idx))


def unreadable(data: ImageDataset, workers: int | None = None) -> list[tuple[int, str]]:
    """``(index, error message)`` of every item that fails to decode."""
    return [(s + j, err) for s, results in _decode_all(data, workers)
            for j, (_, err) in enumerate(results) if err is not None]


# ---------------------------------------------------------------------------------- writing
def _npy_header(shape) -> bytes:
    """A 128-byte ``.npy`` v1.0 header for uint8 C-order data (fixed size, so it can be
    rewritten in place when the count changes)."""
    d = "{'descr': '|u1', 'fortran_order': False, 'shape': (%s), }" % "".join(
        f"{int(s)}, " for s in shape).rstrip(" ")
    body = d.ljust(128 - 10 - 1) + "\n"
    if len(body) != 118:
        raise ValueError(f"shape {shape} too large for the header")
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body.encode("latin1")


def prepare_split(split: Split, res: int | None, *, skip_corrupt: bool = False,
                  workers: int | None = None, progress: Callable[[int, int], None] | None = None
                  ) -> dict:
    """Decode every image of ``split`` once into ``cache_dir(split, res)``: ``images.npy``
    ``(N, res, res, C)`` uint8, ``labels.npy`` and ``meta.json``. Writes go to a temporary
    folder beside it, renamed into place at the end; memory stays at one chunk of images."""
    if res is None:
        raise UserError(f"{split.dataset} images differ in size; pass --resolution N (e.g. 256 "
                        f"for the FSCIL pipeline Resize(256)->CenterCrop(224), 84 for FSL)")
    data = split.source(res)
    n = len(data)
    if n == 0:
        raise UserError(f"{split.dataset} {split.name}: no images to prepare")
    final = cache_dir(split, res)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(final.parent)  # folders of prepares that were killed
    tmp = temp_dir(final)
    t0 = time.perf_counter()
    try:
        shape = None
        bad: list[int] = []
        written = 0
        digest = hashlib.sha256()  # of the image bytes, verified when the cache is read
        with open(tmp / "images.npy", "wb") as f:
            f.write(b"\0" * 128)  # header written once the shape and count are known
            for s, results in _decode_all(data, workers):
                for j, (img, err) in enumerate(results):
                    if err is not None:
                        if not skip_corrupt:
                            raise UserError(err)
                        bad.append(s + j)
                        continue
                    if shape is None:
                        shape = img.shape
                    if img.shape != shape:
                        raise UserError(f"{split.dataset} {split.name}: image {s + j} is "
                                        f"{img.shape[1]}x{img.shape[0]}, expected "
                                        f"{shape[1]}x{shape[0]}; pass --resolution N")
                    row = np.ascontiguousarray(img, dtype=np.uint8).data
                    f.write(row)
                    digest.update(row)
                    written += 1
                if progress:
                    progress(min(n, s + _CHUNK), n)
            if shape is None:
                raise UserError(f"{split.dataset} {split.name}: no readable image")
            f.seek(0)
            f.write(_npy_header((written, *shape)))
        good = np.setdiff1d(np.arange(n), bad)
        np.save(tmp / "labels.npy", np.asarray(data.labels, dtype=np.int64)[good])
        keys = split.keys
        meta = {"version": CACHE_VERSION, "dataset": split.dataset, "split": split.name,
                "resolution": res, "source_id": split.source_id, "count": written,
                "shape": [written, *shape], "class_names": list(data.class_names),
                "sha256": digest.hexdigest(),
                "skipped": [keys[i] if keys is not None else int(i) for i in bad],
                "seconds": round(time.perf_counter() - t0, 3),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    meta["path"] = str(final)
    return meta


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished folder ``tmp`` to ``final``, replacing an older one."""
    old = None
    if final.exists():
        old = final.with_name(f".old-{final.name}-p{os.getpid()}-old")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------- assembly
def open_all(splits: dict, res: int | None, options: dict) -> tuple[dict, dict]:
    """:func:`open_split` on every split; returns ``(opened by name, provenance info)``."""
    opened = {k: open_split(s, res, use_prepared=options.get("use_prepared") is not False,
                            skip_corrupt=bool(options.get("skip_corrupt")))
              for k, s in splits.items()}
    info = {"resolution": res if res is not None else "native",
            "prepared": {k: o.prepared for k, o in opened.items()},
            "skipped_corrupt": {k: len(o.skipped) for k, o in opened.items()}}
    return opened, info


def fsl_benchmark(name: str, splits: dict, res: int | None, options: dict, info: dict):
    """An :class:`FSLBenchmark` from ``train``/``val``/``test`` splits (val may be absent)."""
    from .base import FSLBenchmark

    opened, extra = open_all(splits, res, options)
    val = opened.get("val")
    return FSLBenchmark(name, opened["train"].data, val.data if val else None,
                        opened["test"].data, {"dataset": name, **info, **extra})

"""Prepared cache vs per-item JPEG decoding, and the memory `fsbench data prepare` needs.

    python benchmarks/bench_prepare.py [--quick]

1. Fabricates a miniImageNet-format tree (FSCIL form: flat ``images/`` of 84x84 JPEGs +
   ``split/train.csv``) in a temporary folder, 2,000 training images (``--quick``: 600).
2. One training epoch (shuffled, batches of 64 uint8 images through a torch DataLoader; best
   of 3) over the loader's dataset decoding each JPEG with PIL, then
   ``fsbench data prepare`` and the same epoch over the memory-mapped cache the loader now
   returns. Prints images/s of both, the ratio and ``target >= 5x: PASS/FAIL`` (plus, for
   reference, the data layer alone and the batched gather the runners use for arrays).
3. Peak resident memory of ``fsbench data prepare`` on a 10,000-image tree (``--quick``: 2,000),
   measured in a fresh subprocess with ``resource.getrusage`` (max RSS), next to the size of the
   cache it writes: preparation streams the images, so memory stays far below the data size.

Everything lives under one temporary folder ($FSBENCH_CACHE points inside it) removed at the end.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, resource, sys, time
from fsbench.cli import main
from fsbench.cli import build_parser
from fsbench.registry import load_builtins
build_parser()  # the imports every fsbench command pays (torch, the command modules, ...)
load_builtins()
try:  # resident memory now (Linux), else the peak so far
    base = int([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1])
except OSError:
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
rc = main(["data", "prepare", "--dataset", "miniimagenet", "--data-root", sys.argv[1]])
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"rc": rc, "base_kib": base, "peak_kib": peak, "seconds": dt}))
"""


def wnids() -> list:
    path = Path(__file__).resolve().parents[1] / "episodes" / "miniimagenet_classes.json"
    return json.loads(path.read_text())["wnids"]


def jpeg_pool(n: int, size: int = 84, seed: int = 0) -> list:
    """``n`` distinct photo-like JPEGs (smooth colour fields + texture), quality 90."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        low = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        im = np.asarray(Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC),
                        dtype=np.int16)
        im = np.clip(im + rng.normal(0, 18, im.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def fabricate(root: Path, per_class: int, pool: list) -> int:
    d = root / "miniimagenet"
    (d / "images").mkdir(parents=True)
    (d / "split").mkdir()
    k = 0
    for split, lo, n in (("train", 1, per_class), ("test", 501, 1)):
        rows = []
        for w in wnids():
            for j in range(n):
                name = f"{w}{lo + j:08d}.jpg"
                (d / "images" / name).write_bytes(pool[k % len(pool)])
                k += 1
                rows.append((name, w))
        with open(d / "split" / f"{split}.csv", "w", newline="") as f:
            wr = csv.writer(f, lineterminator="\n")
            wr.writerow(["filename", "label"])
            wr.writerows(rows)
    return k


def epoch(data, batch_size: int = 64, seed: int = 0, repeats: int = 3) -> float:
    """Images per second through a shuffled epoch of a torch DataLoader (num_workers=0) that
    delivers uint8 batches (the float conversion is the same for both sources and belongs on the
    accelerator); best of ``repeats`` epochs."""
    import torch
    from torch.utils.data import DataLoader, Dataset

    class Items(Dataset):
        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            img, label = data[i]
            return torch.from_numpy(np.array(img)), label  # a copy: memmap items are read-only

    best = 0.0
    for r in range(repeats):
        g = torch.Generator().manual_seed(seed + r)
        loader = DataLoader(Items(), batch_size=batch_size, shuffle=True, generator=g)
        t0 = time.perf_counter()
        n = 0
        for x, _ in loader:
            n += len(x)
        best = max(best, n / (time.perf_counter() - t0))
    return best


def items(data, seed: int = 0) -> float:
    """Images per second of plain ``data[i]`` in a shuffled order (the data layer alone)."""
    order = np.random.default_rng(seed).permutation(len(data))
    t0 = time.perf_counter()
    for i in order:
        data[int(i)]
    return len(order) / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sets (CI smoke run)")
    args = ap.parse_args(argv)
    per_class, big_per_class = (6, 20) if args.quick else (20, 100)
    with tempfile.TemporaryDirectory(prefix="fsbench-bench-prepare-") as tmp:
        tmp = Path(tmp)
        os.environ["FSBENCH_CACHE"] = str(tmp / "cache")
        logging.getLogger("fsbench.episodes").setLevel(logging.ERROR)  # "generated split" note
        from fsbench.cli import main as cli
        from fsbench.registry import DATASETS

        build = DATASETS.get("miniimagenet").obj
        pool = jpeg_pool(64)
        fabricate(tmp / "small", per_class, pool)
        live = build(tmp / "small", "fscil", {"use_prepared": False}).train
        n = len(live)
        print(f"dataset: {n} training JPEGs 84x84 (miniImageNet FSCIL form), "
              f"{np.mean([len(b) for b in pool]) / 1024:.1f} KiB each on average")
        epoch(live.subset(np.arange(min(n, 128))), repeats=1)  # warm-up (imports, page cache)
        jpeg_rate = epoch(live)
        t0 = time.perf_counter()
        cli(["data", "prepare", "--dataset", "miniimagenet", "--data-root", str(tmp / "small"),
             "--task", "fscil"])
        prep_s = time.perf_counter() - t0
        cached = build(tmp / "small", "fscil", {}).train
        assert isinstance(cached.images, np.memmap), "the loader did not use the prepared cache"
        cache_rate = epoch(cached)
        t0 = time.perf_counter()
        for s in range(0, n, 64):
            cached.load_many(np.arange(s, min(n, s + 64)))
        gather_rate = n / (time.perf_counter() - t0)
        layer = items(cached) / items(live)
        ratio = cache_rate / jpeg_rate
        print(f"one epoch, PIL decode per item:      {jpeg_rate:10.0f} images/s")
        print(f"one epoch, prepared cache (memmap):  {cache_rate:10.0f} images/s")
        print(f"  (batched gather from the cache:    {gather_rate:10.0f} images/s)")
        print(f"  (data layer alone, ds[i] cache / decode: {layer:.0f}x)")
        print(f"data prepare of {n + 100} images: {prep_s:.2f} s")
        print(f"ratio cache / decode: {ratio:.1f}x   target >= 5x: "
              f"{'PASS' if ratio >= 5 else 'FAIL'}")

        total = fabricate(tmp / "big", big_per_class, pool)
        out = subprocess.run([sys.executable, "-c", CHILD, str(tmp / "big")], check=True,
                             capture_output=True, text=True, env={**os.environ})
        r = json.loads(out.stdout.strip().splitlines()[-1])
        size = total * 84 * 84 * 3 / 2**20
        print(f"data prepare of {total} images ({size:.0f} MiB of pixels written): "
              f"{r['seconds']:.1f} s, peak RSS {r['peak_kib'] / 1024:.0f} MiB "
              f"(+{(r['peak_kib'] - r['base_kib']) / 1024:.0f} MiB over the "
              f"{r['base_kib'] / 1024:.0f} MiB resident after fsbench's imports)")
        return 0 if ratio >= 5 and r["rc"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark the episodic sampler (fsbench.episodes.sampler) against per-episode Python loops.

    python benchmarks/bench_sampler.py [--quick] [--threads N]

1. Index sampling only (5-way 5-shot 15-query): fsbench ``EpisodeSampler.sample`` (and one
   ``EpisodeSampler.episode(i)`` call per episode) vs a naive loop of
   ``random.sample`` over the classes and then within each class (easyfsl-style), on a 100 x 600
   label array and on a glyphs-like test split (300 classes of 90..110).
2. Episodes materialised as float tensors from an in-memory dataset of 100 classes x 600 uint8
   images of 3x32x32: fsbench ``sample`` + ``materialize`` vs learn2learn's TaskDataset
   (NWays, KShots, LoadData, RemapLabels) when ``import learn2learn`` works, and vs a naive torch
   Dataset + per-item loop. Both baselines read the same per-item view (uint8 HWC -> float
   CHW / 255, i.e. torchvision ToTensor) and split support/query; fsbench returns the same tensors.

Every number is measured in this run. The methods of a section run in interleaved short rounds and
each reports its best round, so a burst of load from other processes does not favour one method.
torch runs with 2 threads by default, the thread count of ``fsbench run`` (``--threads``); on a
machine shared with other jobs use ``--threads 1`` (OpenMP threads that wait for a core make timings
erratic). The per-item baselines gain nothing from a second thread (their tensors are single
images). Measured on a quiet 2-core AMD EPYC: fsbench 1 episode per call 25.8x learn2learn with 2
threads, 19.3-23.6x with 1 thread. The process uses fsbench's malloc setting (fsbench.memory), as
every fsbench run does; the baselines run in the same process with it.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from collections import defaultdict

import numpy as np

WAY, SHOT, QUERY = 5, 5, 15


def interleaved_rates(methods: dict, rounds: int) -> dict:
    """``methods``: name -> (fn, n) where ``fn()`` processes ``n`` episodes. Best rate per name."""
    for fn, _ in methods.values():  # warm-up
        fn()
    best = {name: float("inf") for name in methods}
    for _ in range(rounds):
        for name, (fn, n) in methods.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], (time.perf_counter() - t) / n)
    return {name: 1.0 / sec for name, sec in best.items()}


def naive_sampler(labels: np.ndarray, seed: int = 0):
    """Per-episode ``random.sample`` over classes and within each class (built once, not timed)."""
    by_class = defaultdict(list)
    for i, y in enumerate(labels.tolist()):
        by_class[y].append(i)
    classes = [c for c, idx in by_class.items() if len(idx) >= SHOT + QUERY]
    rng = random.Random(seed)

    def episode():
        chosen = rng.sample(classes, WAY)
        support, query = [], []
        for c in chosen:
            picks = rng.sample(by_class[c], SHOT + QUERY)
            support.append(picks[:SHOT])
            query.append(picks[SHOT:])
        return chosen, support, query

    return episode


def row(name: str, rate: float, ref: float, width: int = 46) -> str:
    return f"   {name:<{width}}{rate:>12,.0f}{rate / ref:>9.1f}x"


def bench_indices(quick: bool) -> float:
    from fsbench.episodes.sampler import EpisodeSampler

    sizes = np.random.default_rng(0).integers(90, 111, size=300)
    datasets = [
        ("100 cls x 600", np.repeat(np.arange(100), 600)),
        ("glyphs-like 300 cls x ~100", np.repeat(np.arange(300), sizes)),
    ]
    n_fast, n_naive, rounds = (20_000, 1_000, 3) if quick else (50_000, 2_000, 6)
    print(f"1) indices only, {WAY}-way {SHOT}-shot {QUERY}-query (rounds of {n_fast:,} episodes"
          f" for fsbench, {n_naive:,} for the naive loop; best of {rounds})")
    print(f"   {'dataset / method':<46}{'episodes/s':>12}{'ratio':>10}")
    slowest = float("inf")
    for name, labels in datasets:
        sampler = EpisodeSampler(labels, WAY, SHOT, QUERY, seed=0)
        ep = naive_sampler(labels)
        start = [0]

        def fast():  # fresh episodes every round
            sampler.sample(start[0], n_fast)
            start[0] += n_fast

        def single():  # one episode per call, as an episodic training loop asks
            lo = start[0]
            for i in range(lo, lo + n_naive):
                sampler.episode(i)
            start[0] += n_naive

        r = interleaved_rates({"fsbench": (fast, n_fast), "single": (single, n_naive),
                               "naive": (lambda: [ep() for _ in range(n_naive)], n_naive)}, rounds)
        slowest = min(slowest, r["fsbench"])
        print(f"   {name}")
        print(row("  fsbench EpisodeSampler.sample", r["fsbench"], r["naive"]))
        print(row("  fsbench EpisodeSampler.episode(i) loop", r["single"], r["naive"]))
        print(row("  naive random.sample loop", r["naive"], r["naive"]))
    print(f"   target >= 100,000 eps/s: {'PASS' if slowest >= 100_000 else 'FAIL'}"
          f" (slowest {slowest:,.0f})")
    return slowest


def per_item_view(images: np.ndarray, labels: np.ndarray):
    """torch map-style Dataset over the uint8 array: ``ds[i] -> (float CHW / 255, label)``."""
    import torch

    class PerItemView(torch.utils.data.Dataset):
        def __len__(self):
            return len(labels)

        def __getitem__(self, i):
            return torch.from_numpy(images[i]).permute(2, 0, 1).float().div_(255), int(labels[i])

    return PerItemView()


def bench_materialize(quick: bool) -> None:
    import torch

    from fsbench.episodes.base import ArrayDataset
    from fsbench.episodes.sampler import EpisodeSampler, materialize

    n_cls, per_cls = 100, 600
    labels = np.repeat(np.arange(n_cls), per_cls)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(labels.size, 32, 32, 3), dtype=np.uint8)
    ds = ArrayDataset(images, labels)
    view = per_item_view(images, labels)
    n_fast, n_slow, rounds = (32, 8, 3) if quick else (64, 16, 6)
    print(f"\n2) materialized float tensors, {n_cls} cls x {per_cls} uint8 images 3x32x32 in"
          f" memory, {WAY * SHOT} support + {WAY * QUERY} query images per episode")
    sampler = EpisodeSampler(labels, WAY, SHOT, QUERY, seed=0)
    methods = {}

    def fsbench_run(batch, channels_last=False):
        start = [0]

        def run():  # indices drawn in one block, tensors made `batch` episodes at a time
            block = sampler.sample(start[0], n_fast)
            for lo in range(0, n_fast, batch):
                materialize(ds, block[lo] if batch == 1 else block[lo:lo + batch],
                            channels_last=channels_last)
            start[0] += n_fast
        return run, n_fast

    methods["fsbench sample + materialize (16 eps/call)"] = fsbench_run(16)
    methods["fsbench sample + materialize (1 ep/call)"] = fsbench_run(1)
    methods["  same, channels_last=True (16 eps/call)"] = fsbench_run(16, True)

    def split(x, y):
        order = torch.argsort(y, stable=True)
        x, y = x[order].view(WAY, SHOT + QUERY, *x.shape[1:]), y[order].view(WAY, SHOT + QUERY)
        return (x[:, :SHOT].reshape(-1, *x.shape[2:]), y[:, :SHOT].reshape(-1),
                x[:, SHOT:].reshape(-1, *x.shape[2:]), y[:, SHOT:].reshape(-1))

    l2l_name = None
    try:
        import learn2learn as l2l
        from learn2learn.data.transforms import KShots, LoadData, NWays, RemapLabels
    except Exception as e:  # ImportError, or a broken build (learn2learn's Cython on new Pythons)
        print(f"   learn2learn not installed (fsbench install-extra learn2learn) "
              f"[{type(e).__name__}: {e}]")
    else:
        by_class = {int(c): np.flatnonzero(labels == c).tolist() for c in range(n_cls)}
        meta = l2l.data.MetaDataset(view, labels_to_indices=by_class)
        taskset = l2l.data.TaskDataset(meta, task_transforms=[
            NWays(meta, WAY), KShots(meta, SHOT + QUERY), LoadData(meta), RemapLabels(meta)],
            num_tasks=-1)

        def l2l_run():
            for _ in range(n_slow):
                split(*taskset.sample())

        l2l_name = f"learn2learn {l2l.__version__} TaskDataset"
        methods[l2l_name] = (l2l_run, n_slow)

    ep = naive_sampler(labels)

    def naive_run():
        for _ in range(n_slow):
            _, support, query = ep()
            torch.stack([view[i][0] for r in support for i in r])
            torch.stack([view[i][0] for r in query for i in r])
            torch.arange(WAY).repeat_interleave(SHOT)
            torch.arange(WAY).repeat_interleave(QUERY)

    naive_name = "naive torch Dataset + per-item loop"
    methods[naive_name] = (naive_run, n_slow)
    print(f"   (rounds of {n_fast} episodes for fsbench, {n_slow} for the loops; best of {rounds})")
    print(f"   {'method':<46}{'episodes/s':>12}{'ratio':>10}")
    r = interleaved_rates(methods, rounds)
    ref = r[l2l_name] if l2l_name else r[naive_name]
    for name, rate in r.items():
        print(row(name, rate, ref))
    best = max(rate for name, rate in r.items() if name.startswith("fsbench"))
    cl = r["  same, channels_last=True (16 eps/call)"]
    label = "learn2learn" if l2l_name else "naive per-item loop (learn2learn missing)"
    print(f"   target >= 20x {label}, default NCHW output: "
          f"{'PASS' if best >= 20 * ref else 'FAIL'} ({best / ref:.1f}x;"
          f" channels_last {cl / ref:.1f}x)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Benchmark the fsbench episodic sampler.")
    ap.add_argument("--quick", action="store_true", help="fewer episodes and rounds (~10 s)")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch CPU threads (default 2, as fsbench run)")
    args = ap.parse_args(argv)
    import torch

    from fsbench.memory import keep_freed_memory

    torch.set_num_threads(args.threads)
    # The malloc setting of every fsbench run (fsbench.memory; FSBENCH_MALLOC=system for glibc's
    # own). It is per process, so learn2learn and the naive loop run with it too.
    malloc = keep_freed_memory()
    print(f"fsbench sampler benchmark (numpy {np.__version__}, torch {torch.__version__}, "
          f"torch threads {args.threads}, python {sys.version.split()[0]}, malloc {malloc})\n")
    t = time.perf_counter()
    bench_indices(args.quick)
    bench_materialize(args.quick)
    print(f"\n(total {time.perf_counter() - t:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

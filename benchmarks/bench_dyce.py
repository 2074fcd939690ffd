"""DyCE's per-iteration overhead on the glyphs preset: a BECLR training step with the three DyCE
memories (equipartition assignment with ot.sinkhorn, FIFO update, prototype update, top-k
neighbours, loss on the B(1 + k) enhanced batch) vs the same step without memory (a plain
BYOL-style student-teacher step with the uniformity term).

Both learners start from the same weights and see the same pre-augmented batches; the DyCE one
first fills its memory and clusters it (k-means, timed separately: it runs once when the memory
is full and then every ``cluster_freq`` epochs), then both are timed in alternating blocks at an
epoch past ``memory_start_epoch`` (enhancement on).

Usage: ``python benchmarks/bench_dyce.py [--quick] [--iters N] [--threads T]``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, default=None, help="timed iterations per setting")
    ap.add_argument("--quick", action="store_true", help="fewer iterations (CI smoke run)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variant", default="official", choices=["official", "paper"])
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from fsbench import config
    from fsbench.api import build_context, load_benchmark
    from fsbench.fewshot.beclr import BECLR, Trainer, TwoViews, memory_size
    from fsbench.learner import DataInfo

    n_iter = args.iters or (6 if args.quick else 20)
    cfg = config.resolve("beclr", "glyphs", overrides=[f"dyce.variant={args.variant}"])
    plain_cfg = config.resolve("beclr", "glyphs", overrides=["dyce.enabled=false"])
    bench = load_benchmark("glyphs", "fsl", None, {})
    ctx = build_context(cfg, 1, torch.device("cpu"), 0, progress=False)
    t, d = cfg["train"], cfg["dyce"]
    batch = int(t["batch_size"])
    info = DataInfo(channels=1, image_size=32, num_classes=bench.train.num_classes)

    # pre-augmented batches (the data pipeline is the same for both and is not timed)
    views = TwoViews(ctx.train_transform, cfg["mask"])
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    batches = []
    size = memory_size(d["memory_scale"], d["num_clusters"], batch)
    n_fill = -(-size // (2 * batch)) + 1  # iterations until the memory is full, plus one
    for _ in range(n_fill + 2 * n_iter):
        idx = rng.choice(len(bench.train), batch, replace=False)
        pairs = [views(bench.train.load(int(i))) for i in idx]
        batches.append(torch.stack([p[0] for p in pairs]))
    torch.manual_seed(0)
    learner = BECLR(cfg, info)
    trainer = Trainer(learner, learner._config(len(bench.train)), "cpu", 0, 10, 100)
    torch.manual_seed(0)
    plain = BECLR(plain_cfg, info)
    plain_tr = Trainer(plain, plain._config(len(bench.train)), "cpu", 0, 10, 100)

    # fill the memory (epoch 0) and time the k-means initialisation
    dyce_s = []
    for mem in learner.memories:
        orig = mem.step

        def timed_step(z, epoch, _orig=orig):
            t0 = time.perf_counter()
            out = _orig(z, epoch)
            dyce_s.append(time.perf_counter() - t0)
            return out
        mem.step = timed_step
    for b in batches[:n_fill]:
        trainer.step(b, None, epoch=0)
    assert all(m.initialized for m in learner.memories)
    t0 = time.perf_counter()
    for m in learner.memories:
        m.cluster()
    t_kmeans = time.perf_counter() - t0
    dyce_s.clear()
    start = int(d["memory_start_epoch"])

    timed = {"dyce": [], "plain": []}
    todo = batches[n_fill:]
    half = max(1, n_iter // 2)
    for block in range(2):  # alternate: plain, dyce, plain, dyce
        for name, tr in (("plain", plain_tr), ("dyce", trainer)):
            for b in todo[block * half:(block + 1) * half]:
                t0 = time.perf_counter()
                out = tr.step(b, None, epoch=start)
                timed[name].append(time.perf_counter() - t0)
                if name == "dyce":
                    assert out["topk"] == int(d["topk"])
    med = {k: statistics.median(v) for k, v in timed.items()}
    dyce_per_it = sum(dyce_s) / max(1, len(timed["dyce"]))
    extra = med["dyce"] - med["plain"]
    print(f"DyCE overhead, glyphs preset ({args.variant}): batch {batch} (x2 views), memory "
          f"{size}, {d['num_clusters']} partitions, top-{d['topk']} -> "
          f"{2 * batch * (1 + int(d['topk']))} rows in the loss; conv4-"
          f"{cfg['backbone'].get('hidden', 64)}, torch threads {torch.get_num_threads()}")
    print(f"  plain BYOL-style step      {med['plain'] * 1e3:8.1f} ms (median of "
          f"{len(timed['plain'])})")
    print(f"  BECLR step with DyCE       {med['dyce'] * 1e3:8.1f} ms   overhead "
          f"{extra * 1e3:+.1f} ms ({extra / med['plain'] * 100:+.1f}%)")
    print(f"    inside the 3 DyCE.step calls (assign, enqueue, prototypes, neighbours): "
          f"{dyce_per_it * 1e3:.1f} ms/iteration")
    print(f"    rest (loss and backward on the enhanced batch): "
          f"{(extra - dyce_per_it) * 1e3:+.1f} ms/iteration")
    print(f"  k-means of the 3 memories (once when full, then every {d['cluster_freq']} epochs): "
          f"{t_kmeans * 1e3:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""OpTA: batched tensor Sinkhorn vs a per-episode ``ot.sinkhorn`` loop (same run, same data).

Data: 5-way 5-shot 15-query episodes of 512-d random features (random class centres, Gaussian
noise, and a random support->query shift per episode - the sample bias OpTA corrects).

Timed, on the transport stage of OpTA (standardise, class means, cost, Sinkhorn, barycentre; the
scikit-learn classifier that follows is the same code on both sides and is timed separately):

* ``batched``   - :class:`fsbench.fewshot.opta.OpTA` (all episodes at once, float64);
* ``batched32`` - the same with ``dtype: float32`` (costs/barycentres in float32);
* ``pot-loop``  - one ``ot.sinkhorn`` call per episode, run on the transposed problem for exactly
  the iterations the batched solver used for that episode (so both compute the same iterates:
  prototypes must agree to 1e-9 and the predictions must be identical - asserted);
* ``pot-own``   - one ``ot.sinkhorn`` per episode with POT's own stopping rule (marginal error
  < 1e-9, <= 1000 iterations), informational (full mode only).

Usage: ``python benchmarks/bench_opta.py [--quick] [--episodes N] [--threads T]``.
``--threads 1`` (default) keeps the comparison fair with the single-threaded loop; pass 0 for
torch's default.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch


#: feature regimes: per-dimension noise around unit-variance class centres. The Sinkhorn iteration
#: count (and so the per-episode loop's cost) grows as the classes separate.
REGIMES = {"noisy": 3.0, "clustered": 1.5}


def make_features(episodes: int, way: int, shot: int, query: int, dim: int, seed: int = 0,
                  noise: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(episodes, way, 1, dim, generator=g)
    shift = 1.0 * torch.randn(episodes, 1, 1, dim, generator=g)
    s = centres + noise * torch.randn(episodes, way, shot, dim, generator=g)
    q = centres + shift + noise * torch.randn(episodes, way, query, dim, generator=g)
    labels = torch.arange(way).repeat_interleave(shot).expand(episodes, -1)
    return s.reshape(episodes, way * shot, dim), labels, q.reshape(episodes, way * query, dim)


def _standardize_np(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(-1, keepdims=True)
    return x / np.maximum(x.std(-1, ddof=1, keepdims=True), np.finfo(x.dtype).tiny)


def pot_transport(p0: np.ndarray, q: np.ndarray, iters: int, reg: float) -> np.ndarray:
    """One OpTA pass for one episode with ``ot.sinkhorn`` doing ``iters`` iterations."""
    import ot

    c = ot.dist(p0, q)  # squared Euclidean
    c /= c.max()
    n, m = c.shape
    # Transposed problem: POT then updates the prototypes' scaling first, the order of the
    # batched solver, and the iterates match one for one.
    plan = ot.sinkhorn(np.full(m, 1.0 / m), np.full(n, 1.0 / n), c.T, reg,
                       numItermax=int(iters), stopThr=0.0, warn=False).T
    return (plan / plan.sum(1, keepdims=True)) @ q


def per_episode_opta(support, labels, query, iters, cfg):
    """The whole OpTA transport stage one episode at a time (numpy + ot.sinkhorn)."""
    way = int(labels.max()) + 1
    lab = labels[0].numpy()
    s_all, q_all = support.numpy(), query.numpy()
    out = np.empty((len(s_all), way, s_all.shape[-1]))
    for i in range(len(s_all)):
        s = _standardize_np(s_all[i].astype(np.float64))
        q = _standardize_np(q_all[i].astype(np.float64))
        p0 = np.stack([s[lab == c].mean(0) for c in range(way)])
        p = pot_transport(p0, q, iters[i], cfg.reg)
        out[i] = cfg.ratio * p + (1 - cfg.ratio) * p0
    return torch.from_numpy(out)


def timed(fn, repeat=1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--episodes", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="fewer episodes (CI smoke run)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    import ot  # noqa: F401  (imported before any timing: its first import takes seconds)

    from fsbench.fewshot.opta import OpTAConfig

    n_ep = args.episodes or (500 if args.quick else 2000)
    way, shot, query, dim = 5, 5, 15, 512
    cfg = OpTAConfig()
    print(f"OpTA, {n_ep} episodes {way}-way {shot}-shot {query}-query, {dim}-d random features "
          f"(class centres + shift + noise); reg {cfg.reg}, stop {cfg.stop}, max_iter "
          f"{cfg.max_iter}; torch threads {torch.get_num_threads()}")
    for regime, noise in REGIMES.items():
        s, lab, q = make_features(n_ep, way, shot, query, dim, args.seed, noise)
        run_regime(f"{regime} (noise {noise})", s, lab, q, cfg, args.quick)
    return 0


def run_regime(name, s, lab, q, cfg, quick):
    from threadpoolctl import threadpool_limits

    from fsbench.fewshot.opta import (OpTA, OpTAConfig, class_means, logreg_logits,
                                      normalized_cost, sinkhorn_batched, standardize)

    n_ep, way, query = len(s), int(lab.max()) + 1, q.shape[1] // (int(lab.max()) + 1)
    head, head32 = OpTA(cfg), OpTA(OpTAConfig(dtype="float32"))
    head.prototypes(s[:20], lab[:20], q[:20])  # warm-up
    pb, t_b = timed(lambda: head.prototypes(s, lab, q), 2)
    pb32, t_b32 = timed(lambda: head32.prototypes(s, lab, q), 2)
    # the Sinkhorn iterations each episode takes (the computation inside OpTA.prototypes)
    sd, qd = standardize(s.double()), standardize(q.double())
    p0 = class_means(sd, lab, way)
    _, iters = sinkhorn_batched(normalized_cost(p0, qd), cfg.reg, cfg.max_iter, cfg.stop)
    with threadpool_limits(1):
        pr, t_r = timed(lambda: per_episode_opta(s, lab, q, iters, cfg))
    diff = float((pb - pr).abs().max())

    def ot_batched():  # cost, Sinkhorn, barycentre for all episodes at once
        plan, _ = sinkhorn_batched(normalized_cost(p0, qd), cfg.reg, cfg.max_iter, cfg.stop)
        return (plan / plan.sum(-1, keepdim=True)) @ qd
    _, t_tb = timed(ot_batched, 2)
    p0n, qdn = p0.numpy(), qd.numpy()
    with threadpool_limits(1):
        _, t_tr = timed(lambda: [pot_transport(p0n[i], qdn[i], iters[i], cfg.reg)
                                 for i in range(n_ep)])
    print(f"\n[{name}] Sinkhorn iterations per episode: mean {iters.float().mean():.1f}, "
          f"max {int(iters.max())}")
    print("  transport stage (standardise, class means, cost, Sinkhorn, barycentre, mix):")
    print(f"    batched float64 {t_b:7.3f} s   batched float32 {t_b32:7.3f} s   per-episode "
          f"ot.sinkhorn loop {t_r:7.3f} s   max |prototype diff| {diff:.2e}")
    print(f"    speed-up: float64 {t_r / t_b:5.1f}x   float32 {t_r / t_b32:5.1f}x   "
          f"(target >= 10x)")
    print(f"  OT alone (cost, Sinkhorn, barycentre; whole batch in one block): batched "
          f"{t_tb:7.3f} s   per-episode {t_tr:7.3f} s   speed-up {t_tr / t_tb:5.1f}x")
    assert diff < 1e-9, f"batched and per-episode prototypes differ by {diff}"

    from fsbench.fewshot.opta import logreg_logits_batched

    qn = qd.numpy()
    lb, t_lr = timed(lambda: logreg_logits(pb.numpy(), qn))
    lt, t_lt = timed(lambda: logreg_logits_batched(pb, qd), 2)
    pred_b = lb.argmax(-1)
    pred_t = lt.argmax(-1).numpy()
    pred_r = logreg_logits(pr.numpy(), qn).argmax(-1)
    n_diff = int((pred_b != pred_r).sum())
    agree_lr = (pred_t == pred_b).mean() * 100
    print(f"  logistic regression: scikit-learn per episode {t_lr:7.3f} s, torch batched "
          f"{t_lt:7.3f} s ({t_lr / t_lt:5.1f}x); predictions agree {agree_lr:.3f}% "
          f"(target >= 99.9%)")
    print(f"  end to end (transport + logistic regression): per-episode loop with scikit-learn "
          f"{t_r + t_lr:7.3f} s, batched with torch {t_b + t_lt:7.3f} s: speed-up "
          f"{(t_r + t_lr) / (t_b + t_lt):5.1f}x (target >= 10x)")
    truth = np.repeat(np.arange(way), query)
    line = f"  predictions batched vs per-episode: {n_diff} of {pred_b.size} differ"
    if not quick:
        pred_32 = logreg_logits(pb32.double().numpy(), qn).argmax(-1)
        acc_plain = (logreg_logits(p0.numpy(), qn).argmax(-1) == truth).mean() * 100
        line += (f"; float32 vs float64: {int((pred_32 != pred_b).sum())} differ; accuracy "
                 f"OpTA {(pred_b == truth).mean() * 100:.2f}%, plain prototypes "
                 f"{acc_plain:.2f}%")
    print(line)
    assert n_diff == 0, "batched and per-episode OpTA predictions differ"
    if not quick:
        pot_head = OpTA(OpTAConfig(solver="pot"))
        with threadpool_limits(1):
            po, t_o = timed(lambda: pot_head.prototypes(s, lab, q))
        agree = (logreg_logits(po.numpy(), qn).argmax(-1) == pred_b).mean() * 100
        print(f"  ot.sinkhorn with its own stopping rule (marginal error < {cfg.pot_stop:g}): "
              f"{t_o:.3f} s, max |prototype diff| {float((po - pb).abs().max()):.2e}, "
              f"predictions agree {agree:.3f}%")


if __name__ == "__main__":
    raise SystemExit(main())

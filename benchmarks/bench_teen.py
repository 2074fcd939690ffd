"""TEEN timings (plain script): ``python benchmarks/bench_teen.py [--quick]``.

1. Incremental sessions of a CUB-sized protocol on cached features: 100 base classes + 10
   sessions x 10-way 5-shot, 512-d random (class-structured) features, ~6,000 test images.
   Timed: every session's ``learn_session`` + the runner's evaluation on the cached test
   features (what the FSCIL runner does per session after feature extraction), for ``teen`` and
   ``ncm``. Also shown: one session checkpoint of a ResNet-18 learner (the runner writes one per
   session).
2. Base-training throughput (images/s, CPU) of the glyphs preset: the loader with the train
   transform, forward, backward and the SGD step of :func:`train_supervised`, for a few hundred
   steps (``--quick``: fewer).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fsbench import api, config  # noqa: E402
from fsbench.baselines.training import make_optimizer  # noqa: E402
from fsbench.context import RunContext  # noqa: E402
from fsbench.learner import DataInfo, Session  # noqa: E402
from fsbench.metrics import session_metrics  # noqa: E402
from fsbench.registry import METHODS  # noqa: E402
from fsbench.results import atomic_torch_save  # noqa: E402
from fsbench.runners.fscil import predict_all  # noqa: E402
from fsbench.transforms import Pipeline  # noqa: E402


class _Rows:
    """Just enough of an ImageDataset for a Session (labels only)."""

    def __init__(self, labels):
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self):
        return len(self.labels)


def cub_sized_sessions(method: str, repeats: int, dim: int = 512, seed: int = 0) -> dict:
    num_base, way, shot, sessions, test_per_class = 100, 10, 5, 11, 29  # 200 x 29 = 5,800 test
    num_classes = num_base + (sessions - 1) * way
    g = torch.Generator().manual_seed(seed)
    centers = F.relu(torch.randn(num_classes, dim, generator=g))
    test_y = np.repeat(np.arange(num_classes), test_per_class)
    test_f = F.relu(centers[test_y] + 2.5 * torch.randn(len(test_y), dim, generator=g))
    base_means = centers[:num_base] + 0.05 * torch.randn(num_base, dim, generator=g)
    shots = [None] + [(np.repeat(np.arange(num_base + (t - 1) * way, num_base + t * way), shot))
                      for t in range(1, sessions)]
    shot_f = [None] + [F.relu(centers[y] + 2.5 * torch.randn(len(y), dim, generator=g))
                       for y in shots[1:]]
    cfg = config.resolve(method, "cub200", overrides={"pretraining": "none"})
    info = DataInfo(channels=3, image_size=224, num_classes=num_classes, num_base=num_base,
                    way=way, shot=shot)
    learner = METHODS.get(method).obj(cfg, info)
    ident = Pipeline([], [0.0] * 3, [1.0] * 3)
    ctx = RunContext(config=cfg, device=torch.device("cpu"), seed=seed, train_transform=ident,
                     test_transform=ident, progress=False)
    best, accs = float("inf"), []
    for _ in range(repeats):
        learner.set_rows(np.arange(num_base), base_means)
        learner.num_seen = num_base
        t0 = time.perf_counter()
        accs = []
        for t in range(1, sessions):
            s = Session(index=t, data=_Rows(shots[t]), features=shot_f[t],
                        new_classes=np.arange(num_base + (t - 1) * way, num_base + t * way),
                        num_seen=num_base + t * way)
            learner.learn_session(s, ctx)
            idx = np.flatnonzero(test_y < s.num_seen)
            pred = predict_all(learner, ctx, None, idx, test_f, s.num_seen)
            accs.append(session_metrics(pred, test_y[idx], num_base, t, s.num_seen)["novel_acc"])
        best = min(best, time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        atomic_torch_save(Path(d) / "checkpoint.pt",
                          {"session": 1, "learner": learner.state_dict()})
        ckpt = time.perf_counter() - t0
    return {"seconds": best, "test_images": len(test_y), "novel_acc_last": accs[-1],
            "checkpoint_s": ckpt}


def glyphs_throughput(steps: int, channels_last: bool = False) -> dict:
    """Images/s of ``steps`` base-training steps of the TEEN glyphs preset (after 3 warm-up
    steps); ``params`` is the trained backbone's weights (to compare variants' numbers)."""
    cfg = config.resolve("teen", "glyphs")  # the glyphs preset (model, training, transforms)
    dataset = "glyphs"
    bench = api.load_benchmark(dataset, "fscil", None, cfg.get("data", {}).get("options", {}))
    ch = bench.train.channels
    ctx = api.build_context(cfg, ch, torch.device("cpu"), 0, progress=False)
    p = bench.protocol
    info = DataInfo(channels=ch, image_size=int(bench.train.load(0).shape[0]),
                    num_classes=p.num_classes, num_base=p.num_base, way=p.way, shot=p.shot)
    learner = METHODS.get("teen").obj(cfg, info)
    data = bench.train.subset(p.train_indices(0))
    data = data.with_labels(p.position_of(data.labels), [str(i) for i in range(p.num_classes)])
    t = cfg["train"]
    bs = int(t["batch_size"])
    opt, _ = make_optimizer(list(learner.backbone.parameters())
                            + list(learner.classifier.parameters()), t, int(t["epochs"]))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    learner.backbone.to(memory_format=fmt)
    learner.train()
    done = images = 0
    t0 = None
    warmup = 3
    while done < steps + warmup:
        for x, y in ctx.loader(data, train=True, batch_size=bs, drop_last=True):
            if done == warmup:
                t0, images = time.perf_counter(), 0
            x = x.contiguous(memory_format=fmt)
            loss = F.cross_entropy(learner.classifier(learner.backbone(x), p.num_base), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            images += len(y)
            done += 1
            if done >= steps + warmup:
                break
    secs = time.perf_counter() - t0
    return {"dataset": dataset, "steps": steps, "batch": bs, "images_per_s": images / secs,
            "seconds": secs, "epoch_images": len(data), "threads": torch.get_num_threads(),
            "params": torch.cat([q.detach().flatten() for q in learner.backbone.parameters()])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and steps (< 60 s)")
    args = ap.parse_args(argv)
    repeats, steps = (2, 40) if args.quick else (5, 300)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    for m in ("teen", "ncm"):
        r = cub_sized_sessions(m, repeats)
        print(f"[sessions] {m:4s} CUB-sized (100 base + 10 x 10-way 5-shot, 512-d, "
              f"{r['test_images']} test images): all 10 incremental sessions "
              f"(learn_session + evaluation) {r['seconds'] * 1000:.1f} ms "
              f"(best of {repeats}); last-session novel acc {r['novel_acc_last']:.1f}% "
              f"on random features")
    print(f"[sessions] one runner checkpoint of a ResNet-18 learner: {r['checkpoint_s']:.2f} s")
    r = glyphs_throughput(steps)
    print(f"[train] glyphs preset (conv4, batch {r['batch']}) on {r['dataset']}: "
          f"{r['images_per_s']:.0f} images/s over {r['steps']} steps ({r['seconds']:.1f} s); "
          f"one base epoch = {r['epoch_images']} images ~ "
          f"{r['epoch_images'] / r['images_per_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

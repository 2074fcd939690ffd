"""The parts of ``benchmarks/gpu_check.sh``: ``python benchmarks/gpu_check.py PART [--tiny]``.

* ``train`` - base-training images/s of the TEEN cifar100 preset (ResNet-20, total batch 256,
  random crop + flip + AutoAugment + Cutout, SGD) through :func:`train_supervised` on
  CIFAR-shaped random data (60 classes of 32x32x3 uint8 images, nothing downloaded). Under
  ``torchrun --nproc_per_node N`` it is data-parallel (DDP, nccl) and prints the images/s of all
  processes together, from rank 0.
* ``opta`` - the batched OpTA head (:mod:`fsbench.fewshot.opta`) on the GPU against the CPU,
  5-way 5-shot 15-query episodes of 512-d features (``benchmarks/bench_opta.py``'s generator).
* ``scan`` - :func:`fsbench.scan.selective_scan_fused` against mamba-ssm's CUDA kernel when
  mamba-ssm is installed (otherwise says so), at Mamba-FSCIL's L = 4, 25, 49 tokens.

``--tiny`` runs each part for a few steps on the CPU (what the test suite checks: the parts
start and print); without it the parts want CUDA.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def part_train(device: torch.device, tiny: bool) -> None:
    from fsbench import api, config
    from fsbench import distributed as dist
    from fsbench.baselines.training import train_supervised
    from fsbench.context import derive_seed, seed_everything
    from fsbench.episodes.base import ArrayDataset
    from fsbench.learner import DataInfo
    from fsbench.registry import METHODS

    dist.init(device.type)
    if dist.active() and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank())
    cfg = config.resolve("teen", "cifar100")
    if not tiny:  # the CPU augmentation (AutoAugment, Cutout) needs loader workers to keep up
        cfg["num_workers"] = max(1, min(8, (os.cpu_count() or 2) // dist.world_size() - 1))
    classes, per_class = 60, (1 if tiny else 500)  # CIFAR-100's 60 base classes x 500 images
    total = 8 if tiny else int(cfg["train"]["batch_size"])
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (classes * per_class, 32, 32, 3), dtype=np.uint8)
    data = ArrayDataset(images, np.repeat(np.arange(classes), per_class),
                        [str(c) for c in range(classes)], "cifar-shaped")
    ctx = api.build_context(cfg, 3, device, 0, progress=False)
    info = DataInfo(channels=3, image_size=32, num_classes=100, num_base=classes, way=5, shot=5)
    seed_everything(derive_seed(0, "init"))
    learner = METHODS.get("teen").obj(cfg, info).to(device)
    t = {**cfg["train"], "batch_size": total, "select": "last", "epochs": 1}
    warm = data.subset(np.arange(0, len(data), 8 if tiny else per_class // 8))  # cuDNN, caches
    train_supervised(learner.backbone, learner.classifier, warm, ctx, t, classes)
    _sync(device)
    dist.barrier()
    t0 = time.perf_counter()
    train_supervised(learner.backbone, learner.classifier, data, ctx, t, classes)
    _sync(device)
    dist.barrier()
    secs = time.perf_counter() - t0
    seen = (len(data) // total) * total  # drop-last batches of the total size
    if dist.is_main():
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        print(f"train  teen cifar100 preset, resnet20, total batch {total} "
              f"({ctx.extras['batch']['per_rank_batch']} per process, "
              f"{cfg['num_workers']} loader workers each), "
              f"{dist.world_size()} process(es) on {name}: {seen / secs:,.0f} images/s "
              f"({seen} images in {secs:.1f} s)")
    dist.shutdown()


def part_opta(device: torch.device, tiny: bool) -> None:
    from bench_opta import make_features

    from fsbench.fewshot.opta import OpTA

    episodes = 8 if tiny else 2000
    s, lab, q = make_features(episodes, 5, 5, 15, 64 if tiny else 512, seed=0)
    head = OpTA()
    times, preds = {}, {}
    for dev in dict.fromkeys([torch.device("cpu"), device]):
        args = (s.to(dev), lab.to(dev), q.to(dev))
        head(*[a[:2] for a in args])  # warm-up
        _sync(dev)
        t0 = time.perf_counter()
        preds[dev.type] = head(*args).argmax(-1).cpu()
        _sync(dev)
        times[dev.type] = time.perf_counter() - t0
    line = f"opta   {episodes} episodes 5-way 5-shot: cpu {times['cpu']:.2f} s"
    if "cuda" in times:
        agree = float((preds["cpu"] == preds["cuda"]).float().mean()) * 100
        line += (f", cuda {times['cuda']:.2f} s ({times['cpu'] / times['cuda']:.1f}x), "
                 f"predictions agree {agree:.2f}%")
    print(line)


def part_scan(device: torch.device, tiny: bool) -> None:
    from bench_scan import timed

    from fsbench.scan import mamba_ssm_scan, selective_scan_fused

    kernel = mamba_ssm_scan() if device.type == "cuda" else None
    b, d, n = (4, 8, 16) if tiny else (64, 64, 256)
    if kernel is None:
        print("scan   mamba-ssm's kernel: not available (no CUDA, or mamba-ssm not installed); "
              "the fused scan alone:")
    for L in (4, 25, 49):
        g = torch.Generator().manual_seed(L)
        args = [t.to(device) for t in (
            torch.randn(b, d, L, generator=g), torch.randn(b, d, L, generator=g),
            -torch.rand(d, n, generator=g) * 4, torch.randn(b, n, L, generator=g),
            torch.randn(b, n, L, generator=g), torch.randn(d, generator=g))]

        def run(fn):
            fn(*args, delta_softplus=True)
            _sync(device)

        ours = timed(lambda: run(selective_scan_fused), 1 if tiny else 20)
        line = f"scan   L={L:<2} batch {b} d {d} state {n}: fused {ours * 1e3:.2f} ms"
        if kernel is not None:
            theirs = timed(lambda: run(kernel), 20)
            err = (selective_scan_fused(*args, delta_softplus=True)
                   - kernel(*args, delta_softplus=True)).abs().max().item()
            line += f", mamba-ssm {theirs * 1e3:.2f} ms (fused/kernel {ours / theirs:.1f}), " \
                    f"max |diff| {err:.1e}"
        print(line)


PARTS = {"train": part_train, "opta": part_opta, "scan": part_scan}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=sorted(PARTS))
    ap.add_argument("--tiny", action="store_true", help="a few steps on the CPU (tests)")
    a = ap.parse_args(argv)
    if not a.tiny and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on a GPU machine (or --tiny on a CPU)",
              file=sys.stderr)
        return 2
    PARTS[a.part](torch.device("cpu" if a.tiny else "cuda"), a.tiny)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``synthetic`` - a tiny generated dataset for tests and smoke runs (seconds on a CPU).

Each class is a fixed random low-frequency pattern; samples add pixel noise and a random shift.
Options: ``num_classes`` (default 30), ``per_class`` (train images per class, 24), ``test_per_class``
(12), ``size`` (16), ``noise`` (0.35), ``seed`` (0); FSCIL shape ``num_base`` (10), ``way`` (5),
``shot`` (5), ``num_sessions`` (5); FSL split ``fsl_split`` ([14, 6, 10] classes).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fsbench.errors import UserError
from fsbench.registry import register_dataset

from .base import ArrayDataset, FSCILBenchmark, FSLBenchmark
from .protocol import SessionProtocol

DEFAULTS = dict(num_classes=30, per_class=24, test_per_class=12, size=16, noise=0.35, seed=0,
                num_base=10, way=5, shot=5, num_sessions=5, fsl_split=[14, 6, 10])


def make_arrays(num_classes: int, n: int, size: int, noise: float, seed: int, offset: int = 0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(num_classes, 1, 4, 4, generator=g)
    protos = F.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    g2 = torch.Generator().manual_seed(seed + 1 + offset)
    labels = torch.arange(num_classes).repeat_interleave(n)
    x = protos[labels] + noise * torch.randn(len(labels), 1, size, size, generator=g2)
    shifts = torch.randint(-1, 2, (len(labels), 2), generator=g2)
    x = torch.stack([torch.roll(xi, (int(s[0]), int(s[1])), dims=(1, 2))
                     for xi, s in zip(x, shifts)])
    img = (x.clamp(0, 1) * 255).round().to(torch.uint8).squeeze(1).numpy()
    return img, labels.numpy()


@register_dataset("synthetic", task="both",
                  summary="tiny generated patterns for tests and smoke runs (no files)")
def build_synthetic(root, task: str, options: dict):
    o = {**DEFAULTS, **(options or {})}
    unknown = set(o) - set(DEFAULTS)
    if unknown:
        raise UserError(f"data.options: unknown option(s) {sorted(unknown)} for synthetic; "
                        f"valid: {sorted(DEFAULTS)}")
    names = [f"pattern{i}" for i in range(o["num_classes"])]
    tr_x, tr_y = make_arrays(o["num_classes"], o["per_class"], o["size"], o["noise"], o["seed"])
    te_x, te_y = make_arrays(o["num_classes"], o["test_per_class"], o["size"], o["noise"],
                             o["seed"], offset=1000)
    if task == "fscil":
        train = ArrayDataset(tr_x, tr_y, names, "synthetic")
        test = ArrayDataset(te_x, te_y, names, "synthetic")
        proto = SessionProtocol.generate(tr_y, name="synthetic", num_base=o["num_base"],
                                         way=o["way"], shot=o["shot"],
                                         num_sessions=o["num_sessions"], seed=o["seed"])
        return FSCILBenchmark("synthetic", train, test, proto, {"options": o})
    if task == "fsl":
        a, b, c = o["fsl_split"]
        if a + b + c > o["num_classes"]:
            raise UserError("data.options.fsl_split needs at most num_classes classes")
        x = np.concatenate([tr_x, te_x])
        y = np.concatenate([tr_y, te_y])

        def part(lo, hi):
            m = (y >= lo) & (y < hi)
            return ArrayDataset(x[m], y[m], names, "synthetic")
        return FSLBenchmark("synthetic", part(0, a), part(a, a + b), part(a + b, a + b + c),
                            {"options": o, "split_id": "synthetic-v1", "generated": True})
    raise UserError(f"synthetic: unknown task {task!r}")

"""The mmcls-style base-session pieces (fsbench.baselines.recipes) against expectations written
here from mmcv/mmcls' definitions, the frozen ResNet stages and the backbone's lr multiplier."""
import math

import numpy as np
import pytest
import torch

from fsbench.baselines.backbones import ResNet18
from fsbench.baselines.recipes import BatchAugments, IterationSchedule
from fsbench.baselines.training import make_optimizer
from fsbench.errors import UserError


def mmcv_cooldown(it, total, base, min_ratio, cool, cool_ratio):
    """CosineAnnealingCooldownLrUpdaterHook.get_lr, by iteration."""
    target = base * min_ratio
    if it > total - cool:
        return target * cool_ratio
    f = it / (total - cool)
    return target + 0.5 * (base - target) * (math.cos(math.pi * f) + 1)


def mmcv_warmup(regular, it, warm, ratio):
    k = (1 - it / warm) * (1 - ratio)
    return regular * (1 - k)


def test_cooldown_schedule_with_warmup_follows_mmcv():
    t = {"schedule": "cooldown", "min_lr_ratio": 0.1, "cooldown_iters": 10, "cooldown_ratio": 0.1,
         "warmup_iters": 100, "warmup_ratio": 0.1}
    s = IterationSchedule(t, epochs=20, iters_per_epoch=30)             # 600 iterations
    for it in (0, 1, 50, 99, 100, 300, 589, 590, 591, 599):
        want = mmcv_cooldown(it, 600, 0.2, 0.1, 10, 0.1)
        if it < 100:
            want = mmcv_warmup(want, it, 100, 0.1)
        assert 0.2 * s.factor(it // 30, it) == pytest.approx(want, rel=1e-12), it
    assert 0.2 * s.factor(0, 0) == pytest.approx(0.02)                  # warm-up starts at 0.1 x


def test_multistep_with_warmup_and_plain_schedules():
    s = IterationSchedule({"schedule": "multistep", "milestones": [2, 4], "gamma": 0.25,
                           "warmup_iters": 5, "warmup_ratio": 0.25}, 6, 3)
    assert s.factor(0, 0) == pytest.approx(0.25)
    assert s.factor(1, 4) == pytest.approx(1 - 0.2 * 0.75)
    assert s.factor(2, 6) == pytest.approx(0.25) and s.factor(5, 17) == pytest.approx(0.0625)
    assert not IterationSchedule.wanted({"schedule": "cosine"})
    assert IterationSchedule.wanted({"schedule": "cosine", "warmup_iters": 3})
    with pytest.raises(UserError, match="unknown schedule"):
        IterationSchedule({"schedule": "poly", "warmup_iters": 3}, 2, 2)


def test_batch_augments_mix_as_mmcls():
    np.random.seed(0)
    torch.manual_seed(0)
    x = torch.arange(4 * 1 * 10 * 10, dtype=torch.float32).view(4, 1, 10, 10)
    y = torch.arange(4)
    mix = BatchAugments([{"name": "mixup", "alpha": 0.8, "p": 1.0}])
    xm, ya, yb, lam = mix(x, y)
    perm = yb  # labels are the indices here
    assert torch.equal(ya, y) and 0 < lam < 1
    torch.testing.assert_close(xm, lam * x + (1 - lam) * x[perm])
    cut = BatchAugments([{"name": "cutmix", "alpha": 1.0, "p": 1.0}])
    for _ in range(20):
        xc, ya, yb, lam = cut(x, y)
        pasted = (xc != x)[:, 0].any(0)                  # the box, where some image changed
        changed = (xc != x).float().mean().item()
        if not pasted.any():
            continue
        rows, cols = pasted.any(1).nonzero(), pasted.any(0).nonzero()
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert lam == pytest.approx(1 - box.item() / 100)   # lam corrected to the pasted area
        assert torch.equal(xc[:, :, ~pasted], x[:, :, ~pasted]) and changed > 0
        assert torch.equal(xc[:, :, pasted], x[yb][:, :, pasted])
    ident = BatchAugments([{"name": "identity", "p": 1.0}])
    xi, ya, yb, lam = ident(x, y)
    assert xi is x and yb is None and lam == 1.0
    # the draw follows the probabilities; a missing rest goes to identity
    counts = {"id": 0}
    half = BatchAugments([{"name": "mixup", "alpha": 1.0, "p": 0.5}])
    for _ in range(400):
        counts["id"] += half(x, y)[2] is None
    assert 150 < counts["id"] < 250
    with pytest.raises(UserError, match="more than 1"):
        BatchAugments([{"name": "mixup", "p": 0.7}, {"name": "cutmix", "p": 0.7}])
    with pytest.raises(UserError, match="not mixup"):
        BatchAugments([{"name": "mosaic", "p": 0.5}])


def test_frozen_stages_and_backbone_lr_multiplier():
    net = ResNet18(3, frozen_stages=1)
    frozen = [net.net.conv1, net.net.bn1, net.net.layer1]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for p in net.net.layer2.parameters())
    net.train()
    assert not net.net.bn1.training and not net.net.layer1[0].bn1.training
    assert net.net.layer2[0].bn1.training
    net(torch.randn(2, 3, 32, 32)).sum().backward()
    assert net.net.conv1.weight.grad is None and net.net.layer2[0].conv1.weight.grad is not None
    with pytest.raises(UserError, match="frozen_stages"):
        ResNet18(3, frozen_stages=7)
    head = torch.nn.Linear(512, 3)
    opt, _ = make_optimizer([(net.parameters(), 0.1), (head.parameters(), 1.0)],
                            {"lr": 0.2, "schedule": "cooldown"}, 3)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.02, 0.2])

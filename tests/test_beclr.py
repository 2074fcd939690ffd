"""BECLR: DyCE memory (FIFO, equipartition, enhancement, both variants), loss, masking, presets,
a short glyphs pretraining, and bad input."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fsbench import config
from fsbench.cli import main as cli_main
from fsbench.errors import UserError
from fsbench.fewshot.beclr import (BECLR, BECLRLoss, DyCE, apply_patch_mask, block_mask,
                                   effective_epsilon, equipartition_assign, memory_size)

VARIANTS = ("official", "paper")


def clustered(n, dim, centres, noise=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.arange(n) % len(centres)
    return centres[idx] + noise * torch.randn(n, dim, generator=g), idx


# ---------------------------------------------------------------------------------- memory
def test_memory_size_formula():
    assert memory_size(40, 200, 256) == 8193  # miniImageNet RN-18
    assert memory_size(40, 500, 512) == 20481  # tieredImageNet RN-18
    assert memory_size(40, 32, 128) == 1537  # glyphs preset


def test_fifo_size_and_order():
    mem = DyCE(10, 3, num_clusters=2, topk=1)
    ids = torch.arange(12, dtype=torch.float32)
    for s in range(0, 12, 4):
        batch = ids[s:s + 4, None].repeat(1, 3)
        mem.enqueue(batch)
        assert mem.count == min(10, s + 4)
    assert mem.full and mem.bank.shape == (10, 3)
    assert mem.ordered()[:, 0].tolist() == list(range(2, 12))  # oldest (0, 1) dropped first
    mem.enqueue(torch.full((3, 3), 99.0))
    assert mem.ordered()[:, 0].tolist() == list(range(5, 12)) + [99.0] * 3
    with pytest.raises(UserError, match="does not fit the memory"):
        mem.enqueue(torch.zeros(11, 3))


def test_effective_epsilon_is_the_released_overflow_guard():
    assert effective_epsilon(1e-5, 2.0) == pytest.approx(0.10001)
    assert effective_epsilon(0.05, 2.0) == 0.05


def swav_sinkhorn(scores, eps, iterations):
    """SwAV's distributed_sinkhorn (single process), written out as an independent reference."""
    q = torch.exp(scores / eps).t()
    q /= q.sum()
    k, b = q.shape
    for _ in range(iterations):
        q /= q.sum(1, keepdim=True)
        q /= k
        q /= q.sum(0, keepdim=True)
        q /= b
    return (q * b).t()


@pytest.mark.parametrize("variant", VARIANTS)
def test_equipartition_assignment(variant):
    dim, p = 8, 4
    protos = torch.eye(dim)[:p]
    # imbalanced batch: 48 of 64 embeddings near prototype 0
    z = torch.cat([clustered(48, dim, protos[:1], 0.3, seed=1)[0],
                   clustered(16, dim, protos[1:], 0.3, seed=2)[0]])
    labels = equipartition_assign(z, protos, 0.05, 10, variant)
    counts = torch.bincount(labels, minlength=p)
    # equipartition tolerance: every partition within 16 +- 8 (a nearest-prototype assignment
    # would give 48 / 5 / 5 / 6)
    assert counts.sum() == 64 and counts.min() >= 8 and counts.max() <= 24, counts
    # ot.sinkhorn (POT) iterations == SwAV's, up to a constant: same argmax
    zn, pn = F.normalize(z.double(), dim=1), F.normalize(protos.double(), dim=1)
    d = torch.cdist(zn, pn)
    ref = swav_sinkhorn(d if variant == "official" else -d, 0.05, 10).argmax(1)
    assert torch.equal(ref, labels)


def test_p1_official_assigns_to_far_prototypes_paper_to_near():
    dim = 4
    protos = torch.stack([torch.eye(dim)[0], -torch.eye(dim)[0]])
    z, near = clustered(32, dim, protos, 0.2, seed=3)
    paper = equipartition_assign(z, protos, 1e-5, 10, "paper")
    official = equipartition_assign(z, protos, 1e-5, 10, "official")
    assert torch.equal(paper, near)
    assert torch.equal(official, 1 - near)  # P1: exp(+distance / eps) favours the far prototype


def make_memory(variant, batch=16, dim=16, p=4, k=3, start=1):
    size = memory_size(4, p, batch)  # (16 // 32 + 1) * 32 + 1 = 33
    return DyCE(size, dim, p, k, memory_start_epoch=start, cluster_freq=2, variant=variant,
                kmeans_n_init=2, seed=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_dyce_step_enhances_batch(variant):
    batch, dim, k = 16, 16, 3
    mem = make_memory(variant, batch, dim, k=k)
    centres = 3 * torch.randn(4, dim, generator=torch.Generator().manual_seed(0))
    for it in range(6):
        z, _ = clustered(2 * batch, dim, centres, 0.5, seed=10 + it)
        out, used = mem.step(z, epoch=0)  # before memory_start_epoch: unchanged batch
        assert used == 0 and out is z
    assert mem.initialized and mem.count == mem.size == 33
    counts = mem.counts()
    assert counts.sum() == mem.size and (counts > 0).sum() >= 2
    z, _ = clustered(2 * batch, dim, centres, 0.5, seed=99)
    z.requires_grad_(True)
    out, used = mem.step(z, epoch=1)
    assert used == k and out.shape == (2 * batch * (1 + k), dim)
    per_view = batch * (1 + k)
    for v in range(2):  # [Z; NN_1(Z); ...; NN_k(Z)] per view
        block = out[v * per_view:(v + 1) * per_view]
        assert torch.equal(block[:batch], z[v * batch:(v + 1) * batch])
        nbrs = block[batch:]
        hit = (nbrs[:, None, :] == mem.bank[None]).all(-1).any(-1)
        assert hit.all()  # every appended row is a stored memory embedding
    out.sum().backward()  # gradient reaches the original rows only (memory is detached)
    assert torch.equal(z.grad, torch.ones_like(z))


def test_neighbours_stay_in_the_nearest_partition_with_fallback():
    mem = make_memory("official", k=2)
    dim = 16
    mem.bank[:] = torch.randn(mem.size, dim, generator=torch.Generator().manual_seed(5))
    mem.count, mem.initialized = mem.size, True
    mem.prototypes = torch.randn(4, dim, generator=torch.Generator().manual_seed(6))
    mem.labels[:] = torch.arange(mem.size) % 3  # partition 3 empty, others 11 members
    z = mem.prototypes.clone()
    idx = mem.neighbours(z)
    nearest = (F.normalize(z, dim=1) @ F.normalize(mem.prototypes, dim=1).T).argmax(1)
    sim = F.normalize(z, dim=1) @ F.normalize(mem.bank, dim=1).T
    for i in range(4):
        if i < 3:  # >= k members: top-k inside the nearest partition
            assert (mem.labels[idx[i]] == nearest[i]).all()
            members = (mem.labels == nearest[i]).nonzero().flatten()
            best = members[sim[i, members].topk(2).indices]
            assert set(idx[i].tolist()) == set(best.tolist())
        else:  # empty partition: top-k of the whole memory
            assert set(idx[i].tolist()) == set(sim[i].topk(2).indices.tolist())
    mem.labels[:] = 0
    mem.labels[:2] = 1  # partition 1 has exactly k = 2 members -> whole memory
    z1 = mem.prototypes[1:2]
    if int((F.normalize(z1, dim=1) @ F.normalize(mem.prototypes, dim=1).T).argmax()) == 1:
        whole = (F.normalize(z1, dim=1) @ F.normalize(mem.bank, dim=1).T).topk(2).indices
        assert set(mem.neighbours(z1)[0].tolist()) == set(whole[0].tolist())


def test_paper_variant_searches_before_enqueue():
    dim, batch = 8, 4
    z = torch.randn(2 * batch, dim, generator=torch.Generator().manual_seed(7))
    for variant in VARIANTS:
        mem = DyCE(64, dim, 2, 1, memory_start_epoch=0, variant=variant)
        mem.enqueue(torch.randn(16, dim, generator=torch.Generator().manual_seed(8)))
        out, _ = mem.step(z, epoch=0)
        nbrs = torch.cat([out[batch:2 * batch], out[3 * batch:]])
        own = torch.equal(nbrs, z)  # each row's top-1 neighbour is its own copy
        assert own == (variant == "official")


def test_memory_and_topk_validation():
    with pytest.raises(UserError, match="topk=40 is larger than the memory"):
        DyCE(33, 4, 2, 40)
    with pytest.raises(UserError, match="num_clusters=50 is larger than the memory"):
        DyCE(33, 4, 50, 2)
    with pytest.raises(UserError, match="variant"):
        DyCE(33, 4, 2, 2, variant="both")


# ------------------------------------------------------------------------------------ loss
def test_loss_matches_released_formula_and_p2():
    g = torch.Generator().manual_seed(0)
    b, k, dim = 8, 2, 16
    zt, p, zs = (torch.randn(2 * b, dim, generator=g) for _ in range(3))
    crit = BECLRLoss(2.0, 0.1, "official")
    out = crit(zt, p, zs, b)
    # the released code: mask multiply, "- 2", mean over rows, log
    z = F.normalize(zs, dim=1)
    mask = 1 - torch.eye(b).repeat(2, 2)
    neg = ((z @ z.T * mask).div(2.0).exp().sum(1) - 2).div(2 * b - 2).mean().log()
    pos = -(F.normalize(p[:b], dim=1) * F.normalize(zt[b:], dim=1)).sum(1).mean() / 2 \
        - (F.normalize(p[b:], dim=1) * F.normalize(zt[:b], dim=1)).sum(1).mean() / 2
    assert torch.allclose(out["loss"], pos + 0.1 * neg, atol=1e-6)
    # enhanced batch: the paper variant removes an image's own neighbours from its negatives
    nb = torch.randn(2 * b * k, dim, generator=g)
    enh = torch.cat([zs[:b], nb[:b * k], zs[b:], nb[b * k:]])
    enh_t = torch.cat([zt[:b], nb[:b * k], zt[b:], nb[b * k:]])
    enh_p = torch.cat([p[:b], nb[:b * k], p[b:], nb[b * k:]])
    l_off = BECLRLoss(2.0, 0.1, "official")(enh_t, enh_p, enh, b)["loss_neg"]
    l_pap = BECLRLoss(2.0, 0.1, "paper")(enh_t, enh_p, enh, b)["loss_neg"]
    zz = F.normalize(enh, dim=1)
    n = zz.shape[0]
    grp = torch.arange(n) % (b * (1 + k)) % b
    excl = grp[:, None] == grp[None, :]
    ref = ((zz @ zz.T / 2).exp() * ~excl).sum(1).div((~excl).sum(1)).mean().log()
    assert torch.allclose(l_pap, ref, atol=1e-6) and not torch.allclose(l_off, l_pap)


# --------------------------------------------------------------------------------- masking
def test_block_mask_and_patch_zeroing():
    import random

    rng = random.Random(0)
    ratios = [block_mask(14, 14, 0.15, rng).mean() for _ in range(200)]
    assert 0.08 < float(np.mean(ratios)) < 0.2 and max(ratios) <= 0.2
    x = torch.ones(2, 3, 32, 32)
    m = torch.zeros(2, 2, 2, dtype=torch.bool)
    m[0, 0, 1] = True
    y = apply_patch_mask(x, m, 16)
    assert y[0, :, :16, 16:].abs().sum() == 0 and y[0, :, 16:, :].min() == 1 and y[1].min() == 1


def test_two_views_with_masks_and_resnet50_encoder():
    from fsbench.fewshot.beclr import TwoViews, build_encoder
    from fsbench.transforms import build

    pipe = build([{"name": "hflip"}], None, 3)
    img = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    views, masks = TwoViews(pipe, {"enabled": True, "patch": 16, "ratio": 0.3,
                                   "ratio_var": 0.0})(img)
    assert views.shape == (2, 3, 64, 64) and masks.shape == (2, 4, 4) and masks.any()
    views, masks = TwoViews(pipe, {"enabled": False})(img)
    assert views.shape == (2, 3, 64, 64) and masks.numel() == 0
    enc = build_encoder({"name": "resnet50"}, 3).eval()
    assert enc.out_dim == 2048 and enc(torch.zeros(1, 3, 32, 32)).shape == (1, 2048)


# -------------------------------------------------------------------------------- presets
def test_presets_paper_values():
    mini = config.resolve("beclr", "miniimagenet")
    assert mini["head"] == "opta" and mini["backbone"]["name"] == "resnet18"
    t, d = mini["train"], mini["dyce"]
    assert (t["epochs"], t["batch_size"], t["lr"], t["teacher_momentum"]) == (400, 256, 0.3, 0.995)
    assert (d["topk"], d["num_clusters"], d["memory_start_epoch"]) == (5, 200, 60)
    assert memory_size(d["memory_scale"], d["num_clusters"], t["batch_size"]) == 8193
    assert mini["mask"]["enabled"] and mini["loss"] == {"temp": 2.0, "lamb_neg": 0.1}
    tiered = config.resolve("beclr", "tieredimagenet")
    assert tiered["data"]["options"]["form"] == "ilsvrc"  # full-resolution JPEGs, as the code
    assert (tiered["train"]["epochs"], tiered["train"]["batch_size"], tiered["dyce"]["topk"],
            tiered["dyce"]["num_clusters"], tiered["mask"]["ratio"]) == (200, 512, 10, 500, 0.3)
    for ds in ("cifarfs", "fc100"):
        c = config.resolve("beclr", ds)
        assert not c["mask"]["enabled"] and c["train"]["epochs"] == 400
        ev = c["eval"]
        assert (ev["way"], ev["shots"], ev["query"], ev["episodes"]) == (5, [1, 5], 15, 2000)
    assert config.resolve("beclr", "tieredimagenet")["eval"]["episodes"] == 2000
    paper = config.resolve("beclr", "glyphs", overrides=["dyce.variant=paper"])
    assert paper["dyce"]["variant"] == "paper"


# ------------------------------------------------------------------------ pretraining works
def test_short_glyphs_pretraining_improves_one_shot(tmp_path):
    """~100 iterations of batch 64 (conv4-32, 2,048 images) raise 5-way 1-shot OpTA accuracy of
    the frozen encoder on glyphs' test scripts by >= 2 points (measured: 28.9% -> 32.2%)."""
    from fsbench.api import build_context, load_benchmark
    from fsbench.learner import DataInfo
    from fsbench.runners.fsl import evaluate

    cfg = config.resolve("beclr", "glyphs", overrides=[
        "backbone={name: conv4, hidden: 32}", "train.epochs=3", "train.max_images=2048",
        "train.batch_size=64", "dyce.num_clusters=16", "eval.episodes=300", "eval.shots=[1]"])
    bench = load_benchmark("glyphs", "fsl", None, {})
    rng = np.random.default_rng(0)
    keep = np.concatenate([rng.choice(np.flatnonzero(bench.test.labels == c), 30, replace=False)
                           for c in np.unique(bench.test.labels)])
    test = bench.test.subset(np.sort(keep))
    ctx = build_context(cfg, 1, torch.device("cpu"), 0, progress=False)
    torch.manual_seed(0)
    learner = BECLR(cfg, DataInfo(channels=1, image_size=32, num_classes=809))
    before = evaluate(learner, test, ctx, tmp_path / "before")["shots"]["1"]["mean"]
    learner.train()
    learner.fit(bench.train, ctx)
    assert learner.history[-1]["topk"] == 3  # the enhanced batch was used
    after = evaluate(learner, test, ctx, tmp_path / "after")["shots"]["1"]["mean"]
    assert after >= before + 2.0, (before, after)


# ------------------------------------------------------------------------------ bad input
def run_cli(tmp_path, *sets):
    args = ["run", "--method", "beclr", "--dataset", "synthetic", "--out", str(tmp_path),
            "--no-progress"]
    for s in sets:
        args += ["--set", s]
    return cli_main(args)


def test_end_to_end_synthetic_both_variants(tmp_path):
    from fsbench.api import run

    for variant in VARIANTS:
        res = run("beclr", "synthetic", overrides=[f"dyce.variant={variant}", "train.epochs=2",
                                                   "dyce.memory_start_epoch=1",
                                                   "eval.episodes=20"],
                  out_dir=tmp_path, progress=False, loggers=[])
        shots = res["metrics"]["shots"]
        assert set(shots) == {"1", "5"}
        (h,) = res["history"]
        assert h["stage"] == "pretrain" and [e["epoch"] for e in h["epochs"]] == [0, 1]
        assert h["selected_epoch"] == 1 and h["select"] == "last" and h["epochs"][0]["lr"] > 0
        assert res["pretraining"] == "self-supervised" and res["config"]["head"] == "opta"
        # 5-way, chance 20%: measured 79-80% (1-shot) and 87% (5-shot) for both variants
        assert shots["1"]["mean"] >= 20 + 35 and shots["5"]["mean"] >= 20 + 50, (variant, shots)


@pytest.mark.parametrize("sets, message", [
    (["eval.way=50", "train.epochs=1"], "way"),
    (["dyce.memory_size=40", "train.epochs=1"], "smaller than one batch"),
    (["dyce.topk=5000", "train.epochs=1"], "larger than the memory"),
    (["train.batch_size=100000"], "larger than the training split"),
])
def test_bad_input_is_one_user_error_line(tmp_path, capsys, sets, message):
    assert run_cli(tmp_path, *sets) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fsbench: error:") and "\n" not in err and message in err, err


def test_non_finite_features_name_the_global_episode(tmp_path, capsys, monkeypatch):
    from fsbench.episodes.sampler import EpisodeSampler
    from fsbench.episodes.synthetic import build_synthetic

    seen = []

    def nan_embed(self, x):  # the feature of the first test image (index 0) is NaN
        f = self.student.encoder(x)
        if not seen:
            f[0] = float("nan")
        seen.append(len(x))
        return f

    monkeypatch.setattr(BECLR, "embed", nan_embed)
    assert run_cli(tmp_path, "train.epochs=1", "eval.episodes=60",
                   "eval.episodes_per_batch=7") == 2
    err = capsys.readouterr().err.strip()
    test = build_synthetic(None, "fsl", {}).test
    cfg = config.resolve("beclr", "synthetic")
    eps = EpisodeSampler(test.labels, 5, 5, cfg["eval"]["query"], seed=0).sample(0, 60)
    first = min(i for i in range(60) if 0 in eps.support[i, :, :1] or 0 in eps.query[i])
    assert first >= 7  # not in the first chunk: the message carries the global index
    assert f"episode {first};" in err and "non-finite" in err and "\n" not in err, err

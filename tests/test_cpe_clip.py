"""CPE-CLIP (incremental/cpe_clip.py): the prompted encoders against plain open_clip, prompt
counts, the EOS shift, lambda_t, gradients, masking, the schedule, and a short glyphs run with
resume. Unit tests use tiny random-weight open_clip models."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fsbench import api, config
from fsbench.clip.glyphs import untrained_bundle
from fsbench.errors import UserError
from fsbench.incremental.cpe_clip import (CPECLIP, CPEPrompts, mask_old, official_lr,
                                          prompt_lambda)
from fsbench.learner import DataInfo, Session

TEXTS = ["latin small letter a.", "greek capital letter omega.", "x."]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return untrained_bundle()  # 4 text + 4 vision layers, random weights


@pytest.fixture(scope="module")
def deep12(tmp_path_factory):
    """A 12-layer micro CLIP (ViT-B/16's depth, tiny widths), registered with open_clip."""
    import open_clip
    from fsbench.clip import quiet_create
    d = tmp_path_factory.mktemp("cfg")
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 12, "width": 32,
                                           "head_width": 16, "patch_size": 16},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2,
                        "layers": 12}}
    (d / "fsbench-test-deep12.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(d / "fsbench-test-deep12.json")
    torch.manual_seed(0)
    return quiet_create("fsbench-test-deep12").eval(), \
        open_clip.get_tokenizer("fsbench-test-deep12")


def test_no_prompts_equals_plain_open_clip(tiny):
    """With L_g = 0 the prompted encoders are open_clip's encode_image / encode_text."""
    clip, tok = tiny.model, tiny.tokenizer
    p = CPEPrompts(clip, L_g=0)
    x, t = torch.randn(5, 3, 32, 32), tok(TEXTS)
    with torch.no_grad():
        ref_img, ref_txt = clip.encode_image(x), clip.encode_text(t)
        img, txt = p.encode_image(clip, x), p.encode_text(clip, t)
        ref = 100 * F.normalize(ref_img, dim=-1) @ F.normalize(ref_txt, dim=-1).T
        got = p.logits(clip, x, txt)
    assert torch.allclose(img, ref_img, atol=1e-5)
    assert torch.allclose(txt, ref_txt, atol=1e-5)
    assert torch.allclose(got, ref, atol=1e-3)


def test_prompts_change_both_encoders(tiny):
    clip, tok = tiny.model, tiny.tokenizer
    p = CPEPrompts(clip, L_g=2)
    x, t = torch.randn(2, 3, 32, 32), tok(TEXTS)
    with torch.no_grad():
        assert not torch.allclose(p.encode_image(clip, x), clip.encode_image(x), atol=1e-3)
        assert not torch.allclose(p.encode_text(clip, t), clip.encode_text(t), atol=1e-3)


def test_trainable_parameter_count_vit_b16():
    """G 12 x 2 x 512 + prompt_proj 512 -> 768: 406,272 (ViT-B/16's widths and depths)."""
    def tower(width):
        return SimpleNamespace(width=width, resblocks=[None] * 12)
    fake = SimpleNamespace(transformer=tower(512), visual=SimpleNamespace(transformer=tower(768)))
    p = CPEPrompts(fake, L_g=2, deep_g=12)
    assert sum(q.numel() for q in p.parameters()) == 406_272
    assert p.g_values.shape == (12, 2, 512)
    assert (p.prompt_proj.in_features, p.prompt_proj.out_features) == (512, 768)


def test_vision_prompt_counts_per_layer(deep12, tiny):
    clip, _ = deep12
    x = torch.randn(2, 3, 32, 32)
    p = CPEPrompts(clip, L_g=2, deep_g=12)
    with torch.no_grad():
        p.encode_image(clip, x)
    assert p.vision_prompt_counts == list(range(2, 25, 2))  # 2, 4, ..., 24
    p = CPEPrompts(clip, L_g=2, deep_g=3)
    with torch.no_grad():
        p.encode_image(clip, x)
    assert p.vision_prompt_counts == [2, 4] + [6] * 10
    p = CPEPrompts(clip, L_g=3, deep_g=12, vision_mode="replace")
    with torch.no_grad():
        p.encode_image(clip, x)
    assert p.vision_prompt_counts == [3] * 12
    with pytest.raises(UserError, match="deep_g"):
        CPEPrompts(tiny.model, L_g=2, deep_g=5)


def test_text_feature_is_taken_at_the_shifted_eos(tiny):
    clip, tok = tiny.model, tiny.tokenizer
    p = CPEPrompts(clip, L_g=2)
    t = tok(TEXTS)
    eos = t.argmax(-1)
    seen = {}
    h = clip.ln_final.register_forward_hook(lambda m, i, o: seen.setdefault("x", o))
    with torch.no_grad():
        feat = p.encode_text(clip, t)
    h.remove()
    x = seen["x"]
    assert x.shape[1] == int(eos.max()) + 1 + 2  # the sequence grew by L_g (padding trimmed)
    at = x[torch.arange(3), eos + 2] @ clip.text_projection
    assert torch.allclose(feat, at, atol=1e-6)
    before = x[torch.arange(3), eos] @ clip.text_projection
    assert not torch.allclose(feat, before, atol=1e-3)
    # the text prompts are replaced at every layer: each G[l] reaches the feature
    p.g_values.grad = None
    p.encode_text(clip, t).sum().backward()
    assert all(p.g_values.grad[i].abs().sum() > 0 for i in range(4))


@pytest.mark.parametrize("sizes,expect", [
    ([60] + [5] * 8, [5 / (60 + 5 * t) for t in range(1, 9)]),       # CIFAR-100, miniImageNet
    ([100] + [10] * 10, [10 / (100 + 10 * t) for t in range(1, 11)]),  # CUB-200
])
def test_lambda_per_session(sizes, expect):
    got = [prompt_lambda(sizes, t) for t in range(1, len(sizes))]
    assert got == pytest.approx(expect)
    assert got[0] == pytest.approx(sizes[1] / (sizes[0] + sizes[1]))  # 5/65 or 10/110


def test_masked_logits():
    logits = torch.randn(4, 10)
    out = mask_old(logits, 6)
    assert torch.all(out[:, :6] == -9999) and torch.equal(out[:, 6:], logits[:, 6:])
    assert not torch.all(logits[:, :6] == -9999)  # the input is untouched
    assert torch.equal(mask_old(logits, 0), logits)
    y = torch.tensor([6, 7, 8, 9])
    assert F.cross_entropy(out, y) == pytest.approx(F.cross_entropy(logits[:, 6:], y - 6).item(),
                                                    abs=1e-5)


def test_official_schedule_rises_over_a_session():
    lrs = [official_lr(e) for e in range(5)]
    assert lrs == pytest.approx([0.001, 0.00298, 0.00496, 0.00694, 0.00892])
    assert official_lr(50) == pytest.approx(0.1)
    assert official_lr(200) == pytest.approx(0.001)  # restart


# ------------------------------------------------------------------ learner on tiny data
def _learner(regularization="balance", **over):
    cfg = config.resolve("cpe_clip", "glyphs", overrides={
        "regularization": regularization, "train.weight_decay": 0.0,
        "train.base.epochs": 1, "train.session.epochs": 1, **over})
    info = DataInfo(channels=1, image_size=32, num_classes=7, num_base=3, way=2, shot=2)
    torch.manual_seed(0)
    return CPECLIP(cfg, info), cfg


def _session(t, classes, n_per=2, seed=0):
    from fsbench.episodes.base import ArrayDataset
    rng = np.random.default_rng(seed + t)
    labels = np.repeat(classes, n_per)
    imgs = rng.integers(0, 255, (len(labels), 32, 32), dtype=np.uint8)
    names = [f"LATIN SMALL LETTER {c}" for c in "ABCDEFG"]
    return Session(t, ArrayDataset(imgs, labels, names), np.array(classes),
                   int(max(classes)) + 1)


def _ctx(cfg):
    return api.build_context(cfg, 1, torch.device("cpu"), 0, progress=False)


def test_only_prompts_get_gradients_and_freeze_modes():
    lr, cfg = _learner()
    lr.names = [f"letter {c}" for c in "abcdefg"]
    lr.sizes = [3]
    x = torch.randn(2, 1, 32, 32)
    loss = lr.prompts.logits(lr.bundle.model, lr._images(x),
                             lr.prompts.encode_text(lr.bundle.model, lr._tokens(3))).sum()
    loss.backward()
    assert lr.prompts.g_values.grad.abs().sum() > 0
    assert lr.prompts.prompt_proj.weight.grad.abs().sum() > 0
    assert all(not q.requires_grad and q.grad is None for q in lr.bundle.model.parameters())
    assert set(n for n, _ in lr.prompts.named_parameters()) == {
        "g_values", "prompt_proj.weight", "prompt_proj.bias"}
    assert list(lr.modules()) == ["prompts"]  # the frozen CLIP is not checkpointed
    for reg, g_on, proj_on in (("freeze", False, True), ("freeze_all", False, False),
                               ("none", True, True), ("balance", True, True)):
        lr, cfg = _learner(reg, **{"train.session.epochs": 0})
        lr.names, lr.sizes = [f"letter {c}" for c in "abcdefg"], [3, 2]
        lr.learn_session(_session(2, [5, 6]), _ctx(cfg))
        assert (lr.prompts.g_values.requires_grad, lr.prompts.prompt_proj.weight.requires_grad) \
            == (g_on, proj_on), reg


def test_balance_scales_the_prompt_update_by_lambda():
    """One SGD step of session 1 (batch = the whole session, no weight decay): the update under
    'balance' is lambda_1 = 2/5 times the update under 'none'."""
    deltas = {}
    for reg in ("none", "balance"):
        lr, cfg = _learner(reg, **{"train.session.batch_size": 4})
        lr.names, lr.sizes = [f"letter {c}" for c in "abcdefg"], [3]
        before = [q.detach().clone() for q in lr.prompts.parameters()]
        torch.manual_seed(1)
        lr.learn_session(_session(1, [3, 4]), _ctx(cfg))
        deltas[reg] = [q.detach() - b for q, b in zip(lr.prompts.parameters(), before)]
    for dn, db in zip(deltas["none"], deltas["balance"]):
        assert dn.abs().sum() > 0
        assert torch.allclose(db, dn * 2 / 5, atol=1e-7, rtol=1e-4)


def test_openai_source_needs_the_weights_file():
    cfg = config.resolve("cpe_clip", "cifar100")
    info = DataInfo(channels=3, image_size=32, num_classes=100, num_base=60, way=5, shot=5)
    with pytest.raises(UserError, match=r"clip\.weights.*ViT-B-16\.pt"):
        CPECLIP(cfg, info)


def test_normalisation_must_match_the_clip():
    with pytest.raises(UserError, match="transforms.normalize.mean"):
        _learner(**{"transforms.normalize": {"mean": [0.2], "std": [0.5]}})


# ------------------------------------------------------------------------- glyphs end to end
SHORT = {"clip.pretrain_steps": 300, "train.base.epochs": 1, "train.session.epochs": 1}


def test_glyphs_end_to_end_and_resume(tmp_path):
    """A short glyphs run (glyphs-clip pretrained on the base session, cached in the session's
    FSBENCH_CACHE; then CPE-CLIP) learns: session-0 accuracy at least 2x chance (1/60) and the
    last session at least 2x chance (1/100). (A tiny CLIP trained for seconds is weak and its
    prompts disturb it more than ViT-B/16's; the full glyphs preset reaches about 15 / 6; this budget about 4.6 / 2.6 here.) A run interrupted after session 3 and resumed
    gives the same numbers as the uninterrupted run."""
    full = api.run("cpe_clip", "glyphs", overrides=SHORT, out_dir=tmp_path / "a", loggers=[],
                   progress=False)
    acc = [s["acc"] for s in full["metrics"]["sessions"]]
    assert len(acc) == 9
    assert acc[0] >= 2 * 100 / 60 and acc[-1] >= 2 * 100 / 100, acc
    assert full["pretraining"] == "glyphs-clip" and full["backbone"] == "glyphs-clip"
    part = api.run("cpe_clip", "glyphs", overrides=SHORT, out_dir=tmp_path / "b", loggers=[],
                   progress=False, stop_after=3)
    assert part["status"] == "partial"
    resumed = api.run("cpe_clip", "glyphs", resume=part["run_dir"], loggers=[], progress=False)
    assert [s["acc"] for s in resumed["metrics"]["sessions"]] == acc
    assert resumed["metrics"]["avg"] == full["metrics"]["avg"]
    assert resumed["history"] == full["history"] and len(full["history"]) == 9  # one per session
    assert all(h["stage"] == "prompts" and h["select"] == "last" for h in full["history"])

"""DVLA-RL: Beta policy maths, REINFORCE on a toy bandit, the RLA paths, progressive top-k, the
attribute sources, presets, and a short glyphs run with --resume."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from fsbench import api, config
from fsbench.errors import UserError
from fsbench.fewshot.dvla_rl.rla import (GatePolicy, Reinforce, RLAttention, beta_entropy,
                                         beta_log_prob)
from fsbench.fewshot.dvla_rl.semantics import (ClassSemantics, GlyphAttributes, JsonAttributes,
                                               progressive_topk, template_description)


# ------------------------------------------------------------------------------- Beta policy
def test_beta_log_prob_and_entropy_equal_torch():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(64, generator=g).clamp(0.02, 0.98)
    kappa = 10.0
    a, b = kappa * p, kappa * (1 - p)
    x = torch.rand(64, generator=g).clamp(1e-3, 1 - 1e-3)
    ref = torch.distributions.Beta(a, b)
    assert torch.allclose(beta_log_prob(x, a, b), ref.log_prob(x), atol=1e-5)
    assert torch.allclose(beta_entropy(a, b), ref.entropy(), atol=1e-5)


def test_policy_parameters_follow_kappa_p_and_mean_is_p():
    pol = GatePolicy(4, "beta", kappa=10.0)
    with torch.no_grad():
        pol.net[-1].bias.fill_(math.log(3))  # sigmoid = 0.75
    s = torch.zeros(5, 9)
    p = pol.p(s)
    assert torch.allclose(p, torch.full((5,), 0.01 + 0.98 * 0.75))
    a, b = pol.beta_params(s)
    assert torch.allclose(a, 10 * p) and torch.allclose(b, 10 * (1 - p))
    assert torch.equal(pol.mean(s), p)  # evaluation: deterministic mean


@pytest.mark.parametrize("kind", ["beta", "categorical"])
@pytest.mark.parametrize("rewarded", [1.0, 0.0])
def test_reinforce_moves_alpha_toward_the_rewarded_side(kind, rewarded):
    torch.manual_seed(0)
    pol = GatePolicy(3, kind, hidden=16)
    opt = torch.optim.Adam(pol.parameters(), lr=0.1)
    rl = Reinforce(momentum=0.9, tau=0.2)
    s = torch.randn(1, 7).expand(32, 7)
    s = torch.cat([s[:, :-1], torch.full((32, 1), 0.3)], 1)  # cos 0.3
    start = float(pol.mean(s[:1]).detach())
    for _ in range(60):
        alpha, logp, ent = pol.act(s)
        reward = 1 - (alpha - rewarded).abs()  # bandit: reward = closeness to one side
        loss = rl.loss(reward, logp, ent)
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = float(pol.mean(s[:1]).detach())
    # moved at least 0.15 toward the rewarded side despite the entropy bonus (tau = 0.2)
    assert (end - start) * (1 if rewarded else -1) > 0.15, (start, end)


# --------------------------------------------------------------------------------- RLA paths
def _attn(q, k, v):
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1) @ v


def test_alpha_one_is_pure_cross_and_zero_pure_self():
    torch.manual_seed(0)
    m = RLAttention(8, 6, heads=1)
    img, text = torch.randn(2, 10, 8), torch.randn(2, 3, 6)
    tc = m.text(text)
    assert torch.allclose(tc, text @ m.t2i.weight.t())
    cross, own = m.paths(img, tc)
    q = m.w_q(tc)
    ref_cross = _attn(q, m.w_k(img), m.w_v(img))
    ref_self = _attn(q, m.w_k_text(tc), m.w_v_text(tc))
    assert torch.allclose(cross, ref_cross, atol=1e-6) and torch.allclose(own, ref_self, atol=1e-6)
    ones, zeros = torch.ones(2), torch.zeros(2)
    assert torch.equal(RLAttention.fuse(cross, own, ones), cross)
    assert torch.equal(RLAttention.fuse(cross, own, zeros), own)
    half = RLAttention.fuse(cross, own, torch.full((2,), 0.5))
    assert torch.allclose(half, (cross + own) / 2)
    # alpha = 0 does not see the image; alpha = 1 does
    img2 = torch.randn_like(img)
    assert torch.allclose(RLAttention.fuse(*m.paths(img2, tc), zeros), own)
    assert not torch.allclose(RLAttention.fuse(*m.paths(img2, tc), ones), cross)


def test_categorical_gate_similarity_bias_and_mean():
    pol = GatePolicy(2, "categorical")  # zero-initialised head: logits = bias only
    s = torch.zeros(3, 5)
    s[:, -1] = torch.tensor([0.9, 0.2, -0.4])
    probs = pol.logits(s).softmax(-1)
    e = math.e
    assert torch.allclose(probs[1], torch.tensor([1, e, 1]) / (2 + e))
    assert torch.allclose(probs[2], torch.tensor([e, 1, 1]) / (2 + e))
    values = torch.tensor([1.0, 0.0, 0.5])
    assert torch.allclose(pol.mean(s), probs @ values)


# ------------------------------------------------------------------------------------ DSC
VOCAB = ["bird", "red", "wing", "beak", "long"]


def count_encoder(texts):
    return torch.tensor([[t.replace(",", " ").split().count(w) for w in VOCAB] for t in texts],
                        dtype=torch.float32)


def test_progressive_topk_order_hand_computed():
    cands = ["bird beak", "bird red wing", "long beak", "red wing"]
    # T0 = "A photo of a bird" -> (1,0,0,0,0): cosines .707, .577, 0, 0 -> "bird beak".
    # T1 adds "bird beak" -> (2,0,0,1,0): .516, .316, 0 -> "bird red wing".
    # T2 -> (3,1,1,1,0), |T2| = sqrt(12): "long beak" 1/sqrt(24) = .204, "red wing"
    # 2/sqrt(24) = .408 -> "red wing", then "long beak". (Ranking against T0 only would give
    # "long beak" before "red wing".)
    assert progressive_topk(count_encoder, "bird", cands, 4) == \
        ["bird beak", "bird red wing", "red wing", "long beak"]
    assert progressive_topk(count_encoder, "bird", cands, 3) == \
        ["bird beak", "bird red wing", "red wing"]
    assert progressive_topk(count_encoder, "bird", cands + ["bird beak"], 1) == ["bird beak"]


def test_class_semantics_cached_and_padded():
    calls = []

    def enc(texts):
        calls.append(len(texts))
        return count_encoder(texts) + 0.01

    src = JsonAttributes.__new__(JsonAttributes)
    src.path, src.classes = "x.json", {"bird": {"attributes": ["bird beak", "red wing"]}}
    sem = ClassSemantics(src, enc, k=3)
    tok = sem.tokens(["bird", "bird"])
    assert tok.shape == (2, 4, 5)  # k + 1 rows: 2 attributes, description, padding
    assert torch.allclose(tok.norm(dim=-1), torch.ones(2, 4))
    assert sem.descriptions["bird"] == template_description("bird", sem.selected["bird"])
    n = len(calls)
    sem.tokens(["bird"])
    sem.targets(["bird"])
    assert len(calls) == n  # computed once per class


def test_glyph_attributes_from_unicode_names():
    g = GlyphAttributes()
    assert g.attributes("LATIN SMALL LETTER A WITH GRAVE") == \
        ["latin", "small", "letter a", "with grave", "lowercase", "base letter a"]
    assert g.attributes("GREEK CAPITAL LETTER IOTA WITH DASIA AND OXIA") == \
        ["greek", "capital", "letter iota", "with dasia", "with oxia", "uppercase",
         "base letter iota"]
    assert g.attributes("ARMENIAN SMALL LETTER AYB") == \
        ["armenian", "small", "letter ayb", "lowercase"]
    # no case word in the name: the case comes from the general category (Ll)
    assert g.attributes("GEORGIAN LETTER AN")[:3] == ["georgian", "small", "letter an"]
    assert g.attributes("LATIN CAPITAL LETTER B") == ["latin", "capital", "letter b", "uppercase"]
    assert g.prompt_name("LATIN CAPITAL LETTER B") == "latin capital letter b"


def test_json_source_schema_and_errors(tmp_path):
    good = {"schema": "fsbench.dvla_rl.attributes/1",
            "classes": {"n01532829": {"name": "house finch", "attributes": ["red crown"],
                                      "description": "A small finch with a red crown."}}}
    p = tmp_path / "a.json"
    p.write_text(json.dumps(good))
    src = JsonAttributes(p)
    assert src.prompt_name("n01532829") == "house finch"
    assert src.attributes("n01532829") == ["red crown"]
    assert src.description("n01532829").startswith("A small finch")
    with pytest.raises(UserError, match="no entry for class 'x'"):
        src.attributes("x")
    bad = [("{", "not valid JSON"), (json.dumps({"classes": {}}), "expected"),
           (json.dumps({**good, "classes": {"a": {"attributes": []}}}), "non-empty list"),
           (json.dumps({**good, "classes": {"a": {"attributes": ["x"], "description": 3}}}),
            "description")]
    for text, msg in bad:
        p.write_text(text)
        with pytest.raises(UserError, match=msg) as e:
            JsonAttributes(p)
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="not found"):
        JsonAttributes(tmp_path / "missing.json")


# -------------------------------------------------------------------------------- presets
def test_presets_paper_values():
    for ds in ("miniimagenet", "tieredimagenet", "cifarfs", "cub200", "glyphs"):
        c = config.resolve("dvla_rl", ds)
        r = c["rla"]
        assert (r["policy"], r["kappa"], r["lambda_sim"], r["lambda_imp"], r["weight"],
                r["tau"]) == ("beta", 10.0, 0.5, 1.0, 0.1, 0.2), ds
        assert c["meta"]["temperature"] == 0.2
    mini = config.resolve("dvla_rl", "miniimagenet")
    assert mini["backbone"]["name"] == "visformer_tiny" and mini["eval"]["episodes"] == 2000
    assert (mini["meta"]["lr"], mini["meta"]["backbone_lr"]) == (5e-4, 1e-6)
    assert mini["text"]["arch"] == "ViT-B-16"


def test_bad_settings_are_one_line_errors(tmp_path):
    from fsbench.fewshot.dvla_rl.learner import DVLARL
    from fsbench.learner import DataInfo

    info = DataInfo(channels=1, image_size=32, num_classes=10)
    for sets, msg in [(["rla.policy=gauss"], "rla.policy"), (["rla.alpha_fixed=2"], "alpha_fixed"),
                      (["backbone.name=vgg"], "not a DVLA-RL backbone"),
                      (["backbone.weights=/nonexistent/x.pt"], "not found")]:
        with pytest.raises(UserError, match=msg) as e:
            DVLARL(config.resolve("dvla_rl", "glyphs", overrides=sets), info)
        assert "\n" not in str(e.value)
    learner = DVLARL(config.resolve("dvla_rl", "glyphs"), info)
    with pytest.raises(UserError, match="needs class_names"):
        learner.predict_episodes(torch.zeros(1, 5, 1, 32, 32), torch.arange(5)[None],
                                 torch.zeros(1, 5, 1, 32, 32))
    with pytest.raises(UserError, match="needs an attribute JSON file"):
        from fsbench.fewshot.dvla_rl.semantics import build_source
        build_source("auto", "miniimagenet")


def test_backbone_weights_from_a_local_file(tmp_path):
    from fsbench.fewshot.dvla_rl.backbone import build_staged

    torch.manual_seed(0)
    src = build_staged({"name": "glyphnet"}, 1, 32)
    torch.save(src.state_dict(), tmp_path / "g.pt")
    dst = build_staged({"name": "glyphnet", "weights": str(tmp_path / "g.pt")}, 1, 32)
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(),
                                                 dst.state_dict().values()))
    with pytest.raises(UserError, match="not a glyphnet state dict"):
        build_staged({"name": "glyphnet", "widths": [32, 64, 64, 96],
                      "weights": str(tmp_path / "g.pt")}, 1, 32)


def test_visformer_stage_interface_appends_and_strips_tokens():
    from fsbench.fewshot.dvla_rl.backbone import VisformerStaged

    torch.manual_seed(0)
    net = VisformerStaged(3, 64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        h = net.embed(0, net.stem(x))
        plain = net.stage(0, h, None)
        extra = net.stage(0, h, torch.randn(2, 5, net.dims[0]))
        assert plain.shape == extra.shape == h.shape  # extra rows removed after the stage
        assert not torch.allclose(plain, extra)  # ... but attended to inside it
        assert net(x).shape == (2, net.out_dim) == (2, 384)
        assert torch.allclose(net(x), net.net.forward_head(net.net.forward_features(x),
                                                           pre_logits=True), atol=1e-5)


# ------------------------------------------------------------------------------ glyphs run
# The glyphs CLIP (fsbench.clip) takes minutes to train the first time; the short run uses the
# untrained ``words`` text encoder so that it stays a fast test of the whole pipeline.
SHORT = {"text.encoder": "words", "text.dim": 64, "pretrain.epochs": 1,
         "pretrain.max_images": 2048, "meta.episodes": 20, "eval.episodes": 50}


def test_glyphs_end_to_end_above_chance_and_resume(tmp_path):
    r = api.run("dvla_rl", "glyphs", overrides=SHORT, out_dir=tmp_path, progress=False)
    shots = r["metrics"]["shots"]
    # 5-way: chance is 20%; this short run must clear it by 7 points (1-shot) and 12 (5-shot)
    assert shots["1"]["mean"] > 27 and shots["5"]["mean"] > 32, shots
    (pre, meta) = r["history"]  # 1 pretraining epoch, 20 meta-tuning episodes in one block
    assert pre["stage"] == "pretrain" and [e["epoch"] for e in pre["epochs"]] == [0]
    assert meta["stage"] == "meta" and meta["epochs"][0]["episodes"] == 20
    again = api.run(None, None, resume=r["run_dir"], progress=False)
    assert again["history"] == r["history"]
    for k in ("1", "5"):
        assert again["metrics"]["shots"][k]["per_episode"] == shots[k]["per_episode"]

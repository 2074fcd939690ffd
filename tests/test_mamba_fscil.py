"""Mamba-FSCIL: the selective scan against a reference written here from its definition, the neck's
no-op start, the ETF geometry, the losses' directions, a short glyphs run and resuming."""
import sys

import pytest
import torch
import torch.nn.functional as F

from fsbench import api, config
from fsbench.learner import DataInfo
from fsbench.registry import METHODS
from fsbench.scan import selective_scan
from fsbench.incremental.mamba_fscil.losses import (dot_regression, separation, simplex_etf,
                                                    suppression)


def reference_scan(u, delta, A, B, C, D, z, bias):
    """h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t;  y_t = <C_t, h_t> + D u_t;  y *= SiLU(z), with
    dt = softplus(delta + bias). B, C: (b, g, n, l), channel i reading group i // (d // g)."""
    b, d, l = u.shape
    g = B.shape[1]
    dt = F.softplus(delta + bias[:, None])
    ys = []
    for i in range(d):
        Bi, Ci = B[:, i // (d // g)], C[:, i // (d // g)]          # (b, n, l)
        h = torch.zeros(b, A.shape[1], dtype=u.dtype)
        out = []
        for t in range(l):
            h = torch.exp(dt[:, i, t, None] * A[i]) * h + (dt[:, i, t] * u[:, i, t])[:, None] * Bi[..., t]
            out.append((h * Ci[..., t]).sum(-1) + D[i] * u[:, i, t])
        ys.append(torch.stack(out, -1))
    return torch.stack(ys, 1) * F.silu(z)


@pytest.mark.parametrize("impl", ["fused", "sequential"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scan_matches_reference_forward_and_backward(impl, seed):
    gen = torch.Generator().manual_seed(seed)
    b, l, n = (int(torch.randint(1, 4, (), generator=gen)), int(torch.randint(1, 9, (), generator=gen)),
               int(torch.randint(1, 7, (), generator=gen)))
    g = [1, 2][seed % 2]
    d = g * int(torch.randint(1, 4, (), generator=gen))
    r = lambda *s: torch.randn(*s, generator=gen).requires_grad_()  # noqa: E731
    u, delta, z = r(b, d, l), r(b, d, l), r(b, d, l)
    A = (-torch.rand(d, n, generator=gen) * 2 - 0.1).requires_grad_()
    B, C, D, bias = r(b, g, n, l), r(b, g, n, l), r(d), r(d)
    inputs = [u, delta, A, B, C, D, z, bias]
    w = torch.randn(b, d, l, generator=gen)
    # mamba-ssm's layout: B, C of shape (b, n, l) when there is one group
    Bx, Cx = (B[:, 0], C[:, 0]) if g == 1 else (B, C)
    got = selective_scan(u, delta, A, Bx, Cx, D, z, bias, delta_softplus=True, impl=impl)
    want = reference_scan(u, delta, A, B, C, D, z, bias)
    assert got.shape == (b, d, l)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    g_got = torch.autograd.grad((got * w).sum(), inputs)
    g_want = torch.autograd.grad((want * w).sum(), inputs)
    for name, a, e in zip("u delta A B C D z bias".split(), g_got, g_want):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5, msg=f"d/d{name}")


def test_scan_last_state_and_no_mamba_import_on_cpu():
    u, delta = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    A, B, C = -torch.rand(3, 4), torch.randn(2, 4, 5), torch.randn(2, 4, 5)
    y1, h1 = selective_scan(u, delta, A, B, C, return_last_state=True, impl="fused")
    y2, h2 = selective_scan(u, delta, A, B, C, return_last_state=True, impl="sequential")
    torch.testing.assert_close(y1, y2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h1, h2, atol=1e-5, rtol=1e-5)
    if not torch.cuda.is_available():
        assert "mamba_ssm" not in sys.modules
        with pytest.raises(RuntimeError, match="mamba-ssm"):
            selective_scan(u, delta, A, B, C, impl="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (mamba-ssm path)")
def test_scan_cuda_path_matches_pytorch():
    pytest.importorskip("mamba_ssm", reason="mamba-ssm is not installed")
    gen = torch.Generator().manual_seed(0)
    b, d, l, n = 4, 16, 25, 8
    args = [torch.randn(b, d, l, generator=gen), torch.randn(b, d, l, generator=gen),
            -torch.rand(d, n, generator=gen), torch.randn(b, n, l, generator=gen),
            torch.randn(b, n, l, generator=gen), torch.randn(d, generator=gen),
            torch.randn(b, d, l, generator=gen), torch.randn(d, generator=gen)]
    cpu = selective_scan(*args, delta_softplus=True, impl="fused")
    cuda = selective_scan(*[a.cuda() for a in args], delta_softplus=True, impl="cuda")
    torch.testing.assert_close(cuda.cpu(), cpu, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- model pieces
def small_learner(num_classes=30, num_base=10):
    cfg = config.resolve("mamba_fscil", "synthetic")
    info = DataInfo(channels=1, image_size=32, num_classes=num_classes, num_base=num_base,
                    way=5, shot=5)
    return METHODS.get("mamba_fscil").obj(cfg, info)


def test_incremental_branch_is_an_exact_noop_at_start():
    torch.manual_seed(0)
    learner = small_learner()
    learner.eval()
    f = torch.randn(6, 64, 2, 2)
    with torch.no_grad():
        before = learner.neck(f)["out"]
        learner.neck.use_inc = True
        out = learner.neck(f)
    assert torch.equal(out["out"], before)
    assert out["z_inc"].abs().max() == 0  # zero z-half of in_proj: SiLU(0) = 0 gates everything
    # ... but it is not dead: the gate's weights get a gradient
    learner.train()
    learner.step_loss(f, torch.tensor([0, 1, 2, 12, 13, 14])).backward()
    assert learner.neck.inc.block.in_proj.weight.grad[learner.neck.inc.block.d_inner:].abs().sum() > 0


def test_etf_columns_are_equiangular_unit_vectors():
    for dim, k in [(128, 100), (16, 5)]:
        w = simplex_etf(dim, k, seed=3)
        gram = w.t() @ w
        torch.testing.assert_close(gram.diagonal(), torch.ones(k), atol=1e-5, rtol=0)
        off = gram[~torch.eye(k, dtype=torch.bool)]
        torch.testing.assert_close(off, torch.full_like(off, -1 / (k - 1)), atol=1e-5, rtol=0)
        torch.testing.assert_close(w.sum(1), torch.zeros(dim), atol=1e-5, rtol=0)
    assert torch.equal(simplex_etf(16, 5, seed=3), simplex_etf(16, 5, seed=3))
    with pytest.raises(ValueError, match="dim"):
        simplex_etf(4, 5)


def test_dot_regression_pulls_features_to_their_etf_column():
    etf = simplex_etf(16, 5)
    y = torch.tensor([0, 1, 2, 3])
    assert dot_regression(etf[:, y].t() * 3.0, y, etf) < 1e-10  # only the direction counts
    f = torch.randn(4, 16, requires_grad=True)
    loss = dot_regression(f, y, etf)
    loss.backward()
    g = f - 0.5 * f.grad
    cos = lambda x: F.cosine_similarity(x, etf[:, y].t()).detach()  # noqa: E731
    assert (cos(g) > cos(f)).all()
    # with_len: classes with fewer samples in the batch get longer targets
    yl = torch.tensor([0, 0, 0, 1])
    fl = etf[:, yl].t().clone()
    assert dot_regression(fl, yl, etf, with_len=True) > 0


def test_suppression_and_separation_directions():
    z = torch.randn(6, 8, 4, requires_grad=True)
    is_base = torch.tensor([True, True, True, False, False, False])
    suppression(z, is_base, 100.0, 1.0).backward()
    # gradient descent shrinks z on base samples and enlarges it on novel ones
    assert ((z.grad * z)[is_base] >= 0).all() and (z.grad * z)[is_base].sum() > 0
    assert ((z.grad * z)[~is_base] <= 0).all() and (z.grad * z)[~is_base].sum() < 0

    torch.manual_seed(0)
    p = {"dt": torch.randn(6, 3, 4) + 2.0, "B": torch.randn(6, 5, 4) + 1.0}
    for v in p.values():
        v.requires_grad_()
    loss = separation(p, is_base, 1.0)
    base_m = F.normalize(p["dt"][is_base].mean((0, 2)), dim=0)
    novel_m = F.normalize(p["dt"][~is_base].mean((0, 2)), dim=0)
    assert loss.item() > (base_m @ novel_m).abs().item() / 2 - 1e-6  # dt's |cos|/2 plus B's
    loss.backward()
    stepped = {k: (v - 0.05 * v.grad).detach() for k, v in p.items()}
    assert separation(stepped, is_base, 1.0) < loss  # descent de-correlates base from novel
    assert separation(p, torch.ones(6, dtype=torch.bool), 1.0) == 0  # needs both kinds


def test_bad_options_are_one_line_errors():
    from fsbench.errors import UserError
    info = DataInfo(channels=1, image_size=32, num_classes=30, num_base=10, way=5, shot=5)
    cfg = config.resolve("mamba_fscil", "synthetic")
    cfg["incremental"]["nope"] = 1
    with pytest.raises(UserError, match="incremental.nope: unknown key"):
        METHODS.get("mamba_fscil").obj(cfg, info)
    cfg = config.resolve("mamba_fscil", "synthetic")
    cfg["incremental"]["steps"] = [5, 5]  # a per-session list, as a preset may give it
    with pytest.raises(UserError, match="incremental.steps: 2 values for 4 sessions"):
        METHODS.get("mamba_fscil").obj(cfg, info)
    cfg = config.resolve("mamba_fscil", "synthetic", overrides={"neck.out_channels": 8,
                                                                "neck.mid_channels": 8})
    with pytest.raises(UserError, match="out_channels"):
        METHODS.get("mamba_fscil").obj(cfg, info)


# ----------------------------------------------------------------------------- runs
SHORT = {"train.epochs": 3, "incremental.steps": 5}  # also the `regress --embedded` budget


def _sessions(r):
    return [{k: v for k, v in s.items() if k != "seconds"} for s in r["metrics"]["sessions"]]


def test_resume_gives_identical_numbers(tmp_path):
    fast = {"train.epochs": 1, "incremental.steps": 6}
    full = api.run("mamba_fscil", "synthetic", overrides=fast, out_dir=tmp_path / "a",
                   progress=False)
    part = api.run("mamba_fscil", "synthetic", overrides=fast, out_dir=tmp_path / "b",
                   progress=False, stop_after=2)  # interrupted after session 2
    assert part["status"] == "partial" and len(part["metrics"]["sessions"]) == 3
    resumed = api.run(None, None, resume=part["run_dir"], progress=False)
    assert resumed["status"] == "complete" and _sessions(resumed) == _sessions(full)
    assert resumed["history"] == full["history"]  # training curves survive the resume
    stages = [(h["session"], h["stage"]) for h in full["history"]]
    assert stages == [(0, "base")] + [(t, "incremental") for t in range(1, 5)]
    assert full["history"][0]["select"] == "val" and full["history"][1]["epochs"][0]["loss"] > 0
    assert full["flags"]["selected_on_test"] is False


def test_short_glyphs_run_learns(tmp_path):
    """3 base epochs + 5 steps per session, far above chance: 100 classes in the last session
    (chance 1%), base classes are 60% of its test images. Margins: base session > 40% (chance
    1.7%), last session > 15%."""
    r = api.run("mamba_fscil", "glyphs", overrides=SHORT, out_dir=tmp_path, progress=False)
    s = r["metrics"]["sessions"]
    assert len(s) == 9 and s[-1]["num_seen"] == 100
    assert s[0]["acc"] > 40, s[0]
    assert s[-1]["acc"] > 15, s[-1]


# ---------------------------------------------------------------------------------- SS2D (CUB)
def test_ss2d_matches_a_per_direction_reference():
    """SS2D = four direction-specific scans of the token map, each mapped back to row-major order,
    summed, LayerNorm-ed and gated by SiLU(z); checked against the reference scan above run once
    per direction with explicit token orders (a 3 x 4 map: rows and columns differ)."""
    from fsbench.incremental.mamba_fscil.ss2d import SS2D

    torch.manual_seed(3)
    h, w, dm = 3, 4, 6
    blk = SS2D(dm, d_state=5, dt_rank=2, d_conv=3).double()
    x = torch.randn(2, h, w, dm, dtype=torch.double)
    y, z0, params = blk(x)
    d = blk.d_inner
    u, zz = blk.in_proj(x).chunk(2, -1)
    u = F.silu(blk.conv2d(u.permute(0, 3, 1, 2))).flatten(2)            # (b, d, l) row-major
    rows = torch.arange(h * w)
    cols = rows.view(h, w).t().reshape(-1)                              # column-major positions
    orders = [rows, rows.flip(0), cols, cols.flip(0)]
    total = torch.zeros(2, d, h * w, dtype=torch.double)
    for k, order in enumerate(orders):
        uk = u[..., order]
        dbl = torch.einsum("bdl,cd->bcl", uk, blk.x_proj_weight[k])
        dt, B, C = dbl.split([2, 5, 5], dim=1)
        delta = torch.einsum("brl,dr->bdl", dt, blk.dt_projs_weight[k])
        sl = slice(k * d, (k + 1) * d)
        yk = reference_scan(uk, delta, -torch.exp(blk.A_logs[sl]), B[:, None], C[:, None],
                            blk.Ds[sl], torch.full_like(uk, 1e9), blk.dt_projs_bias[k])
        back = torch.empty_like(yk)
        back[..., order] = yk                                           # token t -> its position
        total += back
        assert torch.allclose(params["B"][:, k], B)
    ref = blk.out_norm(total.transpose(1, 2)).view(2, h, w, d) * F.silu(zz)
    # the scan runs in float32 (the reference in float64) and LayerNorm scales its error up;
    # a token order off by one direction is off by O(1)
    torch.testing.assert_close(y, ref, rtol=1e-3, atol=1e-3)
    assert torch.equal(z0, zz) and params["dt"].shape == (2, 4, 2, h * w)


def test_ss2d_neck_starts_as_a_noop_and_separation_reads_directions():
    from fsbench.incremental.mamba_fscil.neck import MambaNeck

    torch.manual_seed(0)
    opts = {"out_channels": 16, "mid_channels": 16, "num_layers": 2, "num_layers_new": 3,
            "d_state": 4, "dt_rank": 4, "d_conv": 4, "expand": 1, "residual_proj": True,
            "detach_residual": False, "version": "ss2d", "d_conv_2d": 3, "z_sum": "code"}
    neck = MambaNeck(8, (3, 3), opts).eval()
    f = torch.randn(5, 8, 3, 3)
    with torch.no_grad():
        before = neck(f)["out"]
        neck.use_inc = True
        out = neck(f)
    assert torch.equal(out["out"], before) and out["z_inc"].abs().max() == 0
    is_base = torch.tensor([True, True, False, False, False])
    sep = separation(out["params_inc"], is_base, 1.0)
    # by hand: means over batch, directions and tokens of each kind, |I - cos| averaged
    for key, p in out["params_inc"].items():
        assert p.shape[:2] == (5, 4), key
    dt = out["params_inc"]["dt"]
    m = F.normalize(torch.stack([dt[:2].mean((0, 1, 3)), dt[2:].mean((0, 1, 3))]), dim=-1)
    assert sep > (1 - (m[0] @ m[1])).abs() / 2 - 1e-6  # at least dt's term

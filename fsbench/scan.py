"""The selective scan of Mamba (Gu & Dao, 2023, Alg. 2 / Eq. 2a-2b, discretised with zero-order hold
on ``A`` and Euler on ``B``), with mamba-ssm's argument layout and semantics::

    delta = softplus(delta + delta_bias)      # only with delta_softplus=True; bias optional
    h_t   = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t   = C_t . h_t + D * u_t               # the dot product runs over the state dimension
    out   = y * SiLU(z)                       # when z is given

Shapes (``b`` batch, ``d`` channels, ``l`` tokens, ``n`` state size, ``g`` groups dividing ``d``):
``u, delta, z: (b, d, l)``, ``A: (d, n)`` (real), ``B, C: (b, n, l)`` or ``(b, g, n, l)`` (input
dependent; channel ``i`` uses group ``i // (d // g)``) or ``(d, n)`` (constant), ``D, delta_bias:
(d,)``. The output has ``u``'s dtype; the scan itself runs in float32.

Three implementations, one meaning:

* ``cuda`` - mamba-ssm's fused kernel (``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``),
  used automatically for CUDA tensors when mamba-ssm imports. mamba-ssm is imported lazily and only
  when CUDA is available; its absence just selects the next path.
* ``fused`` - pure PyTorch for CPU (and CUDA without mamba-ssm): ``exp(delta A)`` and
  ``delta B u`` are computed for all tokens in one batched call each, in token-major contiguous
  memory; the recurrence is then one in-place ``addcmul_`` per token, the read-out one batched
  matmul; gradients come from an explicit reverse scan (:class:`_FusedScan`) instead of autograd
  through ``l`` small steps.
* ``sequential`` - the per-token loop written from the definition (as mamba-ssm's
  ``selective_scan_ref``); the reference the others are tested against.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IMPLS = ("auto", "cuda", "fused", "sequential")


def mamba_ssm_scan():
    """mamba-ssm's ``selective_scan_fn``, or ``None`` (no CUDA, or mamba-ssm not installed)."""
    if not torch.cuda.is_available():
        return None  # never import mamba-ssm without CUDA: it fails to import there
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return None
    return selective_scan_fn


def _prepare_delta(delta, delta_bias, delta_softplus):
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[..., None]
    return F.softplus(delta) if delta_softplus else delta


def _finish(y, u, D, z, dtype):
    if D is not None:
        y = y + u.float() * D.float()[..., None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(dtype)


def _grouped(M: torch.Tensor, d: int) -> torch.Tensor:
    """``(b, n, l)`` or ``(b, g, n, l)`` -> ``(b, d, n, l)`` (each channel gets its group's rows)."""
    if M.dim() == 3:
        return M.unsqueeze(1).expand(-1, d, -1, -1)
    g = M.shape[1]
    return M.repeat_interleave(d // g, dim=1)


def selective_scan_sequential(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                              delta_softplus=False, return_last_state=False):
    """The reference: one token at a time, straight from the definition (autograd backward)."""
    dtype = u.dtype
    b, d, l = u.shape
    delta = _prepare_delta(delta, delta_bias, delta_softplus)
    uf, A = u.float(), A.float()
    const_b, const_c = B.dim() == 2, C.dim() == 2
    Bv = B.float() if const_b else _grouped(B.float(), d)
    Cv = C.float() if const_c else _grouped(C.float(), d)
    h = uf.new_zeros(b, d, A.shape[1])
    ys = []
    for t in range(l):
        dA = torch.exp(delta[:, :, t, None] * A)
        Bt = Bv if const_b else Bv[..., t]
        Ct = Cv if const_c else Cv[..., t]
        h = dA * h + (delta[:, :, t] * uf[:, :, t])[..., None] * Bt
        ys.append((h * Ct).sum(-1))
    out = _finish(torch.stack(ys, dim=-1), u, D, z, dtype)
    return (out, h) if return_last_state else out


#: Elements of one block's ``(l, bb, g, k, n)`` buffers: small enough to stay in cache and to be
#: reused without fresh page-faulting allocations (the cost that dominates a naive CPU scan).
BLOCK_ELEMENTS = 1 << 19


class _FusedScan(torch.autograd.Function):
    """``y = scan(u, delta, A, B, C)`` (no D, gate or softplus), with a hand-written backward.

    Works in blocks of batch items (token-major ``(l, bb, g, k, n)`` buffers, ``d = g * k``).
    Nothing of size ``l * d * n`` is kept between forward and backward: the backward recomputes
    ``exp(delta A)`` and the states per block, then runs the reverse scan
    ``dL/dh_t = C_t dL/dy_t + exp(delta_{t+1} A) dL/dh_{t+1}``."""

    @staticmethod
    def _views(u, delta, A, B, C):
        b, d, l = u.shape
        g, n = B.shape[1], A.shape[1]
        k = d // g
        return (u.reshape(b, g, k, l).permute(3, 0, 1, 2),             # (l, b, g, k)
                delta.reshape(b, g, k, l).permute(3, 0, 1, 2),
                A.reshape(g, k, n),
                B.permute(3, 0, 1, 2).unsqueeze(3),                      # (l, b, g, 1, n)
                C.permute(3, 0, 1, 2).unsqueeze(3))                      # (l, b, g, 1, n)

    @staticmethod
    def _states(dt, uu, Ag, Bt, dA, h):
        """Fill ``dA = exp(delta A)`` and the states ``h`` of one block; returns ``delta u``."""
        torch.mul(dt.unsqueeze(-1), Ag, out=dA)
        dA.exp_()
        du = (dt * uu).unsqueeze(-1)                                     # (l, bb, g, k, 1)
        torch.mul(du, Bt, out=h)
        for t in range(1, h.shape[0]):
            h[t].addcmul_(dA[t], h[t - 1])
        return du

    @staticmethod
    def forward(ctx, u, delta, A, B, C):
        b, d, l = u.shape
        n = A.shape[1]
        uu, dt, Ag, Bt, Ct = _FusedScan._views(u, delta, A, B, C)
        g, k = Ag.shape[:2]
        bb = max(1, min(b, BLOCK_ELEMENTS // max(1, l * d * n)))
        y = u.new_empty(l, b, g, k)
        last = u.new_empty(b, g, k, n)
        dA = u.new_empty(l, bb, g, k, n)
        h = torch.empty_like(dA)
        for s in range(0, b, bb):
            e = min(b, s + bb)
            m = e - s
            _FusedScan._states(dt[:, s:e], uu[:, s:e], Ag, Bt[:, s:e], dA[:, :m], h[:, :m])
            y[:, s:e] = (h[:, :m] * Ct[:, s:e]).sum(-1)  # faster than a batched matvec
            last[s:e] = h[-1, :m]
        ctx.save_for_backward(u, delta, A, B, C)
        return y.permute(1, 2, 3, 0).reshape(b, d, l), last.reshape(b, d, n)

    @staticmethod
    def backward(ctx, gy, glast):
        u, delta, A, B, C = ctx.saved_tensors
        b, d, l = u.shape
        n = A.shape[1]
        uu, dt, Ag, Bt, Ct = _FusedScan._views(u, delta, A, B, C)
        g, k = Ag.shape[:2]
        gy = gy.reshape(b, g, k, l).permute(3, 0, 1, 2).unsqueeze(-1)   # (l, b, g, k, 1)
        glast = None if glast is None else glast.reshape(b, g, k, n)
        gu, gdt = u.new_empty(l, b, g, k), u.new_empty(l, b, g, k)
        gB, gC = u.new_empty(l, b, g, 1, n), u.new_empty(l, b, g, 1, n)
        gA = u.new_zeros(g, k, n)
        bb = max(1, min(b, BLOCK_ELEMENTS // max(1, l * d * n)))
        dA = u.new_empty(l, bb, g, k, n)
        h, gh = torch.empty_like(dA), torch.empty_like(dA)
        for s in range(0, b, bb):
            e = min(b, s + bb)
            m = e - s
            dAb, hb, ghb, gyb = dA[:, :m], h[:, :m], gh[:, :m], gy[:, s:e]
            du = _FusedScan._states(dt[:, s:e], uu[:, s:e], Ag, Bt[:, s:e], dAb, hb)
            torch.mul(gyb, Ct[:, s:e], out=ghb)       # C_t dL/dy_t
            if glast is not None:
                ghb[-1] += glast[s:e]
            for t in range(l - 2, -1, -1):
                ghb[t].addcmul_(dAb[t + 1], ghb[t + 1])
            gC[:, s:e] = torch.matmul(gyb.transpose(-1, -2), hb)
            gdu = (ghb * Bt[:, s:e]).sum(-1)
            gB[:, s:e] = torch.matmul(du.transpose(-1, -2), ghb)
            # dL/d(delta A)_t = dL/dh_t * h_{t-1} * exp(delta_t A), zero at t = 0 (in dA's buffer)
            dAb[1:].mul_(ghb[1:]).mul_(hb[:-1])
            dAb[0].zero_()
            gdt[:, s:e] = gdu * uu[:, s:e] + torch.matmul(
                dAb.unsqueeze(-2), Ag.unsqueeze(-1)).reshape(l, m, g, k)
            gu[:, s:e] = gdu * dt[:, s:e]
            gA += (dAb * dt[:, s:e].unsqueeze(-1)).sum((0, 1))

        def back(x):  # (l, b, g, k) -> (b, d, l)
            return x.permute(1, 2, 3, 0).reshape(b, d, l)
        return (back(gu), back(gdt), gA.reshape(d, n),
                gB.squeeze(3).permute(1, 2, 3, 0), gC.squeeze(3).permute(1, 2, 3, 0))


def selective_scan_fused(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                         delta_softplus=False, return_last_state=False):
    """The fast PyTorch path (see the module docstring). Constant ``(d, n)`` B or C falls back to
    :func:`selective_scan_sequential`."""
    if B.dim() == 2 or C.dim() == 2:
        return selective_scan_sequential(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                         return_last_state)
    d = u.shape[1]
    Bg = B.float() if B.dim() == 4 else B.float().unsqueeze(1)
    Cg = C.float() if C.dim() == 4 else C.float().unsqueeze(1)
    if Bg.shape[1] != Cg.shape[1]:  # different groupings for B and C: give both one per channel
        Bg, Cg = _grouped(Bg, d), _grouped(Cg, d)
    if d % Bg.shape[1]:
        raise ValueError(f"selective_scan: {Bg.shape[1]} groups do not divide {d} channels")
    delta = _prepare_delta(delta, delta_bias, delta_softplus)
    y, last = _FusedScan.apply(u.float(), delta, A.float(), Bg.contiguous(), Cg.contiguous())
    out = _finish(y, u, D, z, u.dtype)
    return (out, last) if return_last_state else out


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, impl: str = "auto"):
    """Selective scan with mamba-ssm's signature (see the module docstring).

    ``impl``: ``auto`` (mamba-ssm for CUDA tensors when it imports, else ``fused``), ``cuda``
    (mamba-ssm, an error when unavailable), ``fused`` or ``sequential``."""
    if impl not in IMPLS:
        raise ValueError(f"selective_scan: impl must be one of {IMPLS}, not {impl!r}")
    if impl in ("auto", "cuda"):
        fn = mamba_ssm_scan() if u.is_cuda else None
        if fn is not None:
            return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
        if impl == "cuda":
            raise RuntimeError("selective_scan(impl='cuda') needs CUDA tensors and mamba-ssm "
                               "(pip install mamba-ssm)")
    if impl == "sequential":
        return selective_scan_sequential(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                         return_last_state)
    return selective_scan_fused(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                return_last_state)

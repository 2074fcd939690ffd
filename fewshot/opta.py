"""OpTA - Optimal-Transport distribution Alignment (BECLR, Poulakakis-Daktylidis & Jamali-Rad,
ICLR 2024, Sec. 4.2), a transductive FSL inference head usable on any learner's features
(``--set head=opta``; BECLR's presets set it).

Per episode (``N`` classes, ``K`` shots, ``M`` queries):

1. per-sample standardisation of every feature vector: ``f <- (f - mean(f)) / std(f)`` over the
   feature dimension (unbiased std, as ``torch.std``);
2. prototypes ``P0`` = class means of the support features;
3. entropic optimal transport between the prototypes (mass ``1/N`` each) and the queries (``1/M``
   each), cost ``C_ij = ||p_i - q_j||^2 / max(C)``, regularisation ``reg`` = 0.05, log-domain
   Sinkhorn, at most ``max_iter`` = 1000 iterations, stopped once ``sum_i |u_i - u_i'| < stop``
   (1e-4) for the dual potential ``u`` of the prototypes (the official stopping rule);
4. ``P <- rownorm(plan) @ Q``: every prototype becomes the plan-weighted mean of the queries;
5. steps 3-4 repeated ``passes_1shot`` = 5 times for 1-shot and ``passes_kshot`` = 1 time for
   K > 1; for K > 1 the result is mixed back, ``P = ratio * P + (1 - ratio) * P0``, ratio = 0.7;
6. a logistic-regression classifier (the official code: scikit-learn, C = 1, lbfgs, 1000
   iterations) fitted on the N prototypes (one sample per class) scores the queries; its
   ``decision_function`` is returned as the logits ``(E, M, N)``. By default every episode's
   regression is solved at once in torch (:func:`logreg_logits_batched`: the same objective,
   solved to its exact optimum); ``lr_solver: sklearn`` runs scikit-learn per episode.

The transports of all episodes of a call are solved at once (:func:`sinkhorn_batched`, float64,
each episode stops at the iteration it would stop at alone, so batched and per-episode results
agree); the feature work (standardisation, costs, barycentres) runs in cache-sized blocks of
``chunk`` episodes. ``solver: pot`` runs the transports one episode at a time with
``ot.sinkhorn`` (POT's own stopping rule ``pot_stop``; the reference the tests and
``benchmarks/bench_opta.py`` compare against). ``classifier: euclidean`` replaces step 6 by
negative squared distances to the aligned prototypes (no scikit-learn). ``dtype: float32`` does
the feature work in float32 (about 1.5x faster on a CPU; the Sinkhorn stays float64).

Differences from the released code: the marginals are exactly uniform (it adds 1e-8 inside the
log), and a constant feature vector standardises to 0 instead of NaN.

Configuration (block ``opta`` of the run configuration; every key optional)::

    opta: {reg: 0.05, max_iter: 1000, stop: 1.0e-4, passes_1shot: 5, passes_kshot: 1,
           ratio: 0.7, classifier: logreg, solver: torch, standardize: true, dtype: float64,
           lr_C: 1.0, lr_max_iter: 1000, lr_solver: torch, pot_stop: 1.0e-9, chunk: 0}

Non-finite features raise :class:`~fsbench.errors.EpisodeError` naming the episode (the FSL runner
turns it into the global episode index; the CLI prints one line and exits with code 2).
"""
from __future__ import annotations

import math
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field, StrictBool, StrictInt

from fsbench.configschema import MethodBlock, validate_block
from fsbench.errors import EpisodeError, UserError
from fsbench.heads import register_head

__all__ = ["OpTA", "OpTAConfig", "sinkhorn_batched", "standardize", "class_means",
           "check_finite", "logreg_logits", "logreg_logits_batched"]


_Pos = Annotated[float, Field(gt=0, allow_inf_nan=False)]
_Iters = Annotated[StrictInt, Field(ge=1, le=10_000_000)]
_Passes = Annotated[StrictInt, Field(ge=0, le=1000)]


class OpTAConfig(MethodBlock):
    """The ``opta:`` block (BECLR §4.2, Eq. 9-10; defaults of the official code)."""

    reg: _Pos = Field(0.05, description="entropic regularisation of the Sinkhorn transport")
    max_iter: _Iters = Field(1000, description="Sinkhorn iterations at most")
    stop: Annotated[float, Field(ge=0, allow_inf_nan=False)] = Field(
        1e-4, description="Sinkhorn stopping threshold")
    passes_1shot: _Passes = Field(5, description="OpTA passes for 1-shot episodes")
    passes_kshot: _Passes = Field(1, description="OpTA passes for k-shot episodes")
    ratio: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = Field(
        0.7, description="share of the transported prototype, in [0, 1]")
    classifier: Literal["logreg", "euclidean"] = Field("logreg", description="final classifier")
    solver: Literal["torch", "pot"] = Field(
        "torch", description="torch (batched) | pot (per-episode ot.sinkhorn reference)")
    standardize: StrictBool = Field(True, description="standardise features per episode")
    dtype: Literal["float64", "float32"] = Field(
        "float64", description="features, costs and barycentres (Sinkhorn is always float64)")
    lr_C: _Pos = Field(1.0, description="inverse L2 strength of the logistic regression")
    lr_max_iter: _Iters = Field(1000, description="logistic-regression iterations at most")
    lr_solver: Literal["torch", "sklearn"] = Field(
        "torch", description="torch (batched, exact optimum) | sklearn (per-episode reference)")
    pot_stop: Annotated[float, Field(ge=0, allow_inf_nan=False)] = Field(
        1e-9, description="solver=pot: ot.sinkhorn's stopThr (marginal error)")
    chunk: Annotated[StrictInt, Field(ge=0, le=10_000_000)] = Field(
        0, description="episodes per block of feature work; 0 = 16 on a CPU, all on a GPU")

    @classmethod
    def from_dict(cls, d: dict | None, where: str = "opta") -> "OpTAConfig":
        return validate_block(cls, d, where)


# ------------------------------------------------------------------------------------ helpers
def _raise_non_finite(ok: torch.Tensor, who: str, offset: int = 0) -> None:
    if not bool(ok.all()):
        i = offset + int((~ok).nonzero()[0])
        raise EpisodeError(who + ": non-finite feature values (NaN or inf) in episode {episode}; "
                           "the encoder produced them - lower the learning rate, check the "
                           "checkpoint or the input images", i)


def check_finite(support: torch.Tensor, query: torch.Tensor, who: str = "opta") -> None:
    """Raise :class:`EpisodeError` for the first episode whose features hold NaN or inf."""
    _raise_non_finite(torch.isfinite(support).flatten(1).all(1)
                      & torch.isfinite(query).flatten(1).all(1), who)


def standardize_(f: torch.Tensor) -> torch.Tensor:
    """In place: per-sample standardisation over the last (feature) dimension, ``(f - mean) /
    std`` with the unbiased std (as ``torch.std``; two-pass, no cancellation); a constant vector
    maps to 0. Returns whether each vector's statistics are finite (false exactly when it holds
    NaN/inf or values whose square overflows the dtype), shape ``f.shape[:-1]``."""
    d = f.shape[-1]
    mean = f.mean(-1, keepdim=True)
    f.sub_(mean)
    if d < 2:
        return torch.isfinite(mean).squeeze(-1)
    norm = torch.linalg.vector_norm(f, dim=-1, keepdim=True)  # sqrt(sum (f - mean)^2)
    finite = torch.isfinite(norm).squeeze(-1) & torch.isfinite(mean).squeeze(-1)
    f.mul_(norm.clamp_min_(torch.finfo(f.dtype).tiny).reciprocal_().mul_(math.sqrt(d - 1)))
    return finite


def standardize(f: torch.Tensor) -> torch.Tensor:
    """Out-of-place :func:`standardize_`."""
    out = f.clone()
    standardize_(out)
    return out


def _episode_shape(support_labels: torch.Tensor) -> tuple[int, int]:
    """(way, shot) of a batch of episodes with labels 0..way-1 and the same count per class."""
    lab = support_labels[0]
    way = int(lab.max()) + 1
    counts = torch.bincount(lab, minlength=way)
    if int(counts.min()) < 1 or int(counts.min()) != int(counts.max()):
        raise UserError(f"opta: every class needs the same number of support samples (got "
                        f"{counts.tolist()})")
    return way, int(counts[0])


def class_means(support: torch.Tensor, support_labels: torch.Tensor, way: int) -> torch.Tensor:
    """``(E, S, D)``, ``(E, S)`` -> ``(E, way, D)`` per-class means."""
    onehot = torch.nn.functional.one_hot(support_labels.long(), way).to(support.dtype)  # E,S,N
    return (onehot.transpose(1, 2) @ support) / onehot.sum(1).unsqueeze(-1)


def normalized_cost(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean cost ``(E, N, M)`` divided by its per-episode maximum."""
    xx = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_()
    yy = torch.linalg.vector_norm(y, dim=-1).square_().unsqueeze(1)
    c = torch.baddbmm(xx + yy, x, y.transpose(1, 2), alpha=-2.0).clamp_min_(0.0)
    return c / c.amax(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(c.dtype).tiny)


# ---------------------------------------------------------------------------- batched Sinkhorn
#: Above this 1/reg (for costs in [0, 1]) the kernel exp(-C/reg) may underflow: use log domain.
_MAX_SCALING_INV_REG = 100.0


@torch.no_grad()
def sinkhorn_batched(cost: torch.Tensor, reg: float, max_iter: int = 1000, stop: float = 1e-4,
                     a: torch.Tensor | None = None, b: torch.Tensor | None = None,
                     log_domain: bool | None = None):
    """Entropic OT for a batch of problems.

    ``cost``: ``(E, N, M)``; marginals ``a (E, N)``, ``b (E, M)`` (uniform by default). Solves
    ``min <P, C> - reg * H(P)`` s.t. ``P 1 = a``, ``P^T 1 = b`` - the problem ``ot.sinkhorn(a, b,
    C, reg)`` solves. Iteration (BECLR's ``Sinkhorn`` module, potentials ``f, g``):
    ``f <- reg (log a - LSE_j((g_j - C_ij) / reg))``, then ``g <- reg (log b - LSE_i((f_i - C_ij)
    / reg))``, from ``f = g = 0``; an episode stops once ``sum_i |f_i - f_i_prev| < stop`` or after
    ``max_iter`` iterations. Converged episodes leave the batch, so each episode does exactly the
    iterations it would do alone. The same iteration runs in the scaling domain (``u = exp(f/reg)``,
    matrix-vector products instead of log-sum-exps) unless ``cost.max() / reg`` is large enough
    for ``exp(-C/reg)`` to underflow (or ``log_domain=True``). Returns ``(plan (E, N, M),
    iterations (E,))``; the column marginals are exact, the row marginals within the tolerance.
    """
    e, n, m = cost.shape
    dev, dt = cost.device, cost.dtype
    log_a = torch.full((e, n), -math.log(n), dtype=dt, device=dev) if a is None else a.log()
    log_b = torch.full((e, m), -math.log(m), dtype=dt, device=dev) if b is None else b.log()
    if log_domain is None:
        log_domain = float(cost.max()) / reg > _MAX_SCALING_INV_REG if cost.numel() else True
    mc = -cost / reg
    if log_domain:
        mat, ra, rb = mc, log_a, log_b
        x, y = torch.zeros(e, n, dtype=dt, device=dev), torch.zeros(e, m, dtype=dt, device=dev)

        def step(k_, a_, b_, x_, y_):  # x, y: potentials f, g
            x_new = reg * (a_ - torch.logsumexp(k_ + (y_ / reg).unsqueeze(1), dim=2))
            y_new = reg * (b_ - torch.logsumexp(k_ + (x_new / reg).unsqueeze(2), dim=1))
            return x_new, y_new, (x_new - x_).abs().sum(1)
    else:  # scaling domain: x = exp(f / reg), y = exp(g / reg)
        mat, ra, rb = mc.exp(), log_a.exp(), log_b.exp()
        x, y = torch.ones(e, n, dtype=dt, device=dev), torch.ones(e, m, dtype=dt, device=dev)

        def step(k_, a_, b_, x_, y_):
            x_new = a_ / (k_ * y_.unsqueeze(1)).sum(2)
            y_new = b_ / (k_ * x_new.unsqueeze(2)).sum(1)
            return x_new, y_new, reg * (x_new.log() - x_.log()).abs().sum(1)
    iters = torch.zeros(e, dtype=torch.long, device=dev)
    out_x, out_y = x.clone(), y.clone()
    # Working set: the episodes still iterating, compacted whenever a quarter of it has stopped;
    # stopped episodes inside it are frozen (their values no longer change).
    idx = torch.arange(e, device=dev)
    k_w, a_w, b_w, x_w, y_w = mat, ra, rb, x, y
    run = torch.ones(e, dtype=torch.bool, device=dev)
    for _ in range(int(max_iter)):
        x_new, y_new, err = step(k_w, a_w, b_w, x_w, y_w)
        x_w = torch.where(run.unsqueeze(1), x_new, x_w)
        y_w = torch.where(run.unsqueeze(1), y_new, y_w)
        iters[idx[run]] += 1
        run = run & ~(err < stop)
        n_run = int(run.sum())
        if n_run == 0:
            break
        if n_run <= 0.75 * run.numel():
            out_x[idx], out_y[idx] = x_w, y_w
            idx, k_w, a_w, b_w = idx[run], k_w[run], a_w[run], b_w[run]
            x_w, y_w, run = x_w[run], y_w[run], run[run]
    out_x[idx], out_y[idx] = x_w, y_w
    if log_domain:
        plan = torch.exp(mc + (out_x / reg).unsqueeze(2) + (out_y / reg).unsqueeze(1))
    else:
        plan = out_x.unsqueeze(2) * mat * out_y.unsqueeze(1)
    return plan, iters


def _pot_plans(cost: torch.Tensor, cfg: "OpTAConfig") -> torch.Tensor:
    """Reference solver: one ``ot.sinkhorn`` call per episode (numpy, float64, POT's own
    stopping rule ``pot_stop`` on the marginal error)."""
    import ot

    c = cost.double().cpu().numpy()
    n, m = c.shape[1:]
    a, b = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
    out = np.stack([ot.sinkhorn(a, b, c[i], cfg.reg, numItermax=cfg.max_iter,
                                stopThr=cfg.pot_stop, warn=False) for i in range(len(c))])
    return torch.from_numpy(out).to(cost.device)


# ------------------------------------------------------------------------------------- OpTA
class OpTA:
    """The OpTA head: ``(support (E,S,D), support_labels (E,S), query (E,M,D)) -> (E,M,way)``.

    Feature work (standardisation, costs, barycentres) runs in blocks of ``chunk`` episodes so a
    block stays in cache on a CPU; the Sinkhorn iterations run on all episodes of the call at once.
    """

    def __init__(self, cfg: OpTAConfig | dict | None = None):
        self.cfg = cfg if isinstance(cfg, OpTAConfig) else OpTAConfig.from_dict(cfg)

    def passes(self, shot: int) -> int:
        return int(self.cfg.passes_1shot if shot == 1 else self.cfg.passes_kshot)

    def _dtype(self) -> torch.dtype:
        return torch.float32 if self.cfg.dtype == "float32" and self.cfg.solver == "torch" \
            else torch.float64

    def _chunks(self, e: int, device: torch.device) -> list[slice]:
        ch = int(self.cfg.chunk) if self.cfg.chunk else (16 if device.type == "cpu" else e)
        return [slice(i, min(e, i + ch)) for i in range(0, e, max(1, ch))]

    def _prep(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A standardised copy of a block ``(e, n, D)`` in the compute dtype, and per-episode
        finiteness."""
        y = x.to(self._dtype(), copy=True)
        if self.cfg.standardize:
            return y, standardize_(y).all(1)
        return y, torch.isfinite(y).flatten(1).all(1)

    @torch.no_grad()
    def prototypes(self, support: torch.Tensor, support_labels: torch.Tensor,
                   query: torch.Tensor) -> torch.Tensor:
        """Aligned prototypes ``(E, way, D)`` (compute dtype) after all OpTA passes and mixing."""
        if support.dim() != 3 or query.dim() != 3 or support_labels.dim() != 2:
            raise UserError(f"opta: expected support (E,S,D), labels (E,S), query (E,M,D); got "
                            f"{tuple(support.shape)}, {tuple(support_labels.shape)}, "
                            f"{tuple(query.shape)}")
        way, shot = _episode_shape(support_labels)
        e, m, d = query.shape
        n_pass = self.passes(shot)
        chunks = self._chunks(e, query.device)
        dt = self._dtype()
        p0 = torch.empty(e, way, d, dtype=dt, device=query.device)
        cost = torch.empty(e, way, m, dtype=dt, device=query.device) if n_pass else None
        for c in chunks:
            s_c, ok_s = self._prep(support[c])
            q_c, ok_q = self._prep(query[c])
            _raise_non_finite(ok_s & ok_q, "opta", offset=c.start)
            p0[c] = class_means(s_c, support_labels[c], way)
            if n_pass:
                cost[c] = normalized_cost(p0[c], q_c)
        p = p0
        for t in range(n_pass):
            if self.cfg.solver == "pot":
                plan = _pot_plans(cost, self.cfg)
            else:
                plan, _ = sinkhorn_batched(cost.double(), self.cfg.reg, self.cfg.max_iter,
                                           self.cfg.stop)
            w = (plan / plan.sum(-1, keepdim=True)).to(dt)
            p_new = torch.empty_like(p0)
            last = t == n_pass - 1
            for c in chunks:
                q_c, _ = self._prep(query[c])
                p_new[c] = w[c] @ q_c
                if not last:
                    cost[c] = normalized_cost(p_new[c], q_c)
            p = p_new
        if shot > 1 and n_pass > 0:
            p = self.cfg.ratio * p + (1.0 - self.cfg.ratio) * p0
        return p

    @torch.no_grad()
    def __call__(self, support: torch.Tensor, support_labels: torch.Tensor,
                 query: torch.Tensor) -> torch.Tensor:
        p = self.prototypes(support, support_labels, query)
        batched = self.cfg.classifier == "logreg" and self.cfg.lr_solver == "torch" \
            and p.shape[1] >= 3
        out, qs = [], []
        for c in self._chunks(len(query), query.device):
            q_c, _ = self._prep(query[c])
            if self.cfg.classifier == "euclidean":
                out.append(-torch.cdist(q_c, p[c]).pow(2))
            elif batched:
                qs.append(q_c)  # one Newton solve for every episode of the call, below
            else:  # scikit-learn, one episode at a time (two classes: a binary model)
                out.append(torch.from_numpy(logreg_logits(
                    p[c].cpu().double().numpy(), q_c.cpu().double().numpy(), self.cfg.lr_C,
                    self.cfg.lr_max_iter)))
        if batched:
            out = [logreg_logits_batched(p.double(), torch.cat(qs).double(), self.cfg.lr_C)]
        return torch.cat(out).to(device=support.device, dtype=torch.float32)


def logreg_logits(protos: np.ndarray, query: np.ndarray, C: float = 1.0,
                  max_iter: int = 1000) -> np.ndarray:
    """Per episode: scikit-learn ``LogisticRegression(C, lbfgs)`` fitted on the ``way`` prototypes
    (label i for prototype i); returns ``decision_function(query)`` as ``(E, M, way)``."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    e, way, _ = protos.shape
    y = np.arange(way)
    out = np.empty((e, query.shape[1], way), dtype=np.float64)
    # One thread: BLAS threads on 5x512 problems cost ~10x more than they save.
    with threadpool_limits(1):
        for i in range(e):
            clf = LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter, random_state=0)
            clf.fit(protos[i], y)
            d = clf.decision_function(query[i])
            if d.ndim == 1:  # two classes: sklearn scores class 1 only
                d = np.stack([np.zeros_like(d), d], axis=1)
            out[i] = d
    return out


def logreg_logits_batched(protos: torch.Tensor, query: torch.Tensor, C: float = 1.0,
                          tol: float = 1e-10, max_iter: int = 100) -> torch.Tensor:
    """All episodes' logistic regressions at once: the minimiser of scikit-learn's multinomial
    objective ``C * sum_i CE(W x_i + b, i) + ||W||^2 / 2`` (intercept not penalised) on the
    ``way`` prototypes of each episode, then ``query @ W.T + b`` as ``(E, M, way)``.

    With one sample per class and an L2 penalty the optimal ``W`` lies in the span of the
    prototypes (representer theorem): ``W = A X`` with ``A`` of shape ``(way, way)``. Each episode is
    then a problem of ``way * (way + 1)`` parameters over the Gram matrix ``G = X X^T``, solved by
    Newton's method with backtracking (float64) to a gradient norm below ``tol``: the exact
    optimum (it stops once the Newton decrement reaches rounding level, within about 10
    iterations), where scikit-learn's lbfgs stops at its own tolerance (``benchmarks/bench_opta.py``
    prints how often the predictions agree). Needs ``way >= 3`` (scikit-learn fits a binary model
    for two classes; :class:`OpTA` uses scikit-learn there)."""
    x = protos.double()
    e, k, _ = x.shape
    gram = x @ x.transpose(1, 2)  # (E, K, K): samples i = classes
    phi = torch.cat([gram, torch.ones(e, 1, k, dtype=x.dtype, device=x.device)], 1)  # (E, K+1, K)
    gpad = torch.zeros(e, k + 1, k + 1, dtype=x.dtype, device=x.device)
    gpad[:, :k, :k] = gram
    eye = torch.eye(k, dtype=x.dtype, device=x.device)
    theta = torch.zeros(e, k, k + 1, dtype=x.dtype, device=x.device)  # [A | b]

    def objective(th):
        z = th @ phi  # (E, K classes, K samples): logits of sample i in column i
        ce = torch.logsumexp(z, 1) - torch.diagonal(z, dim1=1, dim2=2)
        a = th[:, :, :k]
        return C * ce.sum(1) + 0.5 * torch.einsum("eka,eab,ekb->e", a, gram, a), z

    n = k * (k + 1)
    ridge = 1e-12 * torch.eye(n, dtype=x.dtype, device=x.device)
    f, z = objective(theta)
    done = torch.zeros(e, dtype=torch.bool, device=x.device)
    for _ in range(max_iter):
        p = torch.softmax(z, 1)  # (E, K, K)
        grad = C * (p - eye) @ phi.transpose(1, 2) + torch.cat(
            [theta[:, :, :k] @ gram, torch.zeros(e, k, 1, dtype=x.dtype, device=x.device)], 2)
        gnorm = grad.flatten(1).norm(dim=1)
        # Hessian: sum_i kron(diag(p_i) - p_i p_i^T, phi_i phi_i^T) + kron(I, Gpad), built as a
        # block diagonal (one (K+1)^2 block per class) minus the Gram matrix of v_i = p_i (x) phi_i.
        pi = p.transpose(1, 2)  # (E, samples, classes)
        ph = phi.transpose(1, 2)  # (E, samples, K+1)
        blocks = C * torch.einsum("eik,eia,eib->ekab", pi, ph, ph) + gpad[:, None]
        hess = torch.zeros(e, k, k + 1, k, k + 1, dtype=x.dtype, device=x.device)
        ar = torch.arange(k, device=x.device)
        hess[:, ar, :, ar, :] = blocks.transpose(0, 1)
        v = (pi.unsqueeze(-1) * ph.unsqueeze(-2)).reshape(e, k, n)
        hess = hess.reshape(e, n, n) - C * (v.transpose(1, 2) @ v)
        # Flat directions (the intercepts' common shift; a singular Gram) get a tiny ridge.
        step = torch.linalg.solve(hess + ridge * hess.diagonal(dim1=1, dim2=2).amax(1)[:, None,
                                                                                       None],
                                  grad.reshape(e, n, 1)).reshape(e, k, k + 1)
        # Converged: gradient small, or the Newton decrement g.H^-1.g at rounding level.
        decrement = (grad * step).flatten(1).sum(1)
        done = done | (gnorm < tol) | (decrement <= 1e-15 * (1.0 + f.abs()))
        if bool(done.all()):
            break
        t = torch.ones(e, dtype=x.dtype, device=x.device)
        for _ls in range(30):  # backtracking (Armijo) per episode
            cand = theta - t[:, None, None] * step
            f_new, z_new = objective(cand)
            ok = (f_new <= f - 1e-4 * t * decrement) | done
            if bool(ok.all()):
                break
            t = torch.where(ok, t, t * 0.5)
        keep = (~done)[:, None, None]
        theta = torch.where(keep, cand, theta)
        f = torch.where(~done, f_new, f)
        z = torch.where(keep, z_new, z)
    a, b = theta[:, :, :k], theta[:, :, k]
    w = a @ x  # (E, K, D)
    return query.double() @ w.transpose(1, 2) + b[:, None, :]


@register_head("opta")
def make_opta(config: dict) -> OpTA:
    """``--set head=opta``: OpTA configured from the run's ``opta`` block (defaults otherwise)."""
    return OpTA(OpTAConfig.from_dict((config or {}).get("opta"), "opta"))

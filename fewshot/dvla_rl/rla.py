"""DVLA-RL RL-gated attention (RLA, paper §3.2): the two attention paths, the gate policies and the
REINFORCE objective.

For stage tokens ``H_img (B, M, C)`` and text tokens ``H_text (B, P, d_t)`` (projected to ``C`` by
``t2i``, bias-free as in the released checkpoint's ``t2i``/``t2i2``)::

    cross = Attn(W_q H_text, W_k  H_img,  W_v  H_img)     image-guided path (Eq. 5)
    self  = Attn(W_q H_text, W'_k H_text, W'_v H_text)    text-guided path (Eq. 6)
    H     = alpha * cross + (1 - alpha) * self            (P tokens, appended to the stage)

``W_q`` is shared by both paths, as the equations write it; multi-head scaled dot-product
attention with ``heads`` heads and no output projection (the paper names none).

Policies (one alpha per image and stage; state ``s = [GAP(H_img) || GAP(t2i H_text) || cos]``,
the cosine between the two pooled vectors; the state is detached, so the RL loss trains only the
policy network):

* ``beta`` (the paper, default): ``p = eps + (1 - 2 eps) sigmoid(MLP(s))``,
  ``alpha ~ Beta(kappa p, kappa (1 - p))``, ``kappa = 10``; evaluation uses the mean ``p``.
* ``categorical`` (how the authors' DVLA-RL++ code describes the released DVLA-RL gate): three
  actions with alpha in {1.0 (visual), 0.0 (text), 0.5 (fusion)}, logits ``MLP(s)`` plus a fixed
  bias from the cosine (cos > 0.5: [0, 0.5, 1]; 0 < cos <= 0.5: [0, 1, 0]; else [1, 0, 0]);
  evaluation uses the expected alpha. In that code the network is a linear map of the pooled
  image map only; here it reads the same state as the Beta policy.

REINFORCE (Eq. 9-10): ``L_RL = -mean((R - b) log pi(alpha | s)) - tau * mean(H(pi))`` with ``b`` an
exponential moving average of the rewards (per stage, momentum ``baseline_momentum``).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

CATEGORICAL_ALPHAS = (1.0, 0.0, 0.5)


def beta_log_prob(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log Beta(x | a, b), written out."""
    return ((a - 1) * torch.log(x) + (b - 1) * torch.log1p(-x)
            - (torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)))


def beta_entropy(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Differential entropy of Beta(a, b), written out."""
    lbeta = torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)
    return (lbeta - (a - 1) * torch.digamma(a) - (b - 1) * torch.digamma(b)
            + (a + b - 2) * torch.digamma(a + b))


class GatePolicy(nn.Module):
    """``alpha`` from the state ``[GAP(img) || GAP(text) || cos]`` (``kind``: beta | categorical)."""

    def __init__(self, dim: int, kind: str = "beta", hidden: int = 64, kappa: float = 10.0,
                 eps: float = 0.01):
        super().__init__()
        if kind not in ("beta", "categorical"):
            raise ValueError(kind)
        self.kind, self.kappa, self.eps = kind, float(kappa), float(eps)
        out = 1 if kind == "beta" else 3
        self.net = nn.Sequential(nn.Linear(2 * dim + 1, hidden), nn.Tanh(), nn.Linear(hidden, out))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)  # beta: initial p = 0.5
        self.register_buffer("alphas", torch.tensor(CATEGORICAL_ALPHAS))

    @staticmethod
    def state(img: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """``img (B, M, C)``, ``text (B, P, C)`` -> ``(B, 2C + 1)`` (detached)."""
        gi, gt = img.detach().mean(1), text.detach().mean(1)
        return torch.cat([gi, gt, F.cosine_similarity(gi, gt, dim=-1).unsqueeze(-1)], -1)

    # --- beta
    def p(self, s: torch.Tensor) -> torch.Tensor:
        return self.eps + (1 - 2 * self.eps) * torch.sigmoid(self.net(s).squeeze(-1))

    def beta_params(self, s):
        p = self.p(s)
        return self.kappa * p, self.kappa * (1 - p)

    # --- categorical
    def logits(self, s: torch.Tensor) -> torch.Tensor:
        cos = s[:, -1]
        bias = torch.zeros(len(s), 3, device=s.device, dtype=s.dtype)
        bias[cos > 0.5] = bias.new_tensor([0.0, 0.5, 1.0])
        bias[(cos > 0) & (cos <= 0.5)] = bias.new_tensor([0.0, 1.0, 0.0])
        bias[cos <= 0] = bias.new_tensor([1.0, 0.0, 0.0])
        return self.net(s) + bias

    def mean(self, s: torch.Tensor) -> torch.Tensor:
        """The deterministic alpha used at evaluation: the policy's mean."""
        if self.kind == "beta":
            return self.p(s)
        return self.logits(s).softmax(-1) @ self.alphas

    def act(self, s: torch.Tensor):
        """Sample: ``(alpha, log_prob, entropy)``; alpha carries no gradient."""
        if self.kind == "beta":
            a, b = self.beta_params(s)
            with torch.no_grad():
                x = torch.distributions.Beta(a, b).sample().clamp(1e-4, 1 - 1e-4)
            return x, beta_log_prob(x, a, b), beta_entropy(a, b)
        logp_all = self.logits(s).log_softmax(-1)
        with torch.no_grad():
            idx = torch.multinomial(logp_all.exp(), 1).squeeze(-1)
        logp = logp_all.gather(1, idx[:, None]).squeeze(1)
        ent = -(logp_all.exp() * logp_all).sum(-1)
        return self.alphas[idx], logp, ent


def _attention(q, k, v, heads: int):
    b, p, c = q.shape
    hd = c // heads
    q = q.view(b, p, heads, hd).transpose(1, 2)
    k = k.view(b, k.shape[1], heads, hd).transpose(1, 2)
    v = v.view(b, v.shape[1], heads, hd).transpose(1, 2)
    out = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), -1) @ v
    return out.transpose(1, 2).reshape(b, p, c)


class RLAttention(nn.Module):
    """The two RLA paths at one stage and their gated fusion (Eq. 5-7)."""

    def __init__(self, dim: int, text_dim: int, heads: int = 1):
        super().__init__()
        if dim % heads:
            raise ValueError(f"stage width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.t2i = nn.Linear(text_dim, dim, bias=False)
        self.w_q = nn.Linear(dim, dim, bias=False)
        self.w_k = nn.Linear(dim, dim, bias=False)
        self.w_v = nn.Linear(dim, dim, bias=False)
        self.w_k_text = nn.Linear(dim, dim, bias=False)
        self.w_v_text = nn.Linear(dim, dim, bias=False)

    def text(self, text: torch.Tensor) -> torch.Tensor:
        return self.t2i(text)

    def paths(self, img: torch.Tensor, text_c: torch.Tensor):
        """``img (B, M, C)``, projected text ``(B, P, C)`` -> (cross, self), each ``(B, P, C)``."""
        q = self.w_q(text_c)
        cross = _attention(q, self.w_k(img), self.w_v(img), self.heads)
        own = _attention(q, self.w_k_text(text_c), self.w_v_text(text_c), self.heads)
        return cross, own

    @staticmethod
    def fuse(cross, own, alpha: torch.Tensor):
        a = alpha.view(-1, 1, 1).to(cross.dtype)
        return a * cross + (1 - a) * own


class Reinforce:
    """REINFORCE with an EMA baseline and an entropy bonus; state saved in checkpoints."""

    def __init__(self, momentum: float = 0.9, tau: float = 0.2):
        self.momentum, self.tau = float(momentum), float(tau)
        self.baseline: float | None = None

    def loss(self, reward: torch.Tensor, log_prob: torch.Tensor,
             entropy: torch.Tensor) -> torch.Tensor:
        r = reward.detach()
        b = float(r.mean()) if self.baseline is None else self.baseline
        loss = -((r - b) * log_prob).mean() - self.tau * entropy.mean()
        m = self.momentum
        self.baseline = float(r.mean()) if self.baseline is None else \
            m * self.baseline + (1 - m) * float(r.mean())
        return loss

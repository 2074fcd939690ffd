"""DyCE, the dynamic clustered memory of BECLR (§3.2 of the paper, ``DyCE`` in the released
code); the paper-vs-code points P1/P2 are in the package docstring."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from fsbench.context import progress_bar
from fsbench.errors import UserError


def memory_size(memory_scale: int, num_clusters: int, batch_size: int) -> int:
    """The released code's memory size for ``2 * batch_size`` embeddings per iteration."""
    two_b = 2 * int(batch_size)
    return (int(memory_scale) * int(num_clusters) // two_b + 1) * two_b + 1


#: float32 exp overflows above this argument (the released code computes in float32).
_F32_EXP_MAX = math.log(torch.finfo(torch.float32).max)


def effective_epsilon(epsilon: float, max_cost: float) -> float:
    """The released ``distributed_sinkhorn`` retries with ``epsilon + 0.1`` while ``exp(cost /
    epsilon)`` is not finite in float32 (e.g. 1e-5 -> 0.10001 for costs up to 2)."""
    eps = float(epsilon)
    while max_cost / eps > _F32_EXP_MAX:
        eps += 0.1
    return eps


def equipartition_assign(z: torch.Tensor, prototypes: torch.Tensor, epsilon: float,
                         iterations: int, variant: str = "official") -> torch.Tensor:
    """Partition labels ``(n,)`` for embeddings ``z`` by a ``iterations``-step Sinkhorn between the
    batch (mass 1/n each) and the prototypes (1/P each) with ``ot.sinkhorn``.

    Cost: Euclidean distance of L2-normalised vectors. ``official`` (P1): the transport kernel is
    ``exp(+d / eps)`` (``ot.sinkhorn`` on ``-d``), ``paper``: ``exp(-d / eps)``. The iterations
    (prototype marginals, then sample marginals, ``stopThr=0``) are SwAV's ``distributed_sinkhorn``
    up to a constant factor; the label is the argmax of each sample's row."""
    import ot

    zn = F.normalize(z.detach().double(), dim=1)
    pn = F.normalize(prototypes.detach().double(), dim=1)
    d = torch.cdist(zn, pn)
    eps = effective_epsilon(epsilon, float(d.max()))
    cost = -d if variant == "official" else d
    n, p = d.shape
    a = torch.full((n,), 1.0 / n, dtype=d.dtype, device=d.device)
    b = torch.full((p,), 1.0 / p, dtype=d.dtype, device=d.device)
    plan = ot.sinkhorn(a, b, cost, eps, numItermax=int(iterations), stopThr=0.0, warn=False)
    return plan.argmax(1)


class DyCE:
    """Dynamic Clustered mEmory: a FIFO memory of embeddings partitioned into ``num_clusters``
    equipartitioned clusters; enhances a batch with nearest neighbours from its partition.

    Call :meth:`step` once per iteration with the batch's ``2B`` embeddings (view 1 then view 2).
    Not an ``nn.Module``: the memory is training state, not part of the model checkpoint.
    """

    def __init__(self, size: int, dim: int, num_clusters: int, topk: int, *,
                 memory_start_epoch: int = 0, cluster_freq: int = 60, recluster: bool = True,
                 epsilon: float = 0.05, sinkhorn_iterations: int = 10,
                 prototype_momentum: float = 0.0, kmeans_n_init: int = 10,
                 variant: str = "official", seed: int = 0, device="cpu", name: str = "dyce"):
        if variant not in ("official", "paper"):
            raise UserError(f"dyce.variant: {variant!r} is not one of official, paper")
        if int(num_clusters) < 2:
            raise UserError(f"dyce.num_clusters must be >= 2, got {num_clusters}")
        if int(topk) < 1:
            raise UserError(f"dyce.topk must be >= 1, got {topk}")
        if int(topk) > int(size):
            raise UserError(f"dyce.topk={topk} is larger than the memory ({size} embeddings); "
                            f"lower topk or raise dyce.memory_scale")
        if int(num_clusters) > int(size):
            raise UserError(f"dyce.num_clusters={num_clusters} is larger than the memory ({size} "
                            f"embeddings); lower num_clusters or raise dyce.memory_scale")
        self.size, self.dim, self.num_clusters, self.topk = int(size), int(dim), \
            int(num_clusters), int(topk)
        self.memory_start_epoch, self.cluster_freq = int(memory_start_epoch), int(cluster_freq)
        self.recluster, self.epsilon = bool(recluster), float(epsilon)
        self.sinkhorn_iterations = int(sinkhorn_iterations)
        self.prototype_momentum, self.kmeans_n_init = float(prototype_momentum), int(kmeans_n_init)
        self.variant, self.seed, self.name = variant, int(seed), name
        self.device = torch.device(device)
        self.bank = torch.zeros(self.size, self.dim, device=self.device)
        self.labels = torch.full((self.size,), -1, dtype=torch.long, device=self.device)
        self.prototypes = torch.zeros(self.num_clusters, self.dim, device=self.device)
        self.ptr = 0  # next slot to write
        self.count = 0  # slots filled so far (<= size)
        self.initialized = False  # partitions exist (after the first k-means)
        self.last_cluster_epoch = -1
        self.n_clusterings = 0

    # -- memory ----------------------------------------------------------------------------
    @property
    def full(self) -> bool:
        return self.count >= self.size

    def ordered(self) -> torch.Tensor:
        """The stored embeddings, oldest first."""
        if not self.full:
            return self.bank[:self.count]
        return torch.cat([self.bank[self.ptr:], self.bank[:self.ptr]])

    @torch.no_grad()
    def enqueue(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Write ``z`` at the head of the ring buffer (overwriting the oldest entries)."""
        n = z.shape[0]
        if n > self.size:
            raise UserError(f"{self.name}: a batch of {n} embeddings does not fit the memory of "
                            f"{self.size}; raise dyce.memory_scale (or dyce.memory_size)")
        idx = (self.ptr + torch.arange(n, device=self.device)) % self.size
        self.bank[idx] = z.detach().to(self.bank.dtype)
        self.labels[idx] = -1 if labels is None else labels.to(self.labels.device)
        self.ptr = (self.ptr + n) % self.size
        self.count = min(self.size, self.count + n)

    # -- partitions --------------------------------------------------------------------------
    @torch.no_grad()
    def cluster(self) -> bool:
        """k-means of the normalised memory into ``num_clusters`` partitions. A re-clustering
        that leaves a partition empty is discarded (as in the released code). Returns whether the
        partitions changed."""
        from sklearn.cluster import KMeans

        x = F.normalize(self.bank[:self.count].float(), dim=1).cpu().numpy()
        km = KMeans(n_clusters=self.num_clusters, n_init=self.kmeans_n_init,
                    random_state=self.seed + self.n_clusterings)
        with progress_bar(total=1, desc=f"{self.name} k-means ({self.count} embeddings)") as bar:
            labels = km.fit_predict(x)
            bar.update()
        self.n_clusterings += 1
        if self.initialized and len(np.unique(labels)) < self.num_clusters:
            return False
        self.prototypes = torch.from_numpy(km.cluster_centers_).float().to(self.device)
        self.labels[:self.count] = torch.from_numpy(labels).long().to(self.device)
        self.initialized = True
        return True

    def counts(self) -> torch.Tensor:
        lab = self.labels[:self.count]
        return torch.bincount(lab[lab >= 0], minlength=self.num_clusters)

    @torch.no_grad()
    def assign(self, z: torch.Tensor) -> torch.Tensor:
        return equipartition_assign(z, self.prototypes, self.epsilon, self.sinkhorn_iterations,
                                    self.variant).to(self.device)

    @torch.no_grad()
    def update_prototypes(self) -> None:
        """Per-partition means of the memory; empty partitions keep their prototype."""
        lab = self.labels[:self.count]
        bank = self.bank[:self.count]
        ok = lab >= 0
        sums = torch.zeros_like(self.prototypes).index_add_(0, lab[ok], bank[ok])
        cnt = torch.bincount(lab[ok], minlength=self.num_clusters).to(sums.dtype)
        new = torch.where(cnt.unsqueeze(1) > 0, sums / cnt.clamp_min(1).unsqueeze(1),
                          self.prototypes)
        m = self.prototype_momentum
        self.prototypes = new if m == 0 else m * self.prototypes + (1 - m) * new

    # -- neighbours --------------------------------------------------------------------------
    @torch.no_grad()
    def neighbours(self, z: torch.Tensor) -> torch.Tensor | None:
        """``(n, topk)`` memory indices: each row's top-k cosine neighbours inside its nearest
        partition, or in the whole memory when that partition has <= topk members (or before
        the first clustering). None while the memory holds fewer than topk embeddings."""
        k = self.topk
        if self.count < k:
            return None
        zn = F.normalize(z.detach().float(), dim=1)
        bank = F.normalize(self.bank[:self.count].float(), dim=1)
        sim = zn @ bank.T  # (n, count)
        whole = sim.topk(k, dim=1).indices
        if not self.initialized:
            return whole
        nearest = (zn @ F.normalize(self.prototypes.float(), dim=1).T).argmax(1)  # (n,)
        lab = self.labels[:self.count]
        member = lab.unsqueeze(0) == nearest.unsqueeze(1)
        inside = sim.masked_fill(~member, float("-inf")).topk(k, dim=1).indices
        small = self.counts()[nearest] <= k
        return torch.where(small.unsqueeze(1), whole, inside)

    # -- one training iteration --------------------------------------------------------------
    def step(self, z: torch.Tensor, epoch: int) -> tuple[torch.Tensor, int]:
        """Update the memory with the batch ``z`` (``2B`` rows: view 1 then view 2) and return
        ``(enhanced batch, k)``: ``z`` itself and ``k = 0`` before ``memory_start_epoch``, else
        ``2B (1 + k)`` rows ordered per view as ``[Z; NN_1(Z); ...; NN_k(Z)]``."""
        zd = z.detach()
        if self.initialized:
            if self.recluster and self.cluster_freq > 0 and epoch % self.cluster_freq == 0 \
                    and epoch != self.last_cluster_epoch:
                self.cluster()
                self.last_cluster_epoch = epoch
            elif int((self.counts() > 0).sum()) <= 1:  # collapsed to one partition
                self.cluster()
                self.last_cluster_epoch = epoch
        elif self.full:
            self.cluster()
            self.last_cluster_epoch = epoch
        enhance = epoch >= self.memory_start_epoch
        nn_idx = self.neighbours(zd) if enhance and self.variant == "paper" else None
        labels = self.assign(zd) if self.initialized else None
        self.enqueue(zd, labels)
        if self.initialized:
            self.update_prototypes()
        if enhance and self.variant == "official":
            nn_idx = self.neighbours(zd)
        if nn_idx is None:
            return z, 0
        nb = self.bank[nn_idx].to(z.dtype)  # (2B, k, D), detached memory entries
        half = z.shape[0] // 2
        parts = []
        for v in range(2):
            rows = slice(v * half, (v + 1) * half)
            parts.append(z[rows])
            parts.extend(nb[rows, j] for j in range(self.topk))
        return torch.cat(parts), self.topk

    # -- state -------------------------------------------------------------------------------
    _STATE = ("bank", "labels", "prototypes", "ptr", "count", "initialized",
              "last_cluster_epoch", "n_clusterings")

    def state_dict(self) -> dict:
        """The memory and its partitions (for the per-epoch checkpoint of a pretraining run)."""
        return {k: getattr(self, k) for k in self._STATE} | {"size": self.size, "dim": self.dim,
                                                             "num_clusters": self.num_clusters}

    def load_state_dict(self, state: dict) -> None:
        for k in ("size", "dim", "num_clusters"):
            if int(state[k]) != getattr(self, k):
                raise ValueError(f"{self.name}: {k} {state[k]} != {getattr(self, k)}")
        for k in self._STATE:
            v = state[k]
            setattr(self, k, v.to(self.device) if torch.is_tensor(v) else v)

    def to(self, device) -> "DyCE":
        self.device = torch.device(device)
        self.bank, self.labels = self.bank.to(device), self.labels.to(device)
        self.prototypes = self.prototypes.to(device)
        return self

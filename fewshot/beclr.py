"""``beclr`` - BECLR: Batch Enhanced Contrastive few-shot Learning (Poulakakis-Daktylidis &
Jamali-Rad, ICLR 2024): unsupervised pretraining with a dynamic clustered memory (DyCE), then
transductive OpTA inference (:mod:`fsbench.fewshot.opta`, ``head: opta`` in the presets).

Pretraining never reads a label.

* **Networks.** Student = encoder + projector (3 x [Linear -> BN -> ReLU], no ReLU after the last,
  width ``proj_dim`` = 512) + predictor (Linear 512 -> 128 -> BN -> ReLU -> Linear 128 -> 512).
  Teacher = encoder + projector, an EMA of the student, ``m`` cosine-scheduled per iteration from
  ``train.teacher_momentum`` (0.995) to 1. Encoders: ``backbone.name`` from
  :mod:`fsbench.baselines.backbones`, or ``resnet50`` (torchvision, 2048-d; here).
* **Views.** Two views per image, each the run's train pipeline (``transforms.train``) drawn
  independently. With ``mask.enabled`` (ImageNet-derived sets) the *student* input gets iBOT/BEiT
  block masking of ``patch`` x ``patch`` pixel patches (ratio ~ U(ratio - var, ratio + var), blocks
  of aspect ratio in [0.3, 1/0.3]) - masked patches are zeroed after normalisation; the teacher
  sees unmasked views.
* **Loss** (per (enhanced) batch of ``b`` rows per view)::

      L_pos = -1/2 [cos(p^a, sg z_t^b) + cos(p^b, sg z_t^a)]           (mean over rows)
      L_neg = log mean_i [ sum_{j not in G(i)} exp(cos(z_s,i, z_s,j) / T) / (2b - |G(i)|) ]
      L = L_pos + lamb_neg * L_neg,        T = 2.0, lamb_neg = 0.1

  with the student projections of both views in ``L_neg`` and ``G(i)`` = the row itself and the
  same row of the other view (the released code's mask).
* **DyCE** (:class:`DyCE`, one memory each for teacher projections, student predictions and
  student projections): FIFO memory of ``size = (memory_scale * num_clusters // 2B + 1) * 2B + 1``
  embeddings (8,193 for miniImageNet RN-18); once full, k-means (sklearn, ``kmeans_n_init`` = 10)
  of the L2-normalised memory into ``num_clusters`` partitions; then every iteration the batch is
  assigned to partitions by an equipartition transport (``ot.sinkhorn``, ``sinkhorn_iterations`` =
  10, between the batch (mass 1/2B each) and the prototypes (1/P each), cost = Euclidean distance
  of L2-normalised vectors), enqueued (oldest out) with those labels, and the prototypes become
  the per-partition means of the memory (empty partitions keep theirs); re-clustering every
  ``cluster_freq`` epochs. From ``memory_start_epoch`` on, each batch embedding is joined by its
  ``topk`` nearest memory embeddings (cosine) inside its nearest partition (the whole memory when
  that partition has <= topk members): the batch grows to ``B (1 + topk)`` rows per view, ordered
  ``[Z; NN_1(Z); ...; NN_k(Z)]``, and the loss runs on it.

Paper vs released code (``dyce.variant``; default ``official`` reproduces the code):

* **P1** - the released code feeds the *distance* matrix to a Sinkhorn that computes
  ``exp(+input / eps)``, so larger distance -> more mass: embeddings are equipartitioned towards
  *far* prototypes. ``official`` keeps this; ``paper`` uses ``exp(-distance / eps)`` (SwAV's sign:
  near prototypes).
* **P2** - the neighbours come from the (detached) memory, so they get no gradient, and in
  ``L_neg`` the mask removes only ``(i, i +- b)``: a sample's own memory neighbours count as its
  *negatives*. ``official`` keeps this; ``paper`` treats them as positives of their anchor, i.e.
  removes every row of the same image (original and neighbours, both views) from its negatives.
* ``paper`` also searches neighbours in the memory *before* the current batch is enqueued (the
  released code searches after, so an embedding can meet its own detached copy).
* Both variants: the configs' ``epsilon`` 1e-5 overflows ``exp(d / eps)`` in float32, and the
  released code then adds 0.1 until it does not - the effective epsilon is 0.10001. The same rule
  is applied here (:func:`effective_epsilon`), so ``dyce.epsilon`` means what it means there.
* The released memory (lightly's ``MemoryBankModule``) drops the part of a batch that does not fit
  before the end of the buffer and starts with random vectors; here it is a true ring buffer that
  starts empty (clustering happens once it is full) - the "+1" of the size formula is kept.
* The released neighbour fallback uses ``<= topk`` for the first view and ``< topk`` for the
  second; here ``<= topk`` for both.
* Weight decay: the released loop decays biases and 1-D (norm) parameters too when the backbone
  is a ResNet (it overwrites both parameter groups' decay); ``train.decay_all_params: true`` in
  the ResNet presets reproduces that, false (glyphs, default) exempts them as its non-ResNet
  branch does.

Presets: ``presets/beclr/<dataset>.yaml`` (paper values, methods.md §1.5) and ``glyphs`` (conv4,
CPU-sized). Precision follows the official configs: ``train.amp: true`` (every preset) trains in
fp16 autocast with a GradScaler on CUDA; on a CPU training stays fp32 whatever the key says.
``train.amp: false`` forces fp32 on CUDA too. No distributed training.
"""
from __future__ import annotations

import copy
import math
import random

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from fsbench.baselines.backbones import ResNet50, build_backbone
from fsbench.context import progress_bar
from fsbench.errors import UserError
from fsbench.learner import DataInfo, FSLLearner
from fsbench.registry import register_method

from .opta import OpTA, OpTAConfig

__all__ = ["BECLR", "Trainer", "DyCE", "BECLRLoss", "memory_size", "effective_epsilon",
           "block_mask", "apply_patch_mask", "build_encoder", "Projector", "Predictor"]


# ------------------------------------------------------------------------------------ networks
def build_encoder(cfg: dict, in_channels: int) -> nn.Module:
    cfg = dict(cfg or {})
    if cfg.get("name") == "resnet50":
        if cfg.get("weights"):
            raise UserError("backbone.weights: BECLR pretrains from scratch; resnet50 takes no "
                            "weights file here")
        opts = {k: v for k, v in cfg.items() if k not in ("name", "weights")}
        try:
            return ResNet50(in_channels, **opts)
        except TypeError as e:
            raise UserError(f"backbone: bad option for resnet50: {e}") from e
    return build_backbone(cfg, in_channels)


class Projector(nn.Sequential):
    """3 x [Linear -> BN -> ReLU], without the last ReLU."""

    def __init__(self, dim_in: int, dim: int = 512):
        super().__init__(nn.Linear(dim_in, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
                         nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
                         nn.Linear(dim, dim), nn.BatchNorm1d(dim))


class Predictor(nn.Sequential):
    """Linear dim -> dim/4 -> BN -> ReLU -> Linear dim/4 -> dim (student only)."""

    def __init__(self, dim: int = 512):
        super().__init__(nn.Linear(dim, dim // 4), nn.BatchNorm1d(dim // 4), nn.ReLU(inplace=True),
                         nn.Linear(dim // 4, dim))


class Branch(nn.Module):
    def __init__(self, encoder: nn.Module, dim: int, predictor: bool):
        super().__init__()
        self.encoder = encoder
        self.projector = Projector(encoder.out_dim, dim)
        self.predictor = Predictor(dim) if predictor else None

    def forward(self, x):
        z = self.projector(self.encoder(x))
        return (self.predictor(z), z) if self.predictor is not None else z


# ------------------------------------------------------------------------------------- masking
def block_mask(grid_h: int, grid_w: int, ratio: float, rng: random.Random,
               aspect=(0.3, 1 / 0.3), tries: int = 10) -> np.ndarray:
    """A BEiT-style block mask over a ``grid_h x grid_w`` patch grid covering about ``ratio`` of it.

    Rectangles of random area (at least ``(min(grid)//3)^2`` patches) and log-uniform aspect ratio
    are added while they bring new patches within the remaining budget; stops when the budget is
    reached or ``tries`` draws in a row add nothing."""
    mask = np.zeros((grid_h, grid_w), dtype=bool)
    budget_total = ratio * grid_h * grid_w
    lo_area = (min(grid_h, grid_w) // 3) ** 2
    log_lo, log_hi = math.log(aspect[0]), math.log(aspect[1])
    covered = 0
    while covered < budget_total:
        budget = budget_total - covered
        added = 0
        for _ in range(tries):
            area = rng.uniform(lo_area, budget)
            ar = math.exp(rng.uniform(log_lo, log_hi))
            h, w = int(round(math.sqrt(area * ar))), int(round(math.sqrt(area / ar)))
            if not (0 < h < grid_h and 0 < w < grid_w):
                continue
            top, left = rng.randint(0, grid_h - h), rng.randint(0, grid_w - w)
            block = mask[top:top + h, left:left + w]
            new = int(h * w - block.sum())
            if 0 < new <= budget:
                block[...] = True
                added = new
                break
        if added == 0:
            break
        covered += added
    return mask


def apply_patch_mask(images: torch.Tensor, masks: torch.Tensor, patch: int) -> torch.Tensor:
    """Zero the ``patch x patch`` pixel blocks where ``masks`` ``(B, gh, gw)`` is true."""
    if masks.numel() == 0:
        return images
    keep = (~masks).to(images.dtype)
    keep = keep.repeat_interleave(patch, 1).repeat_interleave(patch, 2)
    h, w = images.shape[-2:]
    full = torch.ones(keep.shape[0], h, w, dtype=images.dtype, device=images.device)
    full[:, :keep.shape[1], :keep.shape[2]] = keep[:, :h, :w]
    return images * full.unsqueeze(1)


class TwoViews:
    """Image -> (2 independently augmented views ``(2, C, H, W)``, their masks ``(2, gh, gw)``)."""

    def __init__(self, pipeline, mask_cfg: dict | None):
        self.pipeline = pipeline
        m = dict(mask_cfg or {})
        self.masking = bool(m.get("enabled", False))
        self.patch = int(m.get("patch", 16))
        self.ratio = float(m.get("ratio", 0.15))
        self.var = float(m.get("ratio_var", 0.1))
        self.aspect = tuple(m.get("aspect", [0.3, 1 / 0.3]))

    def __call__(self, img):
        views = torch.stack([self.pipeline(img), self.pipeline(img)])
        if not self.masking:
            return views, torch.zeros(2, 0, 0, dtype=torch.bool)
        gh, gw = views.shape[-2] // self.patch, views.shape[-1] // self.patch
        # torch's RNG is seeded per run (and per DataLoader worker): derive the mask RNG from it
        rng = random.Random(int(torch.randint(0, 2**62, (1,))))
        masks = []
        for _ in range(2):
            r = rng.uniform(self.ratio - self.var, self.ratio + self.var) if self.var > 0 \
                else self.ratio
            masks.append(torch.from_numpy(block_mask(gh, gw, max(0.0, r), rng, self.aspect)))
        return views, torch.stack(masks)


# --------------------------------------------------------------------------------------- DyCE
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
    def to(self, device) -> "DyCE":
        self.device = torch.device(device)
        self.bank, self.labels = self.bank.to(device), self.labels.to(device)
        self.prototypes = self.prototypes.to(device)
        return self


# --------------------------------------------------------------------------------------- loss
class BECLRLoss:
    """``L_pos + lamb_neg * L_neg`` on (possibly enhanced) batches; see the module docstring."""

    def __init__(self, temp: float = 2.0, lamb_neg: float = 0.1, variant: str = "official"):
        self.temp, self.lamb_neg, self.variant = float(temp), float(lamb_neg), variant

    @staticmethod
    def pos(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return -(F.normalize(p, dim=1) * F.normalize(z.detach(), dim=1)).sum(1).mean()

    def neg(self, z1: torch.Tensor, z2: torch.Tensor, batch: int) -> torch.Tensor:
        """Uniformity over both views' student projections. ``batch``: original images per view
        (the rows of a view are ``[Z; NN_1; ...; NN_k]``, so row ``r`` is image ``r % batch``)."""
        z = F.normalize(torch.cat([z1, z2]), dim=1)
        n, b = z.shape[0], z1.shape[0]
        rows = torch.arange(n, device=z.device)
        if self.variant == "paper":  # an image's neighbours are its positives, not negatives
            group = rows % b % batch
        else:  # released code: only the row itself and the same row of the other view
            group = rows % b
        excl = group.unsqueeze(0) == group.unsqueeze(1)
        logits = (z @ z.T / self.temp).masked_fill(excl, float("-inf"))
        n_neg = (~excl).sum(1).to(z.dtype)
        return (torch.logsumexp(logits, 1) - n_neg.log()).exp().mean().log()

    def __call__(self, z_t: torch.Tensor, p: torch.Tensor, z_s: torch.Tensor,
                 batch: int) -> dict:
        bsz = z_t.shape[0] // 2
        z1, z2 = z_t[:bsz], z_t[bsz:]
        p1, p2 = p[:bsz], p[bsz:]
        s1, s2 = z_s[:bsz], z_s[bsz:]
        loss_pos = (self.pos(p1, z2) + self.pos(p2, z1)) / 2
        loss_neg = self.neg(s1, s2, batch)
        return {"loss": loss_pos + self.lamb_neg * loss_neg, "loss_pos": loss_pos.detach(),
                "loss_neg": loss_neg.detach()}


# ---------------------------------------------------------------------------------- schedules
def cosine_schedule(start: float, end: float, total: int, warmup: int = 0) -> np.ndarray:
    """Per-iteration values: linear warm-up from 0, then cosine from ``start`` to ``end``."""
    warm = np.linspace(0.0, start, warmup) if warmup > 0 else np.zeros(0)
    it = np.arange(max(0, total - warmup))
    cos = end + 0.5 * (start - end) * (1 + np.cos(np.pi * it / max(1, len(it))))
    return np.concatenate([warm, cos])


# ------------------------------------------------------------------------------------ learner
@register_method("beclr", task="fsl", summary="BECLR: unsupervised student-teacher pretraining "
                 "with DyCE memory, OpTA transductive inference (ICLR 2024)")
class BECLR(FSLLearner):
    checkpoint_exclude = ("memories",)  # DyCE memories: pretraining state, rebuilt by each fit

    def __init__(self, config: dict, info: DataInfo):
        super().__init__(config, info)
        dim = int(config.get("proj_dim", 512))
        self.student = Branch(build_encoder(config.get("backbone", {}), info.channels), dim,
                              predictor=True)
        self.teacher = Branch(copy.deepcopy(self.student.encoder), dim, predictor=False)
        self.teacher.projector.load_state_dict(self.student.projector.state_dict())
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.history: list[dict] = []
        self.memories: list[DyCE] = []

    # -- inference ---------------------------------------------------------------------------
    def embed(self, x):
        return self.student.encoder(x)

    def predict_episodes(self, support, support_labels, query):
        """Without a head (``head: none``): the logistic-regression classifier on the class
        means, i.e. OpTA with zero transport passes (BECLR's "without OpTA" ablation)."""
        cfg = dict(self.config.get("opta") or {})
        cfg.update(passes_1shot=0, passes_kshot=0)
        return OpTA(OpTAConfig.from_dict(cfg))(support, support_labels, query)

    def predict_episode(self, support, support_labels, query):
        return self.predict_episodes(support[None], support_labels[None], query[None])[0]

    def extra_state(self):
        return {"history": self.history}

    def load_extra_state(self, state):
        self.history = list(state.get("history", []))

    # -- pretraining -------------------------------------------------------------------------
    def _config(self, n_train: int) -> dict:
        c = self.config
        t, d = dict(c.get("train") or {}), dict(c.get("dyce") or {})
        batch = int(t.get("batch_size", 256))
        if batch < 2:
            raise UserError(f"train.batch_size must be >= 2 (batch norm), got {batch}")
        if n_train < batch:
            raise UserError(f"train.batch_size={batch} is larger than the training split "
                            f"({n_train} images); lower train.batch_size")
        dyce_on = bool(d.get("enabled", True))
        size = d.get("memory_size")
        if size is None:
            size = memory_size(int(d.get("memory_scale", 40)), int(d.get("num_clusters", 200)),
                               batch)
        size = int(size)
        if dyce_on and size < 2 * batch:
            raise UserError(f"dyce.memory_size={size} is smaller than one batch (2 views x "
                            f"{batch} = {2 * batch} embeddings); raise it or leave it null for "
                            f"the formula (memory_scale * num_clusters // 2B + 1) * 2B + 1")
        return {"t": t, "d": d, "batch": batch, "size": size, "dyce": dyce_on}

    def fit(self, train, ctx) -> None:
        limit = (self.config.get("train") or {}).get("max_images")
        if limit is not None and int(limit) < len(train):  # a fixed random subset (CPU presets)
            rng = np.random.default_rng(ctx.seed)
            train = train.subset(np.sort(rng.choice(len(train), int(limit), replace=False)))
        cfg = self._config(len(train))
        views = TwoViews(ctx.train_transform, dict(self.config.get("mask") or {}))
        loader = ctx.loader(train, train=True, batch_size=cfg["batch"], drop_last=True,
                            transform=views)
        epochs = int(cfg["t"].get("epochs", 1))
        trainer = Trainer(self, cfg, ctx.device, ctx.seed, epochs, len(loader))
        self.history = []
        for epoch in ctx.bar(range(epochs), "beclr pretraining", leave=False):
            tot = {"loss": 0.0, "loss_pos": 0.0, "loss_neg": 0.0}
            n_it, k_used = 0, 0
            for (x, masks), _ in loader:  # labels are never used
                out = trainer.step(x, masks if views.masking else None, epoch)
                k_used = out["topk"]
                for key in tot:
                    tot[key] += out[key]
                n_it += 1
            self.history.append({"epoch": epoch, **{k: v / max(1, n_it) for k, v in tot.items()},
                                 "topk": k_used, "lr": trainer.last_lr})
            ctx.log_epoch("pretrain", **self.history[-1])
        ctx.log_selection("pretrain", epochs - 1 if epochs > 0 else None, "last")
        self.student.eval()
        self.teacher.eval()


class Trainer:
    """One BECLR pretraining run's optimiser, schedules, memories and loss; :meth:`step` is one
    iteration (used by :meth:`BECLR.fit` and ``benchmarks/bench_dyce.py``)."""

    def __init__(self, learner: BECLR, cfg: dict, device, seed: int, epochs: int,
                 iters_per_epoch: int):
        t, d, batch = cfg["t"], cfg["d"], cfg["batch"]
        self.learner, self.batch, self.device = learner, batch, torch.device(device)
        variant = str(d.get("variant", "official"))
        if variant not in ("official", "paper"):
            raise UserError(f"dyce.variant: {variant!r} is not one of official, paper")
        dim = int(learner.config.get("proj_dim", 512))
        learner.memories = []
        if cfg["dyce"]:
            for name in ("teacher-z", "student-p", "student-z"):
                learner.memories.append(DyCE(
                    cfg["size"], dim, int(d.get("num_clusters", 200)), int(d.get("topk", 5)),
                    memory_start_epoch=int(d.get("memory_start_epoch", 60)),
                    cluster_freq=int(d.get("cluster_freq", 60)),
                    recluster=bool(d.get("recluster", True)),
                    epsilon=float(d.get("epsilon", 1e-5)),
                    sinkhorn_iterations=int(d.get("sinkhorn_iterations", 10)),
                    prototype_momentum=float(d.get("prototype_momentum", 0.0)),
                    kmeans_n_init=int(d.get("kmeans_n_init", 10)), variant=variant,
                    seed=seed, device=self.device, name=f"dyce[{name}]"))
        loss_cfg = dict(learner.config.get("loss") or {})
        self.criterion = BECLRLoss(float(loss_cfg.get("temp", 2.0)),
                                   float(loss_cfg.get("lamb_neg", 0.1)), variant)
        self.patch = int(dict(learner.config.get("mask") or {}).get("patch", 16))
        total = max(1, epochs * iters_per_epoch)
        base_lr = float(t.get("lr", 0.3)) * batch / 256.0
        self.lrs = cosine_schedule(base_lr, float(t.get("min_lr", 1e-6)), total,
                                   int(t.get("warmup_epochs", 0)) * iters_per_epoch)
        self.moms = cosine_schedule(float(t.get("teacher_momentum", 0.995)), 1.0, total)
        decay, no_decay = [], []
        for name, prm in learner.student.named_parameters():
            (no_decay if name.endswith(".bias") or prm.ndim == 1 else decay).append(prm)
        wd = float(t.get("weight_decay", 1e-4))
        # The released train loop overwrites the weight decay of *both* parameter groups when the
        # backbone is a ResNet, so biases and norm parameters are decayed too (decay_all_params).
        self.opt = torch.optim.SGD(
            [{"params": decay, "weight_decay": wd},
             {"params": no_decay, "weight_decay": wd if t.get("decay_all_params") else 0.0}],
            lr=base_lr, momentum=float(t.get("momentum", 0.9)))
        self.amp = bool(t.get("amp", False)) and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if self.amp else None
        self.s_params = [p for n, p in learner.student.named_parameters()
                         if not n.startswith("predictor.")]
        self.t_params = list(learner.teacher.parameters())
        assert len(self.s_params) == len(self.t_params)
        self.it = 0
        self.last_lr = base_lr
        learner.student.train()
        learner.teacher.train()

    def step(self, x: torch.Tensor, masks: torch.Tensor | None, epoch: int) -> dict:
        """One iteration on ``x`` ``(B, 2, C, H, W)`` (two views per image) and the student's
        patch masks ``(B, 2, gh, gw)`` (or None)."""
        lrn, dev = self.learner, self.device
        x = torch.cat([x[:, 0], x[:, 1]]).to(dev, non_blocking=True)  # view 1, then view 2
        xs = x if masks is None else apply_patch_mask(
            x, torch.cat([masks[:, 0], masks[:, 1]]).to(dev), self.patch)
        i = min(self.it, len(self.lrs) - 1)
        self.last_lr = float(self.lrs[i])
        for g in self.opt.param_groups:
            g["lr"] = self.last_lr
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.amp):
            p, z_s = lrn.student(xs)
            with torch.no_grad():
                z_t = lrn.teacher(x)
        p, z_s, z_t = p.float(), z_s.float(), z_t.float()
        k_used = 0
        if lrn.memories:
            z_t, k_used = lrn.memories[0].step(z_t.detach(), epoch)
            p, _ = lrn.memories[1].step(p, epoch)
            z_s, _ = lrn.memories[2].step(z_s, epoch)
        out = self.criterion(z_t, p, z_s, self.batch)
        loss = out["loss"]
        if not torch.isfinite(loss):
            raise UserError(f"beclr: the loss became {float(loss)} at epoch {epoch}; lower "
                            f"train.lr")
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            loss.backward()
            self.opt.step()
        with torch.no_grad():  # teacher <- m * teacher + (1 - m) * student
            m = float(self.moms[i])
            torch._foreach_mul_(self.t_params, m)
            torch._foreach_add_(self.t_params, [q.detach() for q in self.s_params], alpha=1 - m)
        self.it += 1
        return {"loss": float(loss.detach()), "loss_pos": float(out["loss_pos"]),
                "loss_neg": float(out["loss_neg"]), "topk": k_used}

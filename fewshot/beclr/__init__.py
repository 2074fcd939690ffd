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

from .dyce import DyCE, effective_epsilon, equipartition_assign, memory_size
from .learner import BECLR
from .loss import BECLRLoss
from .masking import TwoViews, apply_patch_mask, block_mask
from .networks import Branch, Predictor, Projector, build_encoder
from .trainer import Trainer, cosine_schedule

__all__ = ["BECLR", "Trainer", "DyCE", "BECLRLoss", "memory_size", "effective_epsilon",
           "equipartition_assign", "block_mask", "apply_patch_mask", "TwoViews", "build_encoder",
           "Projector", "Predictor", "Branch", "cosine_schedule"]

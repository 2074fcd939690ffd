"""BECLR's own configuration blocks (``dyce``, ``mask``, ``loss`` and its ``train`` keys),
declared with :class:`fsbench.configschema.MethodBlock` and checked when the learner is built.
Defaults are the released code's (``configs/miniimagenet/mini_r18_train.json``)."""
from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import ConfigDict, Field, StrictBool, StrictInt

from fsbench.configschema import Count, MethodBlock, PosInt, validate_block



def _real(**bounds):
    return Annotated[float, Field(allow_inf_nan=False, **bounds)]


class DyCEOptions(MethodBlock):
    """The ``dyce:`` block: the dynamic clustered memory (§3.2 of the paper)."""

    enabled: StrictBool = Field(True, description="use the memory (false: plain student-teacher "
                                                  "pretraining, the paper's ablation)")
    variant: Literal["official", "paper"] = Field(
        "official", description="official: the released code (P1/P2); paper: the paper's text")
    topk: PosInt = Field(5, description="memory neighbours added per embedding (k)")
    num_clusters: Annotated[StrictInt, Field(ge=2, le=1_000_000)] = Field(
        200, description="memory partitions (P)")
    memory_scale: PosInt = Field(40, description="memory = (memory_scale * num_clusters // 2B + 1) "
                                               "* 2B + 1 embeddings")
    memory_size: Optional[PosInt] = Field(None, description="an explicit memory size (null = the "
                                                          "formula)")
    memory_start_epoch: Count = Field(60, description="first epoch whose batches are enhanced")
    cluster_freq: Count = Field(60, description="re-cluster every this many epochs (0 = never)")
    recluster: StrictBool = Field(True, description="re-cluster at all after the first k-means")
    epsilon: _real(gt=0, le=1000) = Field(
        1e-5, description="Sinkhorn entropy (raised by 0.1 while exp overflows, as released)")
    sinkhorn_iterations: PosInt = Field(10, description="equipartition Sinkhorn iterations")
    prototype_momentum: _real(ge=0, lt=1) = Field(
        0.0, description="EMA of the partition prototypes (0 = per-partition means)")
    kmeans_n_init: PosInt = Field(10, description="k-means restarts of a (re-)clustering")


class MaskOptions(MethodBlock):
    """The ``mask:`` block: iBOT/BEiT block masking of the student's input."""

    enabled: StrictBool = Field(False, description="mask the student's views")
    patch: Annotated[StrictInt, Field(ge=1, le=4096)] = Field(16, description="patch size (px)")
    ratio: _real(ge=0, le=1) = Field(0.15, description="mean masked share of the patches")
    ratio_var: _real(ge=0, le=1) = Field(0.1, description="share drawn from U(ratio - var, "
                                                          "ratio + var)")
    aspect: Annotated[list[_real(gt=0)], Field(min_length=2, max_length=2)] = Field(
        [0.3, 1 / 0.3], description="[min, max] aspect ratio of a masked block")


class LossOptions(MethodBlock):
    """The ``loss:`` block (Eq. 1-2 of the paper)."""

    temp: _real(gt=0, le=1000) = Field(2.0, description="temperature T of the uniformity term")
    lamb_neg: _real(ge=0, le=1000) = Field(0.1, description="weight of the uniformity term")


class TrainOptions(MethodBlock):
    """BECLR's own keys of the shared ``train:`` block (the shared ones are checked by
    :class:`fsbench.configschema.Train`)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    teacher_momentum: _real(ge=0, le=1) = Field(
        0.995, description="EMA momentum of the teacher, cosine-scheduled to 1")
    decay_all_params: StrictBool = Field(
        False, description="decay biases and norm weights too (the released ResNet loop)")
    amp: StrictBool = Field(True, description="fp16 autocast on CUDA (fp32 on a CPU)")


BLOCKS = {"dyce": DyCEOptions, "mask": MaskOptions, "loss": LossOptions, "train": TrainOptions}


def beclr_options(config: dict) -> dict:
    """The validated blocks of a BECLR configuration (one-line UserErrors)."""
    return {k: validate_block(m, config.get(k), k) for k, m in BLOCKS.items()}

"""DVLA-RL's own configuration blocks (``rla``, ``text``, ``dsc``, ``pretrain``, ``meta``), declared
with :class:`fsbench.configschema.MethodBlock` and checked when the learner is built, before any
data is read. The learner reads the validated blocks (:func:`dvla_options`), so these defaults
are the only ones."""
from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import Field, StrictBool, StrictInt

from fsbench.configschema import (Count, Fraction, MethodBlock, NonNeg, PosInt, Rate,
                                  validate_block)



class RLAOptions(MethodBlock):
    """The ``rla:`` block: RL-gated attention (§3.3 of the paper, Eq. 7-12)."""

    enabled: StrictBool = Field(True, description="use RLA at stages 2 and 3 (false: image "
                                                  "features only)")
    policy: Literal["beta", "categorical"] = Field(
        "beta", description="beta (paper) | categorical (DVLA-RL++ code's 3-way gate)")
    alpha_fixed: Optional[Fraction] = Field(None, description="a constant gate in [0, 1], no RL "
                                                           "(ablation); null = learned policy")
    kappa: Rate = Field(10.0, description="concentration of the Beta policy")
    hidden: PosInt = Field(64, description="hidden width of the gate policy")
    heads: PosInt = Field(1, description="attention heads")
    lambda_sim: NonNeg = Field(0.5, description="reward weight of the semantic similarity")
    lambda_imp: NonNeg = Field(1.0, description="reward weight of the accuracy improvement")
    weight: NonNeg = Field(0.1, description="L = L_sup + weight * L_RL")
    tau: NonNeg = Field(0.2, description="entropy bonus of REINFORCE")
    baseline_momentum: Fraction = Field(0.9, description="EMA momentum of the reward baseline")
    delta_acc: Literal["previous", "counterfactual"] = Field(
        "previous", description="previous (Acc_t - Acc_{t-1}) | counterfactual (with vs without "
                                "the gate)")


class TextOptions(MethodBlock):
    """The ``text:`` block: the frozen text encoder of the class semantics."""

    encoder: Literal["openai_clip", "glyphs_clip", "words"] = Field(
        "openai_clip", description="openai_clip (text.weights) | glyphs_clip (glyphs only) | "
                                   "words (hashed bag of words, tests)")
    dim: PosInt = Field(512, description="text feature width (must equal the encoder's)")
    arch: Optional[str] = Field(None, description="open_clip architecture (null = ViT-B-16)")
    weights: Optional[str] = Field(None, description="local CLIP weights (never downloaded)")


class DSCOptions(MethodBlock):
    """The ``dsc:`` block: dual-level semantic construction (§3.2)."""

    source: str = Field("auto", description="auto | unicode | PATH of an attribute JSON file")
    k: PosInt = Field(4, description="attributes kept per class")


class PretrainOptions(MethodBlock):
    """The ``pretrain:`` block: supervised pretraining of the visual backbone."""

    epochs: Count = Field(0, description="epochs (0 = none)")
    batch_size: PosInt = Field(128, description="images per batch")
    max_images: Optional[PosInt] = Field(None, description="a fixed random subset (null = all)")
    lr: Rate = Field(5e-4, description="AdamW peak learning rate (one-cycle)")
    weight_decay: NonNeg = Field(0.05, description="AdamW weight decay")
    label_smoothing: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] = Field(
        0.1, description="label smoothing of the cross-entropy")
    warmup_fraction: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)] = Field(
        0.05, description="share of the steps spent warming up")


class MetaOptions(MethodBlock):
    """The ``meta:`` block: episodic meta-tuning with the RL objective."""

    episodes: Count = Field(0, description="training episodes (0 = none)")
    way: Annotated[StrictInt, Field(ge=2, le=10_000)] = Field(5, description="classes per "
                                                                           "episode")
    shot: PosInt = Field(1, description="support images per class")
    query: PosInt = Field(15, description="query images per class")
    lr: Rate = Field(5e-4, description="learning rate of the new modules")
    backbone_lr: NonNeg = Field(1e-6, description="learning rate of the backbone")
    weight_decay: NonNeg = Field(1e-4, description="AdamW weight decay")
    temperature: Rate = Field(0.2, description="temperature of the cosine logits")


BLOCKS = {"rla": RLAOptions, "text": TextOptions, "dsc": DSCOptions,
          "pretrain": PretrainOptions, "meta": MetaOptions}


def dvla_options(config: dict) -> dict[str, dict]:
    """The validated blocks as plain dicts (one-line UserErrors)."""
    return {k: validate_block(m, config.get(k), k).model_dump() for k, m in BLOCKS.items()}

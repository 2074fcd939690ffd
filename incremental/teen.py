"""``teen`` - TEEN, Training-frEE calibratioN (Wang et al., NeurIPS 2023, "Few-Shot
Class-Incremental Learning via Training-Free Prototype Calibration", arXiv:2312.05229).

Base session: exactly the ``ncm`` (Decoupled-Cosine) recipe - backbone + cosine classifier
``s * cos(f(x), W)`` trained with cross-entropy, then every base row of ``W`` is replaced by the
mean embedding of that class's training images (test transform). The backbone is frozen from then
on, so the runner caches features and every incremental session is a few matrix products.

Incremental session ``t`` (no training):

1. each new class gets the mean of its shot embeddings as prototype (as ``ncm``);
2. TEEN moves each new prototype toward the base prototypes it resembles (:func:`calibrate`):
   a softmax over the cosine similarities to the **base** prototypes (rows ``0..num_base-1`` only,
   never earlier novel classes) weights the base prototypes, and the new prototype is mixed with
   that weighted mean with weight ``teen.alpha``;
3. images are classified by ``s * cos(f(x), p)`` over every class seen so far. Rows of earlier
   sessions keep their calibrated values; base rows never change after the base session.

Configuration (``teen:`` in the presets): ``alpha`` in [0, 1] (the official ``shift_weight``:
0.1 on CIFAR-100, 0.5 on miniImageNet and CUB-200), ``tau > 0`` (``softmax_t``, 16) and
``variant`` - ``code`` (default, the released implementation) or ``paper`` (the fusion formula as
printed in the paper; see :func:`calibrate` for the difference). ``alpha = 0`` is plain ``ncm``.

Deliberate differences from the released code, both to keep test labels out of training:
model selection uses a validation split carved from the base training images unless the run sets
``select_on_test: true`` (then the result carries the ``selected_on_test`` flag); session 0 reports
the prototype classifier's accuracy, not the maximum of it and the best epoch's test accuracy.
"""
from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from fsbench.baselines.ncm import PrototypeFSCIL
from fsbench.configschema import MethodBlock, validate_block
from fsbench.learner import DataInfo, Session
from fsbench.registry import register_method

VARIANTS = ("code", "paper")
DEFAULTS = {"alpha": 0.5, "tau": 16.0, "variant": "code"}


def calibrate(novel: torch.Tensor, base: torch.Tensor, alpha: float, tau: float,
              variant: str = "code") -> torch.Tensor:
    """TEEN's training-free calibration of new-class prototypes.

    ``novel (N, D)``: the new classes' prototypes (mean shot embeddings); ``base (B, D)``: the base
    classes' prototypes (mean embeddings of their training images). Neither needs unit norm.
    Returns the calibrated prototypes ``(N, D)``; the cosine classifier only uses their direction.

    ``variant="code"`` - the released implementation (``MYNET.soft_calibration`` in
    wangkiw/TEEN), which reproduces the published numbers::

        p_hat = p / |p|,   b_hat_i = b_i / |b_i|
        w_i   = softmax_i( tau * <p_hat, b_hat_i> )          # cosine similarities, over base only
        delta = normalize( sum_i w_i * b_hat_i )
        p'    = (1 - alpha) * p_hat + alpha * delta          # alpha = shift_weight

    Both terms are unit vectors, so ``alpha`` is the share of the base-derived direction.

    ``variant="paper"`` - the fusion as the paper writes it (Sec. 4, our reading): the same
    softmax weights of cosine similarities, but the weighted sum of the base prototypes is
    neither computed on normalised prototypes nor re-normalised, and it is mixed with the raw
    new prototype::

        p' = (1 - alpha) * p + alpha * sum_i w_i * b_i

    The paper names the mixing weight on the *new* prototype (its ``alpha`` is ``1 - alpha``
    here); that alone is a relabelling, and ``teen.alpha`` keeps the code's meaning (weight on the
    base-derived term) in both variants. The behavioural difference is the normalisation: the
    weighted mean of unit vectors is shorter than one (the softmax is rarely one-hot) and raw
    prototypes differ in length (5-shot means vs. means of hundreds of images), so the same
    ``alpha`` moves the prototype by a different angle.

    ``alpha = 0`` returns the new prototypes' directions unchanged (plain NCM).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, not {variant!r}")
    if novel.ndim != 2 or base.ndim != 2 or novel.shape[1] != base.shape[1]:
        raise ValueError(f"calibrate: expected (N, D) and (B, D), got {tuple(novel.shape)} and "
                         f"{tuple(base.shape)}")
    novel = novel.float()
    base = base.float().to(novel.device)
    p_hat = F.normalize(novel, dim=-1)
    b_hat = F.normalize(base, dim=-1)
    weights = torch.softmax(tau * p_hat @ b_hat.T, dim=-1)  # (N, B)
    if variant == "code":
        delta = F.normalize(weights @ b_hat, dim=-1)
        return (1.0 - alpha) * p_hat + alpha * delta
    return (1.0 - alpha) * novel + alpha * (weights @ base)


class TeenOptions(MethodBlock):
    """The ``teen:`` block (§3.3 of the paper; defaults of the official code)."""

    alpha: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = Field(
        DEFAULTS["alpha"], description="weight of the base-derived shift, in [0, 1] (Eq. 5)")
    tau: Annotated[float, Field(gt=0, allow_inf_nan=False)] = Field(
        DEFAULTS["tau"], description="softmax temperature over base prototypes (Eq. 4), > 0")
    variant: Literal["code", "paper"] = Field(
        DEFAULTS["variant"], description="code: normalised mixture (official code); paper: Eq. 5")


def teen_options(config: dict) -> dict:
    """The validated ``teen:`` block of a run configuration (one-line UserErrors)."""
    return validate_block(TeenOptions, config.get("teen"), "teen").model_dump()


@register_method("teen", task="fscil",
                 summary="TEEN: NCM + training-free calibration of new prototypes toward base ones")
class TEEN(PrototypeFSCIL):
    session_config = ("teen",)  # the calibration follows the base session (--base-from)
    config_blocks = {"teen": TeenOptions}

    def __init__(self, config: dict, info: DataInfo):
        self.opts = teen_options(config)  # fail before building (and loading) the backbone
        super().__init__(config, info)

    @torch.no_grad()
    def learn_session(self, session: Session, ctx) -> None:
        novel = self.session_prototypes(session)
        base = self.raw_prototypes[: self.info.num_base]
        self.set_rows(session.new_classes, calibrate(
            novel.cpu(), base, self.opts["alpha"], self.opts["tau"], self.opts["variant"]))
        self.num_seen = session.num_seen

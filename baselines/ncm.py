"""``ncm`` - the "Decoupled-Cosine" FSCIL baseline (CEC, Zhang et al. CVPR 2021, Table 1).

Base session: backbone + cosine classifier trained with cross-entropy (:mod:`.training`). Then
every class - base classes included - is represented by its L2-normalised mean feature (test
transform), and images are classified by ``s * cos(f(x), p_c)`` over the classes seen so far.
The backbone is frozen after the base session.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fsbench.errors import UserError
from fsbench.learner import DataInfo, FSCILLearner, Session
from fsbench.registry import register_method

from .backbones import build_backbone, check_pretraining
from .protos import CosineClassifier, class_means
from .training import train_supervised


class PrototypeFSCIL(FSCILLearner):
    """Base class: trained backbone + cosine classifier whose rows become class prototypes."""

    frozen_after_base = True
    #: ncm and teen train the same base model: one can reuse the other's (--base-from).
    base_family = "decoupled-cosine"

    def __init__(self, config: dict, info: DataInfo):
        super().__init__(config, info)
        check_pretraining(config)
        self.backbone = build_backbone(config.get("backbone", {}), info.channels)
        scale = float(config.get("classifier", {}).get("scale", 16.0))
        if scale <= 0:
            raise UserError(f"classifier.scale must be positive, got {scale}")
        self.classifier = CosineClassifier(self.backbone.out_dim, info.num_classes, scale)
        # Un-normalised prototypes as computed (class means; TEEN: calibrated ones for novel
        # rows): the classifier stores unit rows, TEEN's ``paper`` variant needs the raw base
        # means. Kept by ncm too, so that ncm and teen share one base model (--base-from).
        self.raw_prototypes = torch.zeros(info.num_classes, self.backbone.out_dim)
        self.num_seen = 0
        self.base_log: dict = {}

    def extra_state(self):
        return {"num_seen": self.num_seen, "raw_prototypes": self.raw_prototypes.clone()}

    def load_extra_state(self, state):
        self.num_seen = int(state.get("num_seen", 0))
        if "raw_prototypes" in state:
            self.raw_prototypes = state["raw_prototypes"].detach().cpu().float()

    def embed(self, x):
        return self.backbone(x)

    def predict_features(self, features):
        return self.classifier(features, self.num_seen)

    def fit_base(self, session: Session, ctx) -> None:
        n = self.info.num_base
        self.base_log = train_supervised(self.backbone, self.classifier, session.data, ctx,
                                         self.config.get("train", {}), n)
        self.eval()
        feats = ctx.extract(self.embed, session.data, desc="base prototypes")
        self.set_rows(session.new_classes, class_means(
            feats, torch.from_numpy(session.data.labels), session.new_classes))
        self.num_seen = session.num_seen

    @torch.no_grad()
    def set_rows(self, classes, protos: torch.Tensor) -> None:
        self.raw_prototypes[torch.as_tensor(classes, dtype=torch.long)] = \
            protos.detach().float().cpu()
        idx = torch.as_tensor(classes, dtype=torch.long, device=self.classifier.weight.device)
        self.classifier.weight[idx] = F.normalize(protos, dim=-1).to(self.classifier.weight)

    def session_prototypes(self, session: Session) -> torch.Tensor:
        feats = session.features
        return class_means(feats, torch.from_numpy(session.data.labels), session.new_classes)

    def learn_session(self, session: Session, ctx) -> None:
        self.set_rows(session.new_classes, self.session_prototypes(session))
        self.num_seen = session.num_seen


@register_method("ncm", task="fscil",
                 summary="Decoupled-Cosine: cosine-classifier base training, class-mean prototypes")
class NCM(PrototypeFSCIL):
    pass

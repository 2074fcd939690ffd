"""``finetune`` - the FSCIL lower bound: plain cross-entropy fine-tuning in every session.

Base session as :mod:`.ncm`. In session ``t`` the new classifier rows start at the class means,
then backbone and classifier are fine-tuned with cross-entropy on the session's few shots only
(``finetune.epochs``, ``finetune.lr``) - which forgets the old classes (catastrophic forgetting).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fsbench.learner import Session
from fsbench.registry import register_method

from .ncm import PrototypeFSCIL
from .protos import class_means


@register_method("finetune", task="fscil",
                 summary="lower bound: cross-entropy fine-tuning of the whole network per session")
class Finetune(PrototypeFSCIL):
    frozen_after_base = False
    session_config = ("finetune",)  # the base model is ncm's (--base-from)

    def learn_session(self, session: Session, ctx) -> None:
        ft = self.config.get("finetune", {})
        self.eval()
        feats = ctx.extract(self.embed, session.data, desc=f"session {session.index} shots")
        self.set_rows(session.new_classes, class_means(
            feats, torch.from_numpy(session.data.labels), session.new_classes))
        self.num_seen = session.num_seen
        params = list(self.backbone.parameters()) + list(self.classifier.parameters())
        opt = torch.optim.SGD(params, lr=float(ft.get("lr", 0.01)), momentum=0.9)
        loader = ctx.loader(session.data, train=True, batch_size=int(ft.get("batch_size", 64)))
        self.train()
        epochs = int(ft.get("epochs", 10))
        for epoch in range(epochs):
            tot = n = 0
            bar = ctx.bar(None, f"session {session.index} epoch {epoch + 1}/{epochs}",
                          total=len(loader))  # advanced by hand, see train_supervised
            for x, y in loader:
                x, y = x.to(ctx.device), y.to(ctx.device)
                loss = F.cross_entropy(self.classifier(self.backbone(x), self.num_seen), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                tot, n = tot + loss.item() * len(y), n + len(y)
                bar.update()
            bar.close()
            ctx.log_epoch("finetune", epoch, loss=tot / max(1, n), lr=opt.param_groups[0]["lr"])
        ctx.log_selection("finetune", epochs - 1 if epochs > 0 else None, "last")
        self.eval()

"""The ``beclr`` learner: pretraining (:meth:`BECLR.fit`, with per-epoch checkpoints) and
OpTA-free inference; see the package docstring."""
from __future__ import annotations

import copy

import numpy as np

from fsbench.errors import UserError
from fsbench.learner import DataInfo, FSLLearner
from fsbench.registry import register_method
from fsbench.trainstate import EpochCheckpoint

from ..opta import OpTA, OpTAConfig
from .dyce import DyCE, memory_size
from .masking import TwoViews
from .networks import Branch, build_encoder
from .options import BLOCKS, beclr_options
from .trainer import Trainer


@register_method("beclr", task="fsl", summary="BECLR: unsupervised student-teacher pretraining "
                 "with DyCE memory, OpTA transductive inference (ICLR 2024)")
class BECLR(FSLLearner):
    config_blocks = {**BLOCKS, "opta": OpTAConfig}
    checkpoint_exclude = ("memories",)  # DyCE memories: pretraining state, rebuilt by each fit

    def __init__(self, config: dict, info: DataInfo):
        super().__init__(config, info)
        self.options = beclr_options(config)  # dyce / mask / loss / train, checked before any data
        dim = config.get("proj_dim", 512)
        if isinstance(dim, bool) or not isinstance(dim, int) or not 4 <= dim <= 65_536:
            raise UserError(f"config proj_dim = {dim!r}: expected a whole number in [4, 65536] "
                            f"(the predictor's hidden width is proj_dim // 4)")
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
        t, d = dict(self.config.get("train") or {}), self.options["dyce"]
        batch = int(t.get("batch_size", 256))
        if batch < 2:
            raise UserError(f"train.batch_size must be >= 2 (batch norm), got {batch}")
        if n_train < batch:
            raise UserError(f"train.batch_size={batch} is larger than the training split "
                            f"({n_train} images); lower train.batch_size")
        dyce_on = d.enabled
        size = d.memory_size
        if size is None:
            size = memory_size(d.memory_scale, d.num_clusters, batch)
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
        views = TwoViews(ctx.train_transform, self.options["mask"].model_dump())
        loader = ctx.loader(train, train=True, batch_size=cfg["batch"], drop_last=True,
                            transform=views)
        epochs = int(cfg["t"].get("epochs", 1))
        trainer = Trainer(self, cfg, ctx.device, ctx.seed, epochs, len(loader))
        # Per-epoch checkpoint (fsbench.trainstate): networks, optimiser, schedules' position,
        # DyCE memories, RNG and loader states; a killed pretraining resumes at its next epoch.
        ckpt = EpochCheckpoint.of(ctx, "pretrain")
        state = {"student": self.student, "teacher": self.teacher, "trainer": trainer}
        start, saved = ckpt.restore(state, loader)
        self.history = list(saved.get("history", []))
        for epoch in ctx.bar(range(start, epochs), "beclr pretraining"):
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
            ckpt.save(epoch + 1, state, loader, {"history": self.history})
        ctx.log_selection("pretrain", epochs - 1 if epochs > 0 else None, "last")
        self.student.eval()
        self.teacher.eval()

"""``protonet`` - Prototypical Networks (Snell et al., NeurIPS 2017).

Training: episodic, ``train.episodes`` episodes of ``train.way``-way ``train.shot``-shot
``train.query``-query tasks on the training classes, Adam; loss = cross-entropy over negative
squared Euclidean distances to the class means (Eq. 1-2). Evaluation: the same rule on frozen
features.

Under torchrun (README "Scaling out") the queries of each training episode are split over the
processes; BatchNorm then sees the support set and one share of the queries per process.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fsbench import distributed as dist
from fsbench.curves import EpisodeBlocks
from fsbench.episodes.sampler import EpisodeSampler
from fsbench.errors import UserError
from fsbench.learner import DataInfo, FSLLearner
from fsbench.registry import register_method
from fsbench.trainstate import EpochCheckpoint

from .backbones import build_backbone
from .protos import prototypes, sq_euclidean


def proto_logits(support, support_labels, query, way: int):
    return -sq_euclidean(query, prototypes(support, support_labels, way))


@register_method("protonet", task="fsl",
                 summary="Prototypical Networks: class-mean prototypes, squared Euclidean")
class ProtoNet(FSLLearner):
    def __init__(self, config: dict, info: DataInfo):
        super().__init__(config, info)
        self.backbone = build_backbone(config.get("backbone", {}), info.channels)

    def embed(self, x):
        return self.backbone(x)

    def predict_episode(self, support, support_labels, query):
        way = int(support_labels.max()) + 1
        return proto_logits(support, support_labels, query, way)

    def predict_episodes(self, support, support_labels, query):
        way = int(support_labels.max()) + 1
        return proto_logits(support, support_labels, query, way)

    def fit(self, train, ctx) -> None:
        t = self.config.get("train", {})
        n = int(t.get("episodes", 0))
        if n <= 0:
            return
        way, shot, query = int(t.get("way", 5)), int(t.get("shot", 5)), int(t.get("query", 15))
        sampler = EpisodeSampler(train.labels, way, shot, query, seed=ctx.seed)
        opt = torch.optim.Adam(self.backbone.parameters(), lr=float(t.get("lr", 1e-3)))
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, int(t.get("lr_step", n))),
                                                gamma=float(t.get("gamma", 0.5)))
        tf = ctx.train_transform
        # Under torchrun each process embeds the whole support set and its share of the query
        # images (the episode's way * query images are the total batch); DDP averages the
        # gradients, which equals the gradient of the loss over all queries.
        per = ctx.per_rank_batch(way * query, "train.way*train.query")
        if per * dist.world_size() != way * query:
            raise UserError("distributed.per_rank_batch does not apply to protonet's episodes "
                            "(their queries are split over the processes); leave it null")
        mine = slice(dist.rank() * per, (dist.rank() + 1) * per)
        net = ctx.wrap(self.backbone)
        self.backbone.train()
        blocks = EpisodeBlocks(ctx, "episodes", n)
        # Checkpoint after every block of episodes (fsbench.trainstate); episode i is a function
        # of (seed, i), so a resumed run draws the same episodes from where it stopped.
        ckpt = EpochCheckpoint.of(ctx, "episodes")
        state = {"backbone": self.backbone, "opt": opt, "sched": sched}
        start, _ = ckpt.restore(state)
        for i in ctx.bar(range(start, n), "protonet episodes"):
            ep = sampler.sample(i, 1)
            idx = torch.cat([torch.from_numpy(ep.support.reshape(-1)),
                             torch.from_numpy(ep.query.reshape(-1)[mine])]).numpy()
            x = torch.stack([tf(train.load(int(j))) for j in idx]).to(ctx.device)
            f = net(x)
            fs, fq = f[: way * shot], f[way * shot:]
            sl = torch.arange(way, device=ctx.device).repeat_interleave(shot)
            ql = torch.arange(way, device=ctx.device).repeat_interleave(query)[mine]
            logits = proto_logits(fs, sl, fq, way)
            loss = F.cross_entropy(logits, ql)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            lr = opt.param_groups[0]["lr"]
            opt.step()
            sched.step()
            acc = 100.0 * float((logits.argmax(1) == ql).float().mean())
            if blocks.add(i, loss=loss.item(), acc=acc, lr=lr):
                ckpt.save(i + 1, state)
        ctx.log_selection("episodes", (n - 1) // blocks.size, "last")
        dist.broadcast_module(self.backbone)  # rank 0's BatchNorm statistics on every process
        self.backbone.eval()

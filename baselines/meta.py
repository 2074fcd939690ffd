"""``maml``, ``anil``, ``metasgd``: gradient-based meta-learning on learn2learn's own algorithms.

* **MAML** (Finn, Abbeel, Levine, ICML 2017, Algorithm 2): the network's initial parameters are
  meta-learned so that a few gradient steps on a task's support set fit it. Inner loop:
  ``steps_train`` SGD steps of size ``inner_lr`` on the support cross-entropy (Eq. 1); outer loop:
  Adam (``train.lr``) on the mean query loss of ``train.meta_batch`` tasks, through the inner
  steps (second order) or with ``first_order: true`` (Sec. 5.2, the first-order approximation).
  :class:`learn2learn.algorithms.MAML` does the cloning and the differentiable updates.
* **ANIL** (Raghu et al., ICLR 2020, Sec. 4): MAML's inner loop on the head only; the body is
  trained by the outer loop alone. As in learn2learn's ANIL example, ``l2l.algorithms.MAML`` wraps
  the linear head and the body computes features outside it.
* **Meta-SGD** (Li et al., arXiv 1707.09835, 2017): one inner step with a meta-learned learning
  rate per parameter (element-wise), learned with the initialisation
  (:class:`learn2learn.algorithms.MetaSGD`). ``lr_init: [lo, hi]`` draws the initial rates
  uniformly from that range (equal bounds: a constant).

Network (every method): ``backbone.*`` (the preset's ``conv4``) without its global pooling, whose
feature map is flattened (``features: flatten``, MAML's miniImageNet network: 32 filters, 800
features at 84 px) or averaged (``features: mean``, its Omniglot network), then a linear layer
with ``train.way`` outputs. Batch normalisation always uses the statistics of the batch it sees,
in training and at test time, with no running averages, as MAML's code does (TensorFlow's
``batch_norm`` in training mode; "transduction" in Nichol et al.'s tables): the support set and
the query set are normalised separately, each with its own statistics. Where MAML's Omniglot
network uses strided convolutions, fsbench's ``conv4`` max-pools.

Training draws its tasks from the training split with :class:`~fsbench.episodes.sampler.
EpisodeSampler` (seeded by the run seed; outer step ``i`` uses episodes ``i * meta_batch`` ..);
evaluation adapts a clone on each fixed test episode's support set for ``steps_test`` steps and
classifies its queries. Adaptation needs gradients, so the class declares
``needs_grad_at_eval = True`` and the FSL runner evaluates it with autograd on. One model serves
every evaluated shot; the papers train one per shot (``train.shot``, ``train.meta_batch``).

learn2learn is imported when a learner is built, never at import time, so ``fsbench list`` works
without it; a missing learn2learn is a one-line error naming ``fsbench install-extra
learn2learn``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fsbench.episodes.sampler import EpisodeSampler
from fsbench.errors import UserError
from fsbench.extras import require
from fsbench.learner import DataInfo, FSLLearner
from fsbench.registry import register_method

from .backbones import build_backbone

#: The keys of a method's block (``maml:``, ``anil:``) and their defaults; Meta-SGD adds
#: ``lr_init``.
DEFAULTS = {"inner_lr": 0.01, "steps_train": 5, "steps_test": 10, "first_order": False,
            "features": "flatten"}


def meta_options(method: str, raw, defaults: dict) -> dict:
    """The validated method block of a run configuration (one-line UserErrors)."""
    if not isinstance(raw, dict):
        raise UserError(f"{method}: expected a mapping with {', '.join(defaults)}; got {raw!r}")
    unknown = sorted(set(raw) - set(defaults))
    if unknown:
        raise UserError(f"{method}: unknown key(s) {unknown}; valid: {sorted(defaults)}")
    o = {**defaults, **raw}
    lr = o["inner_lr"]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf"):
        raise UserError(f"{method}.inner_lr must be a positive number, got {lr!r}")
    for key in ("steps_train", "steps_test"):
        v = o[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UserError(f"{method}.{key} must be a whole number >= 1, got {v!r}")
    if not isinstance(o["first_order"], bool):
        raise UserError(f"{method}.first_order must be true or false, got {o['first_order']!r}")
    if o["features"] not in ("flatten", "mean"):
        raise UserError(f"{method}.features: {o['features']!r} is not one of flatten, mean")
    init = o.get("lr_init")
    if init is not None and not (
            isinstance(init, list) and len(init) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in init)
            and 0 < init[0] <= init[1]):
        raise UserError(f"{method}.lr_init must be [low, high] with 0 < low <= high (Meta-SGD's "
                        f"initial learning rates), got {init!r}")
    return o


def batch_stat_norm(net: nn.Module) -> nn.Module:
    """Make every batch norm of ``net`` normalise with the current batch's statistics, always."""
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None
    return net


class Trunk(nn.Module):
    """A backbone's feature map, flattened or averaged over space."""

    def __init__(self, backbone: nn.Module, flatten: bool):
        super().__init__()
        self.backbone = batch_stat_norm(backbone)
        self.flatten = flatten

    def forward(self, x):
        f = self.backbone.feature_map(x)
        return f.flatten(1) if self.flatten else f.mean((2, 3))


class GradientMetaLearner(FSLLearner):
    """Shared body of the three methods: :attr:`adapt_body` and :meth:`wrap` tell them apart."""

    needs_grad_at_eval = True
    #: The inner loop adapts the whole network (MAML, Meta-SGD) or the head only (ANIL).
    adapt_body = True
    #: The keys of this method's configuration block and their defaults.
    options = DEFAULTS

    def __init__(self, config: dict, info: DataInfo):
        super().__init__(config, info)
        name = self.registry_name
        l2l = require("learn2learn", f"method {name}")
        self.opt = meta_options(name, config.get(name, {}), self.options)
        t = config.get("train", {})
        self.way = int(t.get("way", 5))
        eval_way = int(config.get("eval", {}).get("way", self.way))
        if eval_way != self.way:
            raise UserError(f"{name}: eval.way={eval_way} but train.way={self.way}; the head has "
                            f"train.way outputs, so set both to the same number of classes")
        trunk = Trunk(build_backbone(config.get("backbone", {}), info.channels),
                      self.opt["features"] == "flatten")
        with torch.no_grad():
            dim = trunk(torch.zeros(2, info.channels, info.image_size, info.image_size)).shape[1]
        head = nn.Linear(dim, self.way)
        if self.adapt_body:
            self.body = None
            self.meta = self.wrap(l2l, nn.Sequential(trunk, head))
        else:
            self.body = trunk
            self.meta = self.wrap(l2l, head)

    def wrap(self, l2l, module: nn.Module) -> nn.Module:
        """The learn2learn algorithm around the adapted part of the network."""
        return l2l.algorithms.MAML(module, lr=float(self.opt["inner_lr"]),
                                   first_order=self.opt["first_order"])

    # -- adaptation ----------------------------------------------------------------------------
    def _features(self, x):
        return x if self.body is None else self.body(x)

    def adapt(self, support, support_labels, steps: int, first_order: bool):
        """A clone of the adapted part after ``steps`` inner steps on the support set."""
        learner = self.meta.clone()
        fs = self._features(support)
        for _ in range(steps):
            learner.adapt(F.cross_entropy(learner(fs), support_labels), first_order=first_order)
        return learner

    def predict_episode(self, support, support_labels, query):
        learner = self.adapt(support, support_labels, self.opt["steps_test"], first_order=True)
        return learner(self._features(query)).detach()

    # -- meta-training -------------------------------------------------------------------------
    def fit(self, train, ctx) -> None:
        t = self.config.get("train", {})
        iterations = int(t.get("iterations", 0))
        if iterations <= 0:
            return
        shot, query = int(t.get("shot", 1)), int(t.get("query", 15))
        batch = int(t.get("meta_batch", 4))
        sampler = EpisodeSampler(train.labels, self.way, shot, query, seed=ctx.seed)
        params = [p for m in self.modules().values() for p in m.parameters()]
        opt = torch.optim.Adam(params, lr=float(t.get("lr", 1e-3)))
        tf, dev = ctx.train_transform, ctx.device
        sl = torch.arange(self.way, device=dev).repeat_interleave(shot)
        ql = torch.arange(self.way, device=dev).repeat_interleave(query)
        self.train()
        for i in ctx.bar(range(iterations), f"{self.registry_name} meta-iterations"):
            eps = sampler.sample(i * batch, batch)
            opt.zero_grad(set_to_none=True)
            for e in range(batch):
                xs = torch.stack([tf(train.load(int(j))) for j in eps.support[e].reshape(-1)])
                xq = torch.stack([tf(train.load(int(j))) for j in eps.query[e].reshape(-1)])
                learner = self.adapt(xs.to(dev), sl, self.opt["steps_train"],
                                     self.opt["first_order"])
                loss = F.cross_entropy(learner(self._features(xq.to(dev))), ql) / batch
                loss.backward()
            opt.step()
        self.eval()


@register_method("maml", task="fsl",
                 summary="MAML: meta-learned initialisation, inner SGD steps (learn2learn)")
class MAML(GradientMetaLearner):
    pass


@register_method("anil", task="fsl",
                 summary="ANIL: MAML with the inner loop on the head only (learn2learn)")
class ANIL(GradientMetaLearner):
    adapt_body = False


@register_method("metasgd", task="fsl",
                 summary="Meta-SGD: meta-learned initialisation and per-parameter step sizes "
                         "(learn2learn)")
class MetaSGD(GradientMetaLearner):
    #: ``lr_init: [low, high]``: initial step sizes uniform in that range; null: ``inner_lr``.
    options = {**DEFAULTS, "lr_init": None}

    def wrap(self, l2l, module: nn.Module) -> nn.Module:
        lo, hi = self.opt["lr_init"] or [self.opt["inner_lr"]] * 2
        lrs = nn.ParameterList([nn.Parameter(torch.empty_like(p).uniform_(lo, hi))
                                for p in module.parameters()])
        return l2l.algorithms.MetaSGD(module, first_order=self.opt["first_order"], lrs=lrs)

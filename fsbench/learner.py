"""The learner contract. Methods implement these; the runners own the loop, evaluation and I/O.

FSL (episodic) learners::

    class MyLearner(FSLLearner):
        def fit(self, train, ctx): ...                       # optional (pretraining)
        def embed(self, x): ...                              # optional: frozen feature extractor
        def predict_episode(self, support, support_labels, query) -> logits  # (Q, way)

If a learner defines :meth:`embed`, the runner extracts every test image's feature once and episodes
become index operations on the feature matrix; ``support``/``query`` are then features.

FSCIL learners::

    class MyLearner(FSCILLearner):
        def fit_base(self, session, ctx): ...
        def learn_session(self, session, ctx): ...
        def predict(self, x) -> logits over the classes seen so far

With ``frozen_after_base = True`` plus :meth:`embed` and :meth:`predict_features`, the runner
extracts test features once after the base session and feeds ``session.features`` to
:meth:`learn_session`.

A method never evaluates itself: it has no access to test labels.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from fsbench import learnerstate
from fsbench.episodes.base import ImageDataset


@dataclass
class DataInfo:
    """What a learner may know about the data before training."""

    channels: int
    image_size: int
    num_classes: int  # all classes the run will see (FSCIL) or train classes (FSL)
    num_base: int = 0
    way: int = 0
    shot: int = 0
    #: Readable names of the training classes (FSL: per train label; FSCIL: per class position),
    #: from :func:`fsbench.clip.class_names`; names, never test labels. None when not filled.
    class_names: Optional[list] = None


@dataclass
class Session:
    """One FSCIL session as the learner sees it (labels already in session order)."""

    index: int
    data: ImageDataset  # training images of this session (base session: all base images)
    new_classes: np.ndarray  # class positions introduced in this session
    num_seen: int  # classes seen after this session
    features: Optional[torch.Tensor] = None  # data's features, when the runner caches them


class Learner:
    """Common base: configuration, device and (de)serialisation of state."""

    task = "both"
    #: The backbone does not change after the base session (enables feature caching).
    frozen_after_base = False
    #: The method's own configuration blocks, ``{key: MethodBlock model}`` (``""``: top-level
    #: keys); the learner validates them when it is built, and the README's table of method keys
    #: is generated from them (:func:`fsbench.configschema.markdown_method_table`).
    config_blocks: dict = {}

    def __init__(self, config: dict, info: DataInfo):
        self.config = dict(config)
        self.info = info
        self.device = torch.device("cpu")

    def __init_subclass__(cls, **kwargs):
        """Every learner's constructor ends with :func:`fsbench.learnerstate.remember_initial`:
        checkpoints then hold what changed since construction, also for a learner built outside
        the runner (a test, the Python API), so a configuration-derived attribute (TEEN's
        ``opts``) is never carried from one learner into another by ``load_state_dict``."""
        super().__init_subclass__(**kwargs)
        if "__init__" not in vars(cls):
            return
        init = cls.__init__

        @functools.wraps(init)
        def __init__(self, *args, **kw):
            init(self, *args, **kw)
            if type(self).__init__ is __init__:  # the outermost constructor has finished
                learnerstate.remember_initial(self)
        cls.__init__ = __init__

    def to(self, device) -> "Learner":
        self.device = torch.device(device)
        for m in self.modules().values():
            m.to(self.device)
        return self

    def modules(self) -> dict[str, torch.nn.Module]:
        """Named ``nn.Module`` parts (moved to the device and checkpointed)."""
        return {k: v for k, v in vars(self).items() if isinstance(v, torch.nn.Module)}

    #: Attributes the automatic checkpointing skips (caches the learner rebuilds itself).
    checkpoint_exclude: tuple = ()

    def extra_state(self) -> dict[str, Any]:
        """Non-module state as tensors / plain Python values (for checkpoints). Tensor, NumPy
        and plain attributes are saved without it (:mod:`fsbench.learnerstate`); an attribute
        named by a key returned here is left to this method and :meth:`load_extra_state`."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        """Modules, :meth:`extra_state` and every tensor, NumPy or plain attribute changed since
        the constructor (:mod:`fsbench.learnerstate`)."""
        extra = self.extra_state()
        return {"modules": {k: m.state_dict() for k, m in self.modules().items()},
                "extra": extra, "attributes": learnerstate.save(self, extra)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mods = self.modules()
        for k, sd in state["modules"].items():
            mods[k].load_state_dict(sd)
        learnerstate.load(self, state.get("attributes", {}))
        self.load_extra_state(state.get("extra", {}))

    def train(self, mode: bool = True) -> None:
        for m in self.modules().values():
            m.train(mode)

    def eval(self) -> None:
        self.train(False)


class FSLLearner(Learner):
    task = "fsl"
    #: ``predict_episodes`` takes ``class_names`` (the names of each episode's classes, in label
    #: order): semantic side information about the support classes, never the query labels.
    uses_class_names = False
    #: ``predict_episodes`` needs autograd (it adapts to each episode with gradient steps, e.g.
    #: MAML); the runner then evaluates with gradients enabled instead of ``torch.no_grad()``.
    needs_grad_at_eval = False

    def fit(self, train: ImageDataset, ctx) -> None:
        """Optional (pre)training on the base split; default: nothing."""

    def predict_episode(self, support: torch.Tensor, support_labels: torch.Tensor,
                        query: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(len(query), way)``; labels are 0..way-1."""
        raise NotImplementedError

    def predict_episodes(self, support: torch.Tensor, support_labels: torch.Tensor,
                         query: torch.Tensor) -> torch.Tensor:
        """Batched form: ``(E, S, ...)``, ``(E, S)``, ``(E, Q, ...)`` -> ``(E, Q, way)``.

        The default loops over :meth:`predict_episode`; transductive methods override it.
        """
        return torch.stack([self.predict_episode(s, l, q)
                            for s, l, q in zip(support, support_labels, query)])


class FSCILLearner(Learner):
    task = "fscil"
    #: Learners with the same family train the same base model and may reuse each other's
    #: (``--base-from``, :mod:`fsbench.basemodel`); None: the class itself.
    base_family: Optional[str] = None
    #: Top-level configuration blocks used only after the base session (they may differ
    #: between runs that share a base model), e.g. TEEN's ``("teen",)``.
    session_config: tuple = ()

    def fit_base(self, session: Session, ctx) -> None:
        raise NotImplementedError

    def learn_session(self, session: Session, ctx) -> None:
        raise NotImplementedError

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits over the classes seen so far for a batch of images."""
        return self.predict_features(self.embed(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def predict_features(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

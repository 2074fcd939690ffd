"""The FSCIL session runner: learn each session, evaluate on every seen class, checkpoint, log.

For session ``t`` the learner gets a :class:`~fsbench.learner.Session` whose labels are class
*positions* (base classes first); it is then evaluated top-1 over the test images of all
``num_base + t * way`` seen classes, the logits restricted to those classes. A learner with
``frozen_after_base`` is evaluated on test features extracted once after the base session.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from fsbench import basemodel
from fsbench import distributed as dist
from fsbench.context import RunContext, derive_seed, seed_everything
from fsbench.episodes.base import FSCILBenchmark
from fsbench.learner import FSCILLearner, Session
from fsbench.metrics import session_metrics, summarize_sessions
from fsbench.results import atomic_torch_save, remove_stale_temporaries, restore_learner
from fsbench.trainstate import FILE as EPOCHS_FILE
from fsbench.trainstate import EpochCheckpoint

CHECKPOINT = "checkpoint.pt"


def remap(bench: FSCILBenchmark):
    """Train and test datasets relabelled to class positions; images of classes outside the
    protocol are dropped."""
    proto = bench.protocol
    names = [bench.train.class_names[c] if c < len(bench.train.class_names) else str(c)
             for c in proto.class_order]
    out = []
    for ds in (bench.train, bench.test):
        pos = proto.position_of(ds.labels)
        out.append(ds.with_labels(pos, names))
    return out


@torch.no_grad()
def predict_all(learner: FSCILLearner, ctx: RunContext, test, idx: np.ndarray,
                features: torch.Tensor | None, num_seen: int) -> np.ndarray:
    """Predicted class positions of the test images ``idx``, in order. Under torchrun batch ``b``
    is predicted on rank ``b mod world`` (the batches of one process, so the same predictions)."""
    learner.eval()
    if dist.world_size() == 1:  # the original loop (its tensor lifetimes are part of the numbers)
        preds = []
        if features is not None:
            for s in range(0, len(idx), 4096):
                f = features[torch.from_numpy(idx[s:s + 4096])].to(ctx.device)
                preds.append(learner.predict_features(f)[:, :num_seen].argmax(1).cpu())
        else:
            bs = int(ctx.get("eval.batch_size", 256))
            with ctx.bar(None, "evaluation", total=-(-len(idx) // bs)) as bar:  # advanced by hand
                for x, _ in ctx.batches(test.subset(idx), batch_size=bs):
                    preds.append(learner.predict(x.to(ctx.device))[:, :num_seen].argmax(1).cpu())
                    bar.update()
        return torch.cat(preds).numpy() if preds else np.empty(0, dtype=np.int64)
    size = 4096 if features is not None else int(ctx.get("eval.batch_size", 256))

    def one(b):
        part = idx[b * size:(b + 1) * size]
        if features is not None:
            out = learner.predict_features(features[torch.from_numpy(part)].to(ctx.device))
        else:
            ((x, _),) = ctx.batches(test.subset(part), batch_size=len(part))
            out = learner.predict(x.to(ctx.device))
        return out[:, :num_seen].argmax(1).cpu()

    bar = (lambda it: it) if features is not None else \
        (lambda it: ctx.bar(it, "evaluation"))
    preds = dist.map_in_order(one, -(-len(idx) // size), bar)
    return torch.cat(preds).numpy() if preds else np.empty(0, dtype=np.int64)


def run_sessions(learner: FSCILLearner, bench: FSCILBenchmark, ctx: RunContext,
                 run_dir: Path, loggers=(), resume: bool = False,
                 stop_after: int | None = None, base_from: str | Path | None = None) -> dict:
    """Run every session; returns ``{"sessions": [...], "avg", "pd", "last", "timings"}``.

    ``stop_after`` ends the run after that session (used to test resuming). ``base_from``: an
    earlier run whose base model (``base.pt``) replaces the base training
    (:mod:`fsbench.basemodel`); every run writes its own ``base.pt`` after session 0."""
    proto = bench.protocol
    train, test = remap(bench)
    ckpt_path = Path(run_dir) / CHECKPOINT
    sessions: list[dict] = []
    times: list[float] = []
    start = 0
    epochs = ctx.extras["epochs"] = EpochCheckpoint(Path(run_dir) / EPOCHS_FILE)
    if resume and dist.is_main():
        remove_stale_temporaries(run_dir)
    elapsed_before = 0.0  # seconds of earlier processes of this run, up to their checkpoint
    started = time.perf_counter()
    provenance = None  # where the base model came from (--base-from)
    if resume and ckpt_path.exists():
        state = restore_learner(learner, ckpt_path)
        sessions, times = list(state["sessions"]), list(state["times"])
        start = int(state["session"]) + 1
        elapsed_before = float(state.get("elapsed_s", sum(times)))
        provenance = state.get("base_from")
        ctx.curves.restore(state.get("curves", []))
    if resume and (mid := epochs.elapsed()) is not None:  # killed during a training
        elapsed_before = mid
    epochs.clock = lambda: elapsed_before + time.perf_counter() - started
    if resume:
        for lg in loggers:
            lg.on_resume(start)
    test_features = None
    if ctx.get("select_on_test", False):  # the original CEC/TEEN protocol; flagged in the result
        ctx.extras["base_test"] = test.subset(proto.test_indices(0, bench.test.labels))
    for t in range(start, proto.num_sessions):
        t0 = time.perf_counter()
        seed_everything(derive_seed(ctx.seed, "session", t))
        ctx.curves.session = t
        sess = Session(index=t, data=train.subset(proto.train_indices(t)),
                       new_classes=proto.session_classes(t), num_seen=proto.num_seen(t))
        if t == 0:
            base_id = basemodel.identity(learner, ctx.config, proto.split_id, ctx.seed)
            if base_from is not None:
                provenance = basemodel.load(base_from, learner, base_id)
            else:
                learner.train()
                learner.fit_base(sess, ctx)
        else:
            if learner.frozen_after_base:
                learner.eval()
                sess.features = ctx.extract(learner.embed, sess.data, desc=f"session {t} shots")
            learner.learn_session(sess, ctx)
        dist.broadcast_module(*learner.modules().values())  # rank 0's model everywhere
        if learner.frozen_after_base and test_features is None:
            learner.eval()
            test_features = ctx.extract(learner.embed, test, desc="test features")
        idx = proto.test_indices(t, bench.test.labels)
        pred = predict_all(learner, ctx, test, idx,
                           test_features if learner.frozen_after_base else None, sess.num_seen)
        record = session_metrics(pred, test.labels[idx], proto.num_base, t, sess.num_seen)
        times.append(time.perf_counter() - t0)
        record["seconds"] = round(times[-1], 3)
        sessions.append(record)
        for lg in loggers:
            lg.on_session(record)
        if dist.is_main():  # every rank holds the same learner; rank 0 writes it
            if t == 0:  # before the checkpoint: a resumed run never lacks its base.pt
                basemodel.save(run_dir, learner, base_id, ctx.config.get("method"))
            atomic_torch_save(ckpt_path, {"session": t, "learner": learner.state_dict(),
                                          "sessions": sessions, "times": times,
                                          "curves": ctx.curves.state(),
                                          "elapsed_s": elapsed_before + time.perf_counter() - started,
                                          "base_from": provenance})
            epochs.clear()  # the session's checkpoint supersedes its training's epoch checkpoint
        if stop_after is not None and t >= stop_after and t < proto.num_sessions - 1:
            return {"sessions": sessions, "partial": True, "times": times,
                    "elapsed_before_s": elapsed_before, "base_from": provenance}
    out = summarize_sessions(sessions)
    out["base_from"] = provenance
    out["times"] = times
    out["elapsed_before_s"] = elapsed_before
    return out

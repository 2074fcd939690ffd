"""The FSL episode runner: (pre)train once, then evaluate on a fixed set of test episodes.

Episodes are drawn once with the largest shot of ``eval.shots`` and frozen into a manifest
(``episodes.npz`` in the run folder, or ``eval.manifest`` to reuse one), so every method and every
shot is evaluated on identical episodes; a k-shot task keeps the first k support images per class.
Learners with ``embed`` are evaluated on features extracted once per test image. Learners that
set ``uses_class_names`` (methods with class semantics, e.g. DVLA-RL) also get the names of each
episode's classes in label order: the support labels are known in few-shot learning, and a name is
side information about a support class; the query labels are never passed. Evaluation runs
under ``torch.no_grad()`` except for learners that declare ``needs_grad_at_eval`` (they adapt to
each episode with gradient steps, e.g. MAML).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from fsbench import distributed as dist
from fsbench.context import RunContext, derive_seed, seed_everything
from fsbench.episodes.base import ArrayDataset, FSLBenchmark, ImageDataset
from fsbench.episodes.sampler import EpisodeSampler, load_manifest, save_manifest
from fsbench.errors import EpisodeError, UserError
from fsbench.heads import get_head
from fsbench.learner import FSLLearner
from fsbench.metrics import mean_ci95
from fsbench.results import atomic_torch_save, remove_stale_temporaries, restore_learner
from fsbench.trainstate import FILE as EPOCHS_FILE
from fsbench.trainstate import EpochCheckpoint

CHECKPOINT = "checkpoint.pt"
MANIFEST = "episodes.npz"


def _images(data: ImageDataset, idx: np.ndarray, ctx: RunContext) -> torch.Tensor:
    flat = idx.reshape(-1)
    tf = ctx.test_transform
    if isinstance(data, ArrayDataset) and tf.is_identity:
        x = tf.batch(data.load_many(flat))
    else:
        x = torch.stack([tf(data.load(int(i))) for i in flat])
    return x.view(*idx.shape, *x.shape[1:])


def eval_settings(ctx: RunContext) -> tuple[int, list[int], int, int]:
    ev = ctx.config.get("eval", {})
    way, query = int(ev.get("way", 5)), int(ev.get("query", 15))
    shots = sorted({int(s) for s in ev.get("shots", [1, 5])})
    n_episodes = int(ev.get("episodes", 600))
    if not shots or min(shots) < 1 or n_episodes < 1 or way < 2 or query < 1:
        raise UserError("eval: way >= 2 and shots, query, episodes >= 1 are needed; "
                        f"got way={way} shots={shots} query={query} episodes={n_episodes}")
    return way, shots, query, n_episodes


def prepare_episodes(test: ImageDataset, ctx: RunContext, run_dir: Path):
    """The fixed test episodes: loaded from ``eval.manifest`` / the run's manifest, or drawn once
    (with the largest shot) and saved. Under torchrun rank 0 prepares them for every rank."""
    return dist.on_main(lambda: _prepare_episodes(test, ctx, run_dir), "prepare the episodes")


def _prepare_episodes(test: ImageDataset, ctx: RunContext, run_dir: Path):
    ev = ctx.config.get("eval", {})
    way, shots, query, n_episodes = eval_settings(ctx)
    manifest_path = Path(ev.get("manifest") or Path(run_dir) / MANIFEST)
    if manifest_path.exists():
        return load_manifest(manifest_path, test.labels)[0]
    sampler = EpisodeSampler(test.labels, way, max(shots), query, seed=int(ev.get("seed", 0)))
    episodes = sampler.sample(0, n_episodes)
    save_manifest(manifest_path, episodes, test.labels,
                  {"way": way, "shot": max(shots), "query": query, "seed": ev.get("seed", 0)})
    return episodes


def evaluate(learner: FSLLearner, test: ImageDataset, ctx: RunContext, run_dir: Path,
             loggers=(), episodes=None) -> dict:
    way, shots, query, _ = eval_settings(ctx)
    if episodes is None:
        episodes = prepare_episodes(test, ctx, run_dir)
    n_episodes = len(episodes.classes)
    head = get_head(ctx.config.get("head"), ctx.config)
    learner.eval()
    features = None
    if hasattr(learner, "embed"):
        features = ctx.extract(learner.embed, test, desc="test features")
    elif head is not None:
        raise UserError(f"head={ctx.config.get('head')}: this learner has no embed(); heads need "
                        f"features")
    predict = head or learner.predict_episodes
    with_names = head is None and bool(getattr(learner, "uses_class_names", False))
    needs_grad = head is None and bool(getattr(learner, "needs_grad_at_eval", False))
    chunk = int(ctx.get("eval.episodes_per_batch", 100))
    out = {}
    for k in shots:
        eps = episodes.with_shot(k)

        def one(c, eps=eps, k=k):
            s = c * chunk
            sup = eps.support[s:s + chunk].reshape(len(eps.support[s:s + chunk]), -1)
            qry = eps.query[s:s + chunk].reshape(len(eps.query[s:s + chunk]), -1)
            e = len(sup)
            sl = torch.arange(way).repeat_interleave(k).expand(e, -1)
            ql = torch.arange(way).repeat_interleave(query).expand(e, -1)
            if features is not None:
                xs, xq = features[torch.from_numpy(sup)], features[torch.from_numpy(qry)]
            else:
                xs, xq = _images(test, sup, ctx), _images(test, qry, ctx)
            kw = {}
            if with_names:
                kw["class_names"] = [[test.class_names[int(c)] for c in row]
                                     for row in eps.classes[s:s + chunk]]
            with torch.enable_grad() if needs_grad else torch.no_grad():
                try:
                    logits = predict(xs.to(ctx.device), sl.to(ctx.device), xq.to(ctx.device), **kw)
                except EpisodeError as e:  # position in this chunk -> global episode index
                    raise e.shifted(s) from None
            if not torch.isfinite(logits).all():
                bad = s + int((~torch.isfinite(logits)).flatten(1).any(1).nonzero()[0])
                raise UserError(f"{ctx.config['method']}: non-finite logits in episode {bad}; "
                                f"check the features (NaN/inf) or lower the learning rate")
            return ((logits.argmax(-1).cpu() == ql).float().mean(1) * 100).tolist()

        # Chunk c of episodes on rank c mod world: the chunks of one process, so the same numbers.
        parts = dist.map_in_order(one, -(-n_episodes // chunk),
                                  lambda it, k=k: ctx.bar(it, f"{k}-shot episodes"))
        accs = [a for part in parts for a in part]
        mean, ci = mean_ci95(accs)
        rec = {"mean": mean, "ci95": ci, "n_episodes": len(accs), "per_episode": accs}
        out[str(k)] = rec
        for lg in loggers:
            lg.on_shot(k, rec)
    return {"shots": out, "way": way, "query": query, "episodes": n_episodes}


def run_fsl(learner: FSLLearner, bench: FSLBenchmark, ctx: RunContext, run_dir: Path,
            loggers=(), resume: bool = False) -> dict:
    ckpt = Path(run_dir) / CHECKPOINT
    episodes = prepare_episodes(bench.test, ctx, run_dir)  # fail early on impossible episodes
    t0 = time.perf_counter()
    elapsed_before = 0.0
    # Trainers checkpoint their epochs here (fsbench.trainstate); a resumed fit continues there.
    epochs = ctx.extras["epochs"] = EpochCheckpoint(Path(run_dir) / EPOCHS_FILE)
    if resume and dist.is_main():
        remove_stale_temporaries(run_dir)
    if resume:
        for lg in loggers:  # the episodes are evaluated again; a finished fit (session 0) is kept
            lg.on_resume(1 if ckpt.exists() else 0)
    if resume and ckpt.exists():
        state = restore_learner(learner, ckpt)
        elapsed_before = float(state.get("elapsed_s", 0.0))
        ctx.curves.restore(state.get("curves", []))
    else:
        if resume and (mid := epochs.elapsed()) is not None:  # killed during the fit
            elapsed_before = mid
        epochs.clock = lambda: elapsed_before + time.perf_counter() - t0
        seed_everything(derive_seed(ctx.seed, "fit"))
        ctx.extras["val"] = bench.val
        learner.train()
        learner.fit(bench.train, ctx)
        dist.broadcast_module(*learner.modules().values())  # rank 0's model everywhere
        if dist.is_main():
            atomic_torch_save(ckpt, {"stage": "fit", "learner": learner.state_dict(),
                                     "curves": ctx.curves.state(),
                                     "elapsed_s": elapsed_before + time.perf_counter() - t0})
            epochs.clear()  # the fit's checkpoint supersedes its epochs' checkpoint
    fit_s = time.perf_counter() - t0
    seed_everything(derive_seed(ctx.seed, "eval"))
    metrics = evaluate(learner, bench.test, ctx, run_dir, loggers, episodes)
    metrics["times"] = [fit_s, time.perf_counter() - t0 - fit_s]
    metrics["elapsed_before_s"] = elapsed_before
    return metrics

"""Metrics: FSCIL session accuracies (all / base / novel / harmonic mean, AVG, PD) and FSL
episode accuracy with a 95% confidence interval."""
from __future__ import annotations

import math

import numpy as np


def harmonic_mean(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def session_metrics(pred: np.ndarray, target: np.ndarray, num_base: int, session: int,
                    num_seen: int) -> dict:
    """Top-1 accuracies in percent over the test images of every seen class (sample-weighted),
    on base-class images, on novel-class images, and the harmonic mean of the last two."""
    pred, target = np.asarray(pred), np.asarray(target)
    correct = pred == target
    base = target < num_base
    acc = 100.0 * correct.mean() if len(correct) else float("nan")
    base_acc = float(100.0 * correct[base].mean()) if base.any() else None
    novel_acc = float(100.0 * correct[~base].mean()) if (~base).any() else None
    return {"session": session, "num_seen": num_seen, "acc": float(acc),
            "base_acc": base_acc, "novel_acc": novel_acc,
            "hm": harmonic_mean(base_acc, novel_acc), "num_test": int(len(target))}


def summarize_sessions(sessions: list[dict]) -> dict:
    """AVG = mean accuracy over all sessions (base included); PD = first - last."""
    accs = [s["acc"] for s in sessions]
    return {"sessions": sessions, "avg": float(np.mean(accs)),
            "pd": float(accs[0] - accs[-1]), "last": float(accs[-1])}


def mean_ci95(per_episode) -> tuple[float, float]:
    """Mean and 95% confidence half-width (1.96 * std / sqrt(n)) of per-episode accuracies."""
    a = np.asarray(per_episode, dtype=np.float64)
    if len(a) == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(1.96 * a.std() / math.sqrt(len(a)))

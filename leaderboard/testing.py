"""Fabricated results, submissions and leaderboard folders for tests (no real runs involved)."""
from __future__ import annotations

import copy
import json
from pathlib import Path

from . import schema, store

SPLIT_SHA = "3f" * 32


def _round(x: float) -> float:
    return round(x, 4)


def fake_result(task: str = "fscil", method: str = "teen", dataset: str = "cub200",
                accs: list[float] | None = None, seed: int = 0, split_id: str = SPLIT_SHA,
                backbone: str = "resnet18", pretraining: str = "imagenet",
                shots: dict | None = None, **flags) -> dict:
    """A ``fsbench.result/1`` dict as ``fsbench run`` writes it (numbers are made up)."""
    generated = split_id == "generated"
    result = {
        "schema": store.RESULT_SCHEMA, "fsbench_version": "0.1.0", "task": task,
        "method": method, "dataset": dataset, "seed": seed, "status": "complete",
        "config": {"method": method, "dataset": dataset, "seed": seed},
        "config_hash": "ab" * 32,
        "backbone": backbone, "pretraining": pretraining,
        "flags": {"selected_on_test": False, "generated_split": generated,
                  "nonstandard_backbone": False, **flags},
        "environment": {"python": "3.11.2", "torch": "2.4.0", "numpy": "2.0.0",
                        "platform": "Linux", "device": "cpu", "git_commit": None,
                        "cpu_count": 2},
        "timings": {"total_s": 1.0}, "started": "2026-01-01T00:00:00+00:00",
        "finished": "2026-01-01T00:01:00+00:00",
    }
    if task == "fscil":
        proto = {"name": dataset, **schema.FSCIL_PROTOCOLS[dataset]}
        n = proto["num_sessions"]
        accs = list(accs) if accs is not None else [80.0 - 2.0 * i for i in range(n)]
        result["split"] = {"id": split_id, "generated": generated, "protocol": proto}
        result["metrics"] = {
            "sessions": [{"session": i, "num_seen": proto["num_base"] + i * proto["way"],
                          "acc": a, "base_acc": a, "novel_acc": None if i == 0 else a - 5,
                          "hm": None, "num_test": 1000 + 50 * i} for i, a in enumerate(accs)],
            "avg": _round(sum(accs) / len(accs)), "pd": _round(accs[0] - accs[-1]),
            "last": accs[-1]}
        result["timings"]["per_session_s"] = [0.1] * len(accs)
    else:
        shots = shots or {"1": (55.0, 0.4), "5": (72.0, 0.3)}
        result["split"] = {"id": split_id, "generated": generated, "way": 5, "query": 15,
                           "shots": [int(k) for k in shots], "episodes": 600,
                           "manifest_sha256": "cd" * 32}
        result["metrics"] = {"shots": {k: {"mean": m, "ci95": c, "n_episodes": 600,
                                           "per_episode": [m] * 5}
                                       for k, (m, c) in shots.items()},
                             "way": 5, "query": 15, "episodes": 600}
    return result


def submission(**kwargs) -> dict:
    """A valid submission made from :func:`fake_result`."""
    return store.result_to_submission(fake_result(**kwargs), "fake")


def published_entry(method: str = "teen", dataset: str = "cub200",
                    sessions: list | None = None, display: str | None = None,
                    verified: bool = True, **extra) -> dict:
    proto = {"name": dataset, **schema.FSCIL_PROTOCOLS[dataset]}
    n = proto["num_sessions"]
    sessions = list(sessions) if sessions is not None else [80.0 - 2.0 * i for i in range(n)]
    known = all(v is not None for v in sessions)
    e = {"id": f"{method}/{dataset}/fscil", "method": method,
         "display_name": display or method.upper(), "task": "fscil", "dataset": dataset,
         "protocol": proto, "paper": f"A paper about {method}", "venue": "Conf", "year": 2023,
         "backbone": "resnet18", "pretraining": "imagenet",
         "metrics": {"sessions": sessions,
                     "avg": round(sum(sessions) / len(sessions), 2) if known else None,
                     "pd": round(sessions[0] - sessions[-1], 2) if known else None},
         "source": f"Table 1 of the {method} paper", "verified": verified}
    e.update(extra)
    return e


def fsl_published_entry(method: str = "protonet", dataset: str = "miniimagenet",
                        shots: dict | None = None, verified: bool = False, **extra) -> dict:
    shots = shots or {"1": (60.0, 0.5), "5": (78.0, 0.4)}
    e = {"id": f"{method}/{dataset}/5way", "method": method, "display_name": method,
         "task": "fsl", "dataset": dataset, "protocol": {"name": "5way", "way": 5},
         "paper": None, "venue": None, "year": None, "backbone": None, "pretraining": None,
         "metrics": {"shots": {k: {"mean": m, "ci95": c} for k, (m, c) in shots.items()}},
         "source": "a table", "verified": verified}
    e.update(extra)
    return e


def published_doc(entries: list[dict]) -> dict:
    return {"schema_version": schema.SCHEMA_VERSION, "kind": "fsbench.published",
            "entries": copy.deepcopy(entries)}


def make_leaderboard(root: str | Path, published: list[dict],
                     submissions: list[dict] = ()) -> Path:
    """A leaderboard folder with one published file and the given submissions."""
    root = Path(root)
    (root / "published").mkdir(parents=True, exist_ok=True)
    (root / "published" / "test.json").write_text(json.dumps(published_doc(published),
                                                             indent=2))
    for sub in submissions:
        store.write_submission(sub, root)
    return root


def snapshot(root: str | Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (to check that nothing changed)."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}

"""Reuse a trained base session: ``fsbench run ... --base-from RUN_DIR``.

Every FSCIL run keeps the learner's state after session 0 in ``RUN_DIR/base.pt`` (the session
checkpoint ``checkpoint.pt`` is overwritten by each session), with the *identity* of that base
model. A later run given ``--base-from RUN_DIR`` loads it instead of calling ``fit_base`` and
evaluates session 0 itself (the runner owns every number). What makes a base model reusable
(:func:`identity`):

- the same dataset, split id and seed;
- the same **base family**: by default the learner class itself; learners that build and train
  the same base model declare the same ``base_family`` (``ncm`` and ``teen`` share
  ``"decoupled-cosine"``, so a TEEN alpha/tau sweep or a comparison with ncm reuses one base);
- the same configuration apart from run-level keys (:data:`RUN_LEVEL`: method name, device,
  workers, evaluation batch size) and the blocks either learner declares incremental-only in
  ``session_config`` (TEEN's ``teen``: its calibration happens after the base session).

A mismatch is a one-line refusal naming the first differing key. ``result.json`` records where
the base came from (``base_from``: the run folder, its method and the SHA-256 of ``base.pt``).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from fsbench.config import get
from fsbench.errors import UserError

FILE = "base.pt"
#: Keys that do not change a base model: the method's name, hardware, evaluation batching.
RUN_LEVEL = ("method", "device", "num_workers", "eval")


def family(learner) -> str:
    cls = type(learner)
    return getattr(cls, "base_family", None) or f"{cls.__module__}.{cls.__qualname__}"


def identity(learner, cfg: dict, split_id: str, seed: int) -> dict:
    """What must agree for two runs to share a base model (plain data, stored in base.pt)."""
    skip = set(RUN_LEVEL) | set(getattr(type(learner), "session_config", ()))
    return {"dataset": cfg.get("dataset"), "split": split_id, "seed": int(seed),
            "family": family(learner), "session_config": sorted(skip - set(RUN_LEVEL)),
            "config": {k: v for k, v in cfg.items() if k not in skip}}


def _first_difference(a, b, prefix: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                return f"{prefix}{k}"
            found = _first_difference(a[k], b[k], f"{prefix}{k}.")
            if found:
                return found
        return None
    return None if a == b else prefix.rstrip(".")


def check(saved: dict, mine: dict, src: Path) -> None:
    """Refuse (one line) when the base model of ``src`` does not fit this run."""
    where = f"--base-from {src}"
    for key, what in (("dataset", "dataset"), ("split", "split"), ("seed", "seed"),
                      ("family", "base model (learner family)")):
        if saved.get(key) != mine[key]:
            raise UserError(f"{where}: its {what} is {saved.get(key)!r}, this run's "
                            f"{mine[key]!r}; a base model is reused only for the same "
                            f"{what}")
    skip = set(saved.get("session_config") or []) | set(mine["session_config"])
    theirs = {k: v for k, v in (saved.get("config") or {}).items() if k not in skip}
    ours = {k: v for k, v in mine["config"].items() if k not in skip}
    key = _first_difference(theirs, ours)
    if key:
        free = ", ".join(sorted(skip - set(RUN_LEVEL))) or "no key"
        raise UserError(f"{where}: its base session used {key} = "
                        f"{get(theirs, key, '(absent)')!r}, this run "
                        f"{get(ours, key, '(absent)')!r}; the base configuration must match "
                        f"(only {free} and run-level keys may differ)")


def save(run_dir: Path, learner, ident: dict, method: str) -> None:
    from fsbench.results import atomic_torch_save

    atomic_torch_save(Path(run_dir) / FILE, {"identity": ident, "method": method,
                                             "learner": learner.state_dict()})


def load(src: str | Path, learner, ident: dict) -> dict:
    """Load ``src/base.pt`` into ``learner`` after :func:`check`; returns the provenance that
    ``result.json`` records as ``base_from``."""
    from fsbench.results import load_checkpoint

    src = Path(src)
    path = src / FILE
    if not path.is_file():
        raise UserError(f"--base-from {src}: no {FILE} there; pass the folder of an FSCIL run "
                        f"that finished its base session")
    state = load_checkpoint(path)
    if not isinstance(state, dict) or not isinstance(state.get("identity"), dict) \
            or not isinstance(state["identity"].get("config"), dict) or "learner" not in state:
        raise UserError(f"--base-from {src}: {FILE} is not a fsbench base model; rerun that run")
    check(state["identity"], ident, src)
    try:
        learner.load_state_dict(state["learner"])
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as e:
        detail = " ".join(str(e).split())[:200]
        raise UserError(f"--base-from {src}: its base model does not fit this learner "
                        f"({type(e).__name__}: {detail})") from None
    return {"run_dir": str(src), "method": state.get("method"),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}

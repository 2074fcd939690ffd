"""Does the reproducible CPU mode hold on this machine? ``python benchmarks/check_reproducible.py``

Re-runs entries of ``leaderboard/expected/glyphs.json`` (their short-budget overrides, seed 0) in
fresh processes under several outer environments - this machine as it is, the environment of an
older or smaller machine (SSE kernels, one thread) and, where the CPU has AVX-512, one that asks
for AVX-512 everywhere - each once plain and once with ``--reproducible``. It prints one row per
(method, mode, environment) and says whether the reproducible runs are identical to each other
and to the expected file. A plain run that moves with the environment shows what the mode guards
against.

Options: ``--methods protonet,finetune`` (default: protonet, ncm, finetune), ``--no-plain``
(only the reproducible runs), ``--out FILE`` (the rows as JSON).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
EXPECTED = HERE / "leaderboard" / "expected" / "glyphs.json"


def _avx512() -> bool:
    try:
        return "avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def environments() -> dict[str, dict]:
    envs = {"this machine": {},
            "older machine (SSE, 1 thread)": {
                "ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41",
                "MKL_CBWR": "COMPATIBLE", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "OPENBLAS_CORETYPE": "Prescott"}}
    if _avx512():
        envs["AVX-512 everywhere"] = {"ATEN_CPU_CAPABILITY": "avx512",
                                      "ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "MKL_CBWR": "AVX512"}
    return envs


def run_once(entry: dict, env_extra: dict, reproducible: bool) -> dict:
    from fsbench import repro

    env = {k: v for k, v in os.environ.items() if k not in repro.environment()}
    env.update(env_extra)
    env.setdefault("HF_HUB_OFFLINE", "1")
    args = [sys.executable, "-m", "fsbench.cli", "run", "--method", entry["method"],
            "--dataset", "glyphs", "--seed", str(entry["seed"]), "--no-progress"]
    for k, v in entry.get("overrides", {}).items():
        args += ["--set", f"{k}={json.dumps(v)}"]
    if reproducible:
        args.append("--reproducible")
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run(args + ["--out", out], env=env, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{entry['method']} failed: {proc.stderr.strip()[-500:]}")
        (run_dir,) = Path(out).iterdir()
        result = json.loads((run_dir / "result.json").read_text())
    from fsbench.leaderboard.regress import metrics_of

    return {"metrics": metrics_of(result), "capability": result["environment"]["cpu_capability"],
            "threads": result["environment"]["threads"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="protonet,ncm,finetune")
    ap.add_argument("--no-plain", action="store_true", help="skip the plain (unpinned) runs")
    ap.add_argument("--out", help="write the rows as JSON here")
    args = ap.parse_args()
    doc = json.loads(EXPECTED.read_text())
    by = {e["method"]: e for e in doc["entries"]}
    rows, ok = [], True
    for m in args.methods.split(","):
        entry = by[m]
        for mode in ([True] if args.no_plain else [True, False]):
            seen = []
            for name, extra in environments().items():
                r = run_once(entry, extra, mode)
                seen.append(r["metrics"])
                same_expected = r["metrics"] == entry["metrics"]
                rows.append({"method": m, "mode": "reproducible" if mode else "plain",
                             "environment": name, "capability": r["capability"],
                             "threads": r["threads"], "metrics": r["metrics"],
                             "equals_expected": same_expected})
                print(f"{m:10s} {rows[-1]['mode']:12s} {name:30s} {r['capability']:8s} "
                      f"threads {r['threads']}  equals expected: {same_expected}  "
                      f"{json.dumps(r['metrics'])[:90]}", flush=True)
            identical = all(s == seen[0] for s in seen)
            print(f"{m:10s} {'reproducible' if mode else 'plain':12s} identical across "
                  f"environments: {identical}", flush=True)
            if mode and not identical:
                ok = False
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    print("OK: reproducible runs identical in every environment" if ok else
          "FAILED: a reproducible run depends on the environment")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

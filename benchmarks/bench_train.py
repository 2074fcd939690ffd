"""Glyphs base-training throughput before and after each CPU speed change, in one run.

    python benchmarks/bench_train.py [--steps N] [--rounds R] [--threads T]

Each variant trains the TEEN glyphs preset (Conv4, batch 128, the train transform and loader) for
``--steps`` SGD steps after 3 warm-up steps, in a fresh child process (malloc settings and thread
pools are per process); the variants run in interleaved rounds and the best round is shown:

* ``baseline``      - glibc's default malloc (``FSBENCH_MALLOC=system``), NCHW;
* ``malloc``        - :func:`fsbench.memory.keep_freed_memory` (the default since issue 17;
                    ``FSBENCH_MALLOC=system`` turns it off);
* ``channels_last`` - NHWC convolutions (config key ``channels_last``, opt-in);
* ``both``          - the two together;
* ``1 thread``      - ``malloc`` at one thread, to say which thread count to choose.

Besides images/s it prints minor page faults, kernel (system) CPU time and the peak resident set
of each child, and whether the trained weights are bit-identical to ``baseline`` (same seed, same
batches). Run it on a quiet machine: the ratios are only as good as the quiet.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

VARIANTS = {  # name: (FSBENCH_MALLOC, channels_last, threads or None = --threads)
    "baseline": ("system", False, None),
    "malloc": ("keep", False, None),
    "channels_last": ("system", True, None),
    "both": ("keep", True, None),
    "1 thread": ("keep", False, 1),
}


def child(variant: str, steps: int, threads: int, digest_to: str) -> None:
    import torch

    from fsbench.memory import keep_freed_memory

    malloc, channels_last, t = VARIANTS[variant]
    state = keep_freed_memory()  # reads FSBENCH_MALLOC, set by the parent
    assert (state == "kept") == (malloc == "keep"), state
    torch.set_num_threads(t or threads)
    torch.manual_seed(0)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_teen import glyphs_throughput

    r = glyphs_throughput(steps, channels_last=channels_last)
    torch.save(r.pop("params"), digest_to)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    r.update(minflt=ru.ru_minflt, sys_s=ru.ru_stime, user_s=ru.ru_utime,
             maxrss_mib=ru.ru_maxrss / 1024)
    print(json.dumps(r))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60, help="timed steps per child (default 60)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    ap.add_argument("--threads", type=int, default=2, help="threads (default 2)")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help="comma-separated subset of " + ", ".join(VARIANTS))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--digest-to", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.steps, args.threads, args.digest_to)
        return 0

    import tempfile

    import torch

    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    print(f"glyphs base training (TEEN preset), {args.steps} steps x {args.rounds} rounds, "
          f"{args.threads} threads; load average at start {os.getloadavg()[0]:.2f}")
    best: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            for name in names:
                env = dict(os.environ, FSBENCH_MALLOC=VARIANTS[name][0], HF_HUB_OFFLINE="1")
                digest = os.path.join(tmp, f"{rnd}-{name}.pt")
                t0 = time.perf_counter()
                out = subprocess.run([sys.executable, __file__, "--child", name, "--steps",
                                      str(args.steps), "--threads", str(args.threads),
                                      "--digest-to", digest],
                                     env=env, capture_output=True, text=True)
                if out.returncode:
                    print(out.stderr[-2000:], file=sys.stderr)
                    return 1
                r = json.loads(out.stdout.strip().splitlines()[-1])
                r["wall_s"], r["digest"] = time.perf_counter() - t0, digest
                if name not in best or r["images_per_s"] > best[name]["images_per_s"]:
                    best[name] = r
        ref = best.get("baseline")
        ref_params = torch.load(ref["digest"], weights_only=True) if ref else None
        print(f"{'variant':<15}{'images/s':>10}{'ratio':>8}{'page faults':>13}{'sys CPU s':>11}"
              f"{'peak RSS MiB':>14}  weights vs baseline")
        for name in names:
            r = best[name]
            same = "-"
            if ref_params is not None and name != "baseline":
                p = torch.load(r["digest"], weights_only=True)
                diff = float((p - ref_params).abs().max())
                same = "identical" if torch.equal(p, ref_params) else f"differ (max {diff:.1e})"
            ratio = r["images_per_s"] / ref["images_per_s"] if ref else float("nan")
            print(f"{name:<15}{r['images_per_s']:>10.0f}{ratio:>7.2f}x{r['minflt']:>13,}"
                  f"{r['sys_s']:>11.1f}{r['maxrss_mib']:>14.0f}  {same}")
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

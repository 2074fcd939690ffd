"""Selective-scan timings (plain script): ``python benchmarks/bench_scan.py [--channels D]
[--threads T] [--repeats R]``.

Compares :func:`fsbench.scan.selective_scan` (``fused``, the CPU path) with a per-token Python
loop written from the definition (``fsbench.scan.selective_scan_sequential``, the form of
mamba-ssm's ``selective_scan_ref``) at L = 4, 25, 49 tokens (Mamba-FSCIL's 2x2, 5x5 and 7x7
feature maps), d_state 256, batch 64, forward and forward + backward. Both run in float32 on the
same thread count (default 1: on a shared machine extra intra-op threads mostly wait). Prints
the median time of each and the ratio loop / fused.

The forward pass has a floor that no scan of this form (Mamba-1: a diagonal ``A`` per channel and
state) can go under: ``exp(delta_t A)`` for each of the ``b * d * L * n`` (token, channel, state)
elements. The ``exp floor`` column times that one ``torch.exp`` alone (into a preallocated tensor
of that size) and ``max`` is loop / floor, the largest forward ratio any implementation could
show; training (``fwd+bwd``) is where the per-token loop loses most (autograd through ``L`` steps).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from fsbench.scan import selective_scan_fused, selective_scan_sequential


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--channels", type=int, default=64, help="d (d_inner), default 64")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    b, d, n = 64, a.channels, 256
    print(f"batch {b}, channels {d}, d_state {n}, float32, {a.threads} thread(s), "
          f"median of {a.repeats}")
    print(f"{'L':>3} {'pass':>8} {'loop s':>9} {'fused s':>9} {'ratio':>7} {'exp floor':>10} "
          f"{'max':>6}")
    for L in (4, 25, 49):
        g = torch.Generator().manual_seed(L)
        args = [torch.randn(b, d, L, generator=g), torch.randn(b, d, L, generator=g),
                -torch.rand(d, n, generator=g) * 4, torch.randn(b, n, L, generator=g),
                torch.randn(b, n, L, generator=g), torch.randn(d, generator=g),
                torch.randn(b, d, L, generator=g), torch.randn(d, generator=g)]
        for label, grad in (("forward", False), ("fwd+bwd", True)):
            def call(fn):
                def go():
                    xs = [x.clone().requires_grad_(grad) for x in args]
                    with torch.set_grad_enabled(grad):
                        y = fn(*xs[:7], delta_bias=xs[7], delta_softplus=True)
                        if grad:
                            y.sum().backward()
                return go
            loop = timed(call(selective_scan_sequential), a.repeats)
            fused = timed(call(selective_scan_fused), a.repeats)
            extra = ""
            if not grad:
                big = torch.randn(b, d, L, n, generator=g)
                out = torch.empty_like(big)
                floor = timed(lambda: torch.exp(big, out=out), a.repeats)
                extra = f" {floor:>10.4f} {loop / floor:>5.1f}x"
            print(f"{L:>3} {label:>8} {loop:>9.4f} {fused:>9.4f} {loop / fused:>6.1f}x{extra}")


if __name__ == "__main__":
    main()

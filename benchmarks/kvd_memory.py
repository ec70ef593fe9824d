"""Peak memory and time of KVD on many clips: vpt's blocked kernel sums against one n x n kernel matrix.

    python benchmarks/kvd_memory.py [--clips 20000] [--dim 400] [--block 2048]

KVD (unbiased MMD^2, cubic polynomial kernel) over n real and n fake I3D features needs three n x n
kernel sums. Built as whole float64 matrices (as most KVD code does) that is 3 x 8 n^2 bytes, 8.9 GiB at
n = 20,000. vpt sums the kernel one (block x block) piece at a time, so the peak is the features plus
about two blocks (~64 MB at the default block of 2,048), whatever n is. Peak memory is measured with
tracemalloc, which sees numpy's allocations; the value is checked against the same sums taken as one
whole-matrix block on a subset small enough for that.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np
from common import machine

from vpt.metrics.fvd import KVD_BLOCK, _mmd2_unbiased


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=20_000, help="clips per set (real and fake)")
    parser.add_argument("--dim", type=int, default=400, help="feature size (I3D logits: 400)")
    parser.add_argument("--block", type=int, default=KVD_BLOCK, help="rows per kernel block")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    real = rng.standard_normal((args.clips, args.dim))  # (n, d) float64, as eval-fvd keeps features
    fake = rng.standard_normal((args.clips, args.dim)) * 1.05 + 0.02
    features_mb = (real.nbytes + fake.nbytes) / 2**20

    tracemalloc.start()
    begin = time.perf_counter()
    value = _mmd2_unbiased(real, fake, block=args.block)  # what kernel_distance runs for KVD on all clips
    seconds = time.perf_counter() - begin
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    subset = min(args.clips, 3000)
    reference = _mmd2_unbiased(real[:subset], fake[:subset], block=subset)  # one block: whole kernel matrices
    check = _mmd2_unbiased(real[:subset], fake[:subset], block=args.block)
    whole_gb = 3 * 8 * args.clips**2 / 2**30
    print(f"machine: {machine()}")
    print(f"KVD over {args.clips:,} x {args.dim} features per set (features themselves: {features_mb:.0f} MB)")
    print(
        f"  blocked (block {args.block}): peak {peak / 2**20:.0f} MB above the features, {seconds:.1f} s, KVD {value:.6g}"
    )
    print(f"  whole kernel matrices would need {whole_gb:.1f} GB")
    print(
        f"  check on {subset:,} clips: blocked {check:.10g} vs whole-matrix {reference:.10g} "
        f"(relative difference {abs(check - reference) / abs(reference):.1e})"
    )


if __name__ == "__main__":
    main()

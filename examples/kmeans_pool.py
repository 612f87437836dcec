"""KMeans in a spawn process pool: the shape that oversubscribes.

Each worker fits KMeans (OpenMP inside scikit-learn, BLAS from numpy's
OpenBLAS) on its own data set; with default pools every worker starts one
thread per CPU in each pool, so N workers run N x CPUs threads on CPUs cores.
Prints, per worker, the pools it actually has (threadpoolctl) and the time.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time

TASKS = 6
WORKERS = 2


def fit(seed: int) -> tuple[int, dict[str, int], int]:
    import numpy as np
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_info

    rng = np.random.default_rng(seed)
    data = rng.standard_normal((15_000, 40))
    KMeans(n_clusters=16, n_init=3, random_state=seed).fit(data)
    pools: dict[str, int] = {}
    for pool in threadpool_info():
        pools[pool["internal_api"]] = max(pools.get(pool["internal_api"], 0), pool["num_threads"])
    return os.getpid(), pools, len(os.sched_getaffinity(0))


def main() -> int:
    context = multiprocessing.get_context("spawn")
    start = time.perf_counter()
    with context.Pool(WORKERS) as pool:
        results = pool.map(fit, range(TASKS))
    elapsed = time.perf_counter() - start
    for pid, pools, cpus in sorted(set((p, tuple(sorted(d.items())), c) for p, d, c in results)):
        shown = ", ".join(f"{api} {n} thread{'s' if n != 1 else ''}" for api, n in pools)
        print(f"  worker {pid}: {shown}; {cpus} CPUs")
    print(f"  {TASKS} KMeans fits in a spawn Pool({WORKERS}): {elapsed:.2f} s")
    print(f"ELAPSED {elapsed:.4f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

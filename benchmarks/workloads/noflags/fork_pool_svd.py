"""Shape 4: a fork multiprocessing.Pool(cpus) of SVDs (scipy.linalg.svd)."""

import multiprocessing
import os

import numpy as np
import scipy.linalg

SCALE = float(os.environ.get("NOFLAGS_SCALE", "1"))
TASKS = max(2, round(6 * SCALE))
N = max(8, int(400 * min(SCALE, 1.0)))


def work(seed: int) -> float:
    a = np.random.default_rng(seed).random((N, N))
    return float(scipy.linalg.svd(a, compute_uv=True)[1][0])


if __name__ == "__main__":
    with multiprocessing.get_context("fork").Pool(os.cpu_count() or 1) as pool:
        print(round(sum(pool.map(work, range(TASKS))), 3))

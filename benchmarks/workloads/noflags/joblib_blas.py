"""Shape 6: a joblib Parallel(n_jobs=-1) loop (loky backend) of BLAS calls."""

import os

import numpy as np
from joblib import Parallel, delayed

SCALE = float(os.environ.get("NOFLAGS_SCALE", "1"))
TASKS = max(2, round(16 * SCALE))


def work(seed: int) -> float:
    a = np.random.default_rng(seed).random((400, 400))
    for _ in range(20):
        a = a @ a
        a /= np.abs(a).max()
    return float(a.sum())


if __name__ == "__main__":
    print(round(sum(Parallel(n_jobs=-1)(delayed(work)(seed) for seed in range(TASKS))), 3))

"""A joblib Parallel loop (loky, n_jobs=2) of matrix products."""

import numpy as np
from joblib import Parallel, delayed


def work(seed: int) -> float:
    a = np.random.default_rng(seed).random((400, 400))
    for _ in range(20):
        a = a @ a
        a /= np.abs(a).max()
    return float(a.sum())


Parallel(n_jobs=2)(delayed(work)(seed) for seed in range(48))

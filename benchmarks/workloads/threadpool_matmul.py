"""A Python ThreadPool of 2 threads, each running matrix products."""

from multiprocessing.pool import ThreadPool

import numpy as np


def work(seed: int) -> float:
    a = np.random.default_rng(seed).random((300, 300))
    for _ in range(40):
        a = a @ a
        a /= np.abs(a).max()
    return float(a.sum())


with ThreadPool(2) as pool:
    pool.map(work, range(48))

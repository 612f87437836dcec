"""A spawn process pool of 2 workers, each running many small matrix products."""

import multiprocessing

import numpy as np


def work(seed: int) -> float:
    a = np.random.default_rng(seed).random((160, 160))
    total = 0.0
    for _ in range(600):
        total += float((a @ a)[0, 0])
    return total


if __name__ == "__main__":
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(work, range(8))

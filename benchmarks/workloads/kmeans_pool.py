"""KMeans fits in a spawn process pool of 2 workers (OpenMP + BLAS per worker)."""

import multiprocessing

import numpy as np


def fit(seed: int) -> int:
    from sklearn.cluster import KMeans

    data = np.random.default_rng(seed).random((20000, 16))
    return int(KMeans(n_clusters=8, n_init=3, random_state=seed).fit(data).n_iter_)


if __name__ == "__main__":
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(fit, range(6))

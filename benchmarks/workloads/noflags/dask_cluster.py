"""Shape 7: a Dask distributed.LocalCluster (processes, n_workers=cpus) mapping BLAS tasks."""

import logging
import os

import numpy as np

SCALE = float(os.environ.get("NOFLAGS_SCALE", "1"))
TASKS = max(2, round(8 * SCALE))


def work(seed: int) -> float:
    a = np.random.default_rng(seed).random((350, 350))
    for _ in range(20):
        a = a @ a
        a /= np.abs(a).max()
    return float(a.sum())


if __name__ == "__main__":
    from distributed import Client, LocalCluster

    cpus = os.cpu_count() or 1
    with LocalCluster(
        n_workers=cpus, threads_per_worker=1, processes=True, dashboard_address=None,
        silence_logs=logging.ERROR,
    ) as cluster, Client(cluster) as client:
        print(round(sum(client.gather(client.map(work, range(TASKS)))), 3))

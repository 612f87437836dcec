"""A Dask distributed.LocalCluster(n_workers=2, processes=True), one thread
per worker: a task of argv[1] seconds of BLAS work on one worker and one of
argv[2] on the other; argv[3] "dask" keeps Dask's own pre-spawn
environment (OMP/MKL/OPENBLAS_NUM_THREADS=1 in every worker), "clear"
empties it; prints sampler.emit's line."""

import sys

import numpy  # noqa: F401
import sampler

if __name__ == "__main__":
    import dask
    from distributed import Client, LocalCluster

    long, short = float(sys.argv[1]), float(sys.argv[2])
    if sys.argv[3] == "clear":
        dask.config.set({"distributed.nanny.pre-spawn-environ": {}})
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=50) as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=60)
        workers = sorted(client.scheduler_info()["workers"])
        futures = [client.submit(sampler.task, seconds, workers=[worker], pure=False)
                   for seconds, worker in zip((long, short), workers)]
        results = client.gather(futures)
    sampler.emit(results)

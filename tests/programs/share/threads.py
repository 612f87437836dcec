"""A multiprocessing.pool.ThreadPool(2) of Python threads in one process,
each calling BLAS: a task of argv[1] seconds and one of argv[2]; prints
sampler.emit's line (the timelines are the one process's BLAS pool as each
thread saw it)."""

import sys
from multiprocessing.pool import ThreadPool

import numpy  # noqa: F401
import sampler

if __name__ == "__main__":
    long, short = float(sys.argv[1]), float(sys.argv[2])
    with ThreadPool(2) as pool:
        results = pool.map(sampler.task, [long, short], chunksize=1)
    sampler.emit(results)

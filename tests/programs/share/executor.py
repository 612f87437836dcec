"""concurrent.futures.ProcessPoolExecutor(2): a task of argv[1] seconds of
BLAS work and one of argv[2]; prints sampler.emit's line."""

import sys
from concurrent.futures import ProcessPoolExecutor

import numpy  # noqa: F401
import sampler

if __name__ == "__main__":
    long, short = float(sys.argv[1]), float(sys.argv[2])
    with ProcessPoolExecutor(2) as executor:
        futures = [executor.submit(sampler.task, seconds) for seconds in (long, short)]
        results = [future.result(timeout=60) for future in futures]
    sampler.emit(results)

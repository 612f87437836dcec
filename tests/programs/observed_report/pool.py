"""A fork Pool(2) whose two workers each multiply matrices for SECONDS on
the BLAS threads tcap gave them (--blas N); prints the workers' pids."""

import os
import sys
import time
from multiprocessing import get_context

import numpy as np

SECONDS = float(sys.argv[1])


def work(_: int) -> int:
    a = np.ones((300, 300))
    end = time.monotonic() + SECONDS
    while time.monotonic() < end:
        a @ a
    return os.getpid()


if __name__ == "__main__":
    with get_context("fork").Pool(2) as pool:
        print(*sorted(set(pool.map(work, range(2), chunksize=1))), flush=True)

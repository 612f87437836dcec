"""A ThreadPool(2) of Python threads each multiplying matrices for SECONDS
through the process's one BLAS pool (capped at 1 by tcap); prints its pid."""

import os
import sys
import time
from multiprocessing.pool import ThreadPool

import numpy as np

SECONDS = float(sys.argv[1])


def work(_: int) -> None:
    a = np.ones((300, 300))
    end = time.monotonic() + SECONDS
    while time.monotonic() < end:
        a @ a


with ThreadPool(2) as pool:
    pool.map(work, range(2), chunksize=1)
print(os.getpid(), flush=True)

"""Shape 5: a concurrent.futures.ProcessPoolExecutor(cpus) of small matrix products."""

import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np

SCALE = float(os.environ.get("NOFLAGS_SCALE", "1"))
TASKS = max(2, round(24 * SCALE))


def work(seed: int) -> float:
    a = np.random.default_rng(seed).random((120, 120))
    total = 0.0
    for _ in range(max(1, round(50 * min(SCALE, 1.0)))):
        total += float((a @ a)[0, 0])
    return total


if __name__ == "__main__":
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        print(round(sum(pool.map(work, range(TASKS))), 3))

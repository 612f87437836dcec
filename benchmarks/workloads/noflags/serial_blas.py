"""Shape 1: serial BLAS work in one process: a loop of matrix products and SVDs."""

import os

import numpy as np

SCALE = float(os.environ.get("NOFLAGS_SCALE", "1"))
N = max(8, int(700 * min(SCALE, 1.0)))

a = np.random.default_rng(0).random((N, N))
for _ in range(max(1, round(24 * SCALE))):
    a = a @ a
    a /= np.abs(a).max()
for _ in range(max(1, round(3 * SCALE))):
    np.linalg.svd(a[: N // 2, : N // 2])
print(round(float(a[0, 0]), 6))

"""Serial code: a few large matrix products in one process (BLAS may use every CPU)."""

import numpy as np

a = np.random.default_rng(0).random((1500, 1500))
for _ in range(30):
    a @ a

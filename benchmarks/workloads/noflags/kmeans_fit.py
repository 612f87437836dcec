"""Shape 10: one KMeans fit in one process (OpenMP and BLAS)."""

import os

import numpy as np
from sklearn.cluster import KMeans

SCALE = float(os.environ.get("NOFLAGS_SCALE", "1"))
ROWS = max(100, round(25000 * SCALE))

data = np.random.default_rng(0).random((ROWS, 20))
print(KMeans(n_clusters=8, n_init=2, random_state=0).fit(data).n_iter_)

"""One MPI rank's share of a job: a fixed number of 300x300 matrix products."""

import numpy as np

a = np.random.default_rng(0).random((300, 300))
for _ in range(400):
    b = a @ a
    a = b / np.abs(b).max()
print(float(a[0, 0]) > -1)

"""Shape 11: one copy of a BLAS loop; benchmarks/noflags.py runs two at once from
`bash -c 'python copy_blas.py 0 & python copy_blas.py 1; wait'`."""

import os
import sys

import numpy as np

SCALE = float(os.environ.get("NOFLAGS_SCALE", "1"))

a = np.random.default_rng(int(sys.argv[1]) if len(sys.argv) > 1 else 0).random((400, 400))
for _ in range(max(1, round(80 * SCALE))):
    a = a @ a
    a /= np.abs(a).max()
print(round(float(a[0, 0]), 6))

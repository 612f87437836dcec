"""joblib Parallel(n_jobs=2) on loky with inner_max_num_threads=argv[3]
("none": joblib's default): a task of argv[1] seconds of BLAS work and one
of argv[2]; prints sampler.emit's line."""

import sys

import numpy  # noqa: F401
import sampler
from joblib import Parallel, delayed

try:
    from joblib import parallel_config
except ImportError:  # joblib < 1.3
    from joblib import parallel_backend as parallel_config

if __name__ == "__main__":
    long, short, inner = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    options = {} if inner == "none" else {"inner_max_num_threads": int(inner)}
    with parallel_config(backend="loky", **options):
        results = Parallel(n_jobs=2, batch_size=1, pre_dispatch="all")(
            delayed(sampler.task)(seconds) for seconds in (long, short))
    sampler.emit(results)

"""A multiprocessing Pool(2) of start method argv[1]: one task of argv[2]
seconds of BLAS work, one of argv[3]; argv[4] "numpy" imports numpy in the
parent first (then forked workers take their share at fork), "bare" leaves
the parent without a numeric library.  Prints sampler.emit's line, with the
launch's share tables seen while the tasks ran."""

import multiprocessing
import sys
import time

if __name__ == "__main__":
    method, long, short, parent = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    if parent == "numpy":
        import numpy  # noqa: F401
    import sampler

    with multiprocessing.get_context(method).Pool(2) as pool:
        pending = pool.map_async(sampler.task, [long, short], chunksize=1)
        time.sleep(0.5)
        seen = sampler.tables()
        results = pending.get(timeout=60)
    sampler.emit(results, tables=seen, directory=sampler.share_dir())

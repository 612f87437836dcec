"""The pools tcap reads beyond threadpoolctl, as data: one row per pool.

threadpoolctl finds the BLAS and OpenMP libraries loaded in a process; the
pools below belong to libraries it does not know.  Each is read only through
the library's own public API, and only once the program has imported the
library (a check never imports one).  ``OBSERVED`` lists the libraries whose
pools no API reports: those are verified by watching the process's busy
threads (docs/verification.md, "Observed parallelism").

Loaded by path, under a private name, by the probe inside the program's
interpreter (any Python >= 3.8, possibly without tcap installed): standard
library only, nothing done at import beyond defining the rows; tcap itself
imports it as ``tcap._pools`` for ``tcap show`` and the docs' tables.
"""

import os


class Pool:
    """One pool a library's API reports.

    ``module``: the module whose presence in ``sys.modules`` means the
    library is loaded; ``name``: how reports name the pool; ``key``: the cap
    key it is judged against (None: shown, not judged); ``read(module)``: its
    size now; ``limit(module, n)``: lowers it (None: it cannot shrink);
    ``enforce``: what enforce can do, in words; ``spare``: 1 when the calling
    thread is one of the pool's threads, 0 when the pool runs all of them
    besides it; ``per_thread``: True when the library keeps the size per
    calling thread (read and set on the main thread, like OpenMP's), False
    when one size holds process-wide (set from any thread); ``variable``:
    what sizes it at start, in words.
    """

    __slots__ = ("module", "name", "key", "read", "limit", "enforce", "spare", "per_thread", "variable")

    def __init__(self, module, name, key, read, limit, enforce, spare=0, per_thread=False, variable=""):
        self.module = module
        self.name = name
        self.key = key
        self.read = read
        self.limit = limit
        self.enforce = enforce
        self.spare = spare
        self.per_thread = per_thread
        self.variable = variable


class Observed:
    """A library whose pool no API reports: verified by observation only."""

    __slots__ = ("module", "name", "why")

    def __init__(self, module, name, why):
        self.module = module
        self.name = name
        self.why = why


def _env_count(name):
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def _blosc(configured):
    """c-blosc applies BLOSC_NTHREADS at every (de)compression call when it
    is set, whatever the library was configured with at import."""
    return _env_count("BLOSC_NTHREADS") or configured


def _blosc_limit(module, n):
    if os.environ.get("BLOSC_NTHREADS"):
        os.environ["BLOSC_NTHREADS"] = str(n)
    module.set_nthreads(n)


def _tf(module, which, variable):
    """TensorFlow's setting; 0 means its variable if set, else one thread
    per CPU it may run on."""
    value = getattr(module.config.threading, f"get_{which}_op_parallelism_threads")()
    return value or _env_count(variable) or len(os.sched_getaffinity(0))


def _rayon(module):
    """rayon's global pool (tokenizers): sized from RAYON_NUM_THREADS when it
    first runs, else from the CPUs it may run on; TOKENIZERS_PARALLELISM=false
    keeps tokenizers on the calling thread."""
    if os.environ.get("TOKENIZERS_PARALLELISM", "").strip().lower() in ("0", "false", "off", "no"):
        return 1
    return _env_count("RAYON_NUM_THREADS") or len(os.sched_getaffinity(0))


POOLS = (
    Pool("numexpr", "numexpr", "numexpr", lambda m: m.get_num_threads(), lambda m, n: m.set_num_threads(n),
         "set_num_threads() lowers it", variable="NUMEXPR_NUM_THREADS"),
    Pool("numba", "numba", "numba", lambda m: m.config.NUMBA_NUM_THREADS, None,
         "the pool is sized once, from NUMBA_NUM_THREADS at import: warn only", variable="NUMBA_NUM_THREADS"),
    Pool("polars", "polars", "polars", lambda m: m.thread_pool_size(), None,
         "the pool is sized once, from POLARS_MAX_THREADS at import: warn only", variable="POLARS_MAX_THREADS"),
    Pool("numcodecs.blosc", "blosc (numcodecs)", "blosc", lambda m: _blosc(m.get_nthreads()), _blosc_limit,
         "set_nthreads() and BLOSC_NTHREADS (which c-blosc reads at every call) lower it", variable="BLOSC_NTHREADS"),
    Pool("blosc", "blosc", "blosc", lambda m: _blosc(m.nthreads), _blosc_limit,
         "set_nthreads() and BLOSC_NTHREADS (which c-blosc reads at every call) lower it", variable="BLOSC_NTHREADS"),
    Pool("torch", "torch (intra-op)", "openmp", lambda m: m.get_num_threads(), lambda m, n: m.set_num_threads(n),
         "torch.set_num_threads() lowers it", spare=1, per_thread=True, variable="OMP_NUM_THREADS"),
    Pool("torch", "torch (inter-op)", None, lambda m: m.get_num_interop_threads(), None,
         "no variable sizes it, so it is shown, not judged; it is fixed once it has started"),
    Pool("tensorflow", "tensorflow (intra-op)", "tensorflow", lambda m: _tf(m, "intra", "TF_NUM_INTRAOP_THREADS"),
         None, "fixed once TensorFlow has started: warn only", variable="TF_NUM_INTRAOP_THREADS"),
    Pool("tensorflow", "tensorflow (inter-op)", "tensorflow", lambda m: _tf(m, "inter", "TF_NUM_INTEROP_THREADS"),
         None, "fixed once TensorFlow has started: warn only", variable="TF_NUM_INTEROP_THREADS"),
)

#: Libraries whose pools are verified by observation only.
OBSERVED = ()


def loaded(modules):
    """The rows of POOLS whose library is in ``modules`` (``sys.modules``)."""
    return [pool for pool in POOLS if pool.module in modules]

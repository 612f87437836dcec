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


def _usable_cpus():
    """The CPUs a runtime that counts them itself takes: those in the
    affinity mask, lowered to a cgroup CPU quota rounded down (Rust's
    ``available_parallelism``, which rayon uses).  Read once per process."""
    pid = os.getpid()
    if _CPUS.get("pid") != pid:
        _CPUS["pid"] = pid
        affinity = getattr(os, "sched_getaffinity", None)
        _CPUS["n"] = _quota_cpus(len(affinity(0)) if affinity else os.cpu_count() or 1)
    return _CPUS["n"]


_CPUS = {}


def _quota_cpus(n):
    """``n`` lowered to the tightest cgroup CPU quota (v2 ``cpu.max``, v1
    ``cpu.cfs_quota_us``) of this process's cgroup and its ancestors."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read(65536).splitlines()
    except OSError:
        return n
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            mounts, files = ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"), ("cpu.max",)
        elif "cpu" in controllers.split(","):
            mounts, files = ("/sys/fs/cgroup/" + controllers, "/sys/fs/cgroup/cpu"), ("cpu.cfs_quota_us",
                                                                                     "cpu.cfs_period_us")
        else:
            continue
        parts = [part for part in path.strip().split("/") if part]
        for mount in mounts:
            for depth in range(len(parts), -1, -1):
                directory = os.path.join(mount, *parts[:depth])
                try:
                    text = " ".join(_small(directory, name) for name in files)
                    quota, period = (int(field) for field in text.split())
                except (OSError, ValueError):
                    continue
                if quota > 0 and period > 0:
                    n = min(n, max(1, quota // period))
    return n


def _small(directory, name):
    with open(os.path.join(directory, name)) as f:
        return f.read(64)


def _rayon(module):
    """rayon's global pool (tokenizers): sized from RAYON_NUM_THREADS when it
    first runs, else from the usable CPUs (affinity and quota); any of
    "", "0", "f", "false", "n", "no", "off" in TOKENIZERS_PARALLELISM (any
    case, as tokenizers reads it) keeps tokenizers on the calling thread."""
    parallelism = os.environ.get("TOKENIZERS_PARALLELISM")
    if parallelism is not None and parallelism.lower() in ("", "0", "f", "false", "n", "no", "off"):
        return 1
    return _env_count("RAYON_NUM_THREADS") or _usable_cpus()


def _capped(key):
    """Whether the launch gave ``key`` a cap (TCAP_CAPS, "openmp=1,...")."""
    return any(item.partition("=")[0].strip() == key for item in os.environ.get("TCAP_CAPS", "").split(","))


def _arrow_io_limit(module, n):
    """Arrow's I/O threads wait on files and the network rather than compute:
    only an explicit ``arrow_io`` sizes them, so this refuses (and sharing,
    which calls it too, leaves the pool alone) unless that key is capped."""
    if not _capped("arrow_io"):
        raise ValueError("Arrow's I/O pool is sized only by an explicit arrow_io")
    module.set_io_thread_count(n)


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
    # Arrow's CPU pool runs besides the calling thread, which waits; it sizes
    # itself from OMP_NUM_THREADS (lowered by OMP_THREAD_LIMIT) at start.
    Pool("pyarrow", "arrow (cpu)", "openmp", lambda m: m.cpu_count(), lambda m, n: m.set_cpu_count(n),
         "set_cpu_count() lowers it", variable="OMP_NUM_THREADS, lowered by OMP_THREAD_LIMIT"),
    Pool("pyarrow", "arrow (io)", "arrow_io", lambda m: m.io_thread_count(), _arrow_io_limit,
         "set_io_thread_count() lowers it, only when `arrow_io` is set (its threads wait rather than compute)",
         variable="ARROW_IO_THREADS"),
    # OpenCV's pthreads pool: the calling thread takes a share of the work.
    Pool("cv2", "opencv", "opencv", lambda m: m.getNumThreads(), lambda m, n: m.setNumThreads(n),
         "setNumThreads() lowers it", spare=1, variable="OPENCV_FOR_THREADS_NUM"),
    Pool("faiss", "faiss", "openmp", lambda m: m.omp_get_max_threads(), lambda m, n: m.omp_set_num_threads(n),
         "omp_set_num_threads() lowers it, on the main thread", spare=1, per_thread=True,
         variable="OMP_NUM_THREADS"),
    Pool("tokenizers", "tokenizers (rayon)", "rayon", _rayon, None,
         "rayon's pool is sized once, when it first runs: warn only",
         variable="RAYON_NUM_THREADS; TOKENIZERS_PARALLELISM=false keeps it on the calling thread"),
)

#: Libraries whose pools are verified by observation only; ``why`` is
#: printed by ``tcap show`` and the docs as "NAME: WHY".
OBSERVED = (
    Observed("onnxruntime", "ONNX Runtime",
             "no variable sizes its pools: each InferenceSession starts an intra-op pool of one thread per physical "
             "core (the calling thread is one of them), pinned one per core even outside the affinity mask, unless "
             "its SessionOptions.intra_op_num_threads says otherwise, and no API reaches a session from outside; "
             "set intra_op_num_threads to stay within the caps and the CPUs"),
    Observed("lightgbm", "LightGBM",
             "OpenMP through its libgomp, capped by OMP_NUM_THREADS and seen by threadpoolctl; a num_threads "
             "(n_jobs) parameter sizes each parallel region's team, which no API reports"),
    Observed("xgboost", "XGBoost",
             "OpenMP through its libgomp, capped by OMP_NUM_THREADS and seen by threadpoolctl; its nthread (n_jobs) "
             "parameter sizes each parallel region's team, which no API reports (XGBoost 2 and later hold it to the "
             "calling thread's OpenMP setting and the CPUs)"),
    Observed("jaxlib", "JAX/XLA",
             "XLA's CPU client sizes its pools (threads named tf_XLAEigen, and unnamed ones) from the CPUs in its "
             "affinity mask when it starts, so tcap's CPU pinning lowers them; no variable or flag sets a count, and "
             "XLA_FLAGS=--xla_cpu_multi_thread_eigen=false no longer makes it single-threaded (jax 0.10); tcap leaves "
             "XLA_FLAGS alone: it is the user's flags string"),
)


def loaded(modules):
    """The rows of POOLS whose library is in ``modules`` (``sys.modules``)."""
    return [pool for pool in POOLS if pool.module in modules]


#: Cap keys of pools whose threads wait on I/O rather than compute: left out
#: of the observed-parallelism rule's "largest thread cap".
IO_KEYS = ("arrow_io",)

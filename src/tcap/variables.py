"""The table of thread-count variables tcap sets, as data.

Everything else is derived from ``VARIABLES``: the profile keys that are
accepted, the plan's environment, ``tcap show``, the docs' variable table and
the tests' parameters.  Adding a variable is one row here.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Profile keys that name a user API (the grouping threadpoolctl uses).
APIS = ("blas", "openmp")


@dataclass(frozen=True)
class Variable:
    """One environment variable that sizes a thread pool.

    ``library`` is the profile key for that library alone; ``api`` the
    per-API key that also covers it (``None`` when no API groups it).
    ``basis`` says what the value is derived from: ``"threads"`` for a
    thread cap, ``"workers"`` for a limit on worker processes.
    """

    name: str
    library: str
    api: str | None
    basis: str = "threads"
    #: threadpoolctl ``internal_api`` of the pool this variable sizes, if any.
    internal_api: str | None = None
    #: Variables the library reads instead when this one is unset.
    fallbacks: tuple[str, ...] = ()
    #: Variables this one takes precedence over when both are set.
    wins_over: tuple[str, ...] = ()
    #: True when the library never starts more threads than the CPUs in the
    #: affinity mask, False when it starts as many as asked, None if unknown.
    clamps_to_affinity: bool | None = None
    notes: str = ""
    #: What the library picks when none of its variables is set: "affinity"
    #: (the CPUs in its affinity mask), "online" (every online CPU, whatever
    #: the mask), "physical" (the physical cores in the mask), "one" (a single
    #: thread), "fixed" (``own_limit`` threads, whatever the CPUs), or
    #: "follows:NAME" (this variable only sizes the pool NAME
    #: sizes, and is set whenever NAME is).  tcap compares this with the cap
    #: and sets the variable only when the library would go over it.
    own: str = "affinity"
    #: A ceiling the library puts on its own choice (numexpr's 16).
    own_limit: int | None = None
    #: Whether the library's own choice also respects a cgroup CPU quota.
    quota_aware: bool = False
    #: How the library names itself in ``tcap show`` ("OpenMP", "numexpr").
    label: str = ""
    #: False for a pool whose threads wait (on files, the network) rather
    #: than compute: only its own key sizes it, when a profile sets that key;
    #: ``threads``, the API keys and the default cap never do, since an I/O
    #: pool held to a CPU cap could make the program slower than no tcap.
    by_threads: bool = True


VARIABLES: tuple[Variable, ...] = (
    Variable(
        "OMP_NUM_THREADS", "openmp", "openmp", internal_api="openmp",
        clamps_to_affinity=False,
        notes="Every OpenMP runtime (libgomp, libomp, Intel's libiomp). libgomp "
        "starts as many threads as asked even on fewer CPUs. An OpenBLAS "
        "built with OpenMP reads only this variable. Arrow's CPU pool sizes "
        "itself from it too (lowered by OMP_THREAD_LIMIT), as do faiss, "
        "LightGBM and XGBoost through their OpenMP.",
        label="OpenMP",
    ),
    Variable(
        "OPENBLAS_NUM_THREADS", "openblas", "blas", internal_api="openblas",
        fallbacks=("GOTO_NUM_THREADS", "OMP_NUM_THREADS"),
        clamps_to_affinity=True,
        notes="pthreads builds of OpenBLAS (numpy and scipy wheels). Unset, "
        "OpenBLAS falls back to GOTO_NUM_THREADS, then OMP_NUM_THREADS; it "
        "never starts more threads than the CPUs in its affinity mask.",
        label="OpenBLAS",
    ),
    Variable(
        "GOTO_NUM_THREADS", "openblas", "blas", internal_api="openblas",
        notes="GotoBLAS's old name, still read by OpenBLAS when "
        "OPENBLAS_NUM_THREADS is unset.",
        own="follows:OPENBLAS_NUM_THREADS", label="OpenBLAS",
    ),
    Variable(
        "MKL_NUM_THREADS", "mkl", "blas", internal_api="mkl",
        fallbacks=("OMP_NUM_THREADS",), wins_over=("OMP_NUM_THREADS",),
        notes="Intel MKL. Its own variable wins over OMP_NUM_THREADS.",
        own="physical", label="MKL",
    ),
    Variable(
        "VECLIB_MAXIMUM_THREADS", "veclib", "blas",
        notes="Apple Accelerate (vecLib) on macOS.",
        own="online", label="Accelerate",
    ),
    Variable(
        "BLIS_NUM_THREADS", "blis", "blas", internal_api="blis",
        fallbacks=("OMP_NUM_THREADS",),
        notes="BLIS; falls back to OMP_NUM_THREADS when unset.",
        own="one", label="BLIS",
    ),
    Variable(
        "NUMEXPR_NUM_THREADS", "numexpr", None,
        fallbacks=("OMP_NUM_THREADS",),
        notes="numexpr's working threads; falls back to OMP_NUM_THREADS. Unset, "
        "numexpr takes the online CPUs (not the affinity mask), at most 16.",
        own="online", own_limit=16, label="numexpr",
    ),
    Variable(
        "NUMEXPR_MAX_THREADS", "numexpr", None,
        notes="numexpr's pool size; it must not be below NUMEXPR_NUM_THREADS.",
        own="follows:NUMEXPR_NUM_THREADS", label="numexpr",
    ),
    Variable(
        "NUMBA_NUM_THREADS", "numba", None,
        notes="Numba's parallel=True pool, fixed when numba is first imported.",
        label="Numba",
    ),
    Variable(
        "POLARS_MAX_THREADS", "polars", None,
        notes="Polars' rayon pool, fixed when polars is first imported.",
        quota_aware=True, label="Polars",
    ),
    Variable(
        "RAYON_NUM_THREADS", "rayon", None,
        notes="Any Rust extension using rayon's global pool.",
        quota_aware=True, label="rayon",
    ),
    Variable(
        "TF_NUM_INTRAOP_THREADS", "tensorflow", None,
        notes="TensorFlow threads inside one operation.",
        label="TensorFlow",
    ),
    Variable(
        "TF_NUM_INTEROP_THREADS", "tensorflow", None,
        notes="TensorFlow threads running independent operations.",
        label="TensorFlow",
    ),
    Variable(
        "BLOSC_NTHREADS", "blosc", None,
        notes="c-blosc compression threads (PyTables, zarr, bcolz), read at every "
        "call; python-blosc and numcodecs start with min(8, online CPUs).",
        own="online", own_limit=8, label="Blosc",
    ),
    Variable(
        "OPENCV_FOR_THREADS_NUM", "opencv", None,
        clamps_to_affinity=False,
        notes="OpenCV's parallel_for_ pool (pthreads in the opencv-python "
        "wheels), read at cv2's first parallel call or getNumThreads(); "
        "setNumThreads() changes it. The calling thread is one of its "
        "threads. It starts as many as asked even on fewer CPUs; unset, the "
        "CPUs in its affinity mask, not a cgroup quota.",
        label="OpenCV",
    ),
    Variable(
        "ARROW_IO_THREADS", "arrow_io", None,
        by_threads=False,
        notes="Arrow's I/O pool (pyarrow's file and dataset readers, pandas' "
        "pyarrow engine): threads that wait rather than compute, so only an "
        "explicit `arrow_io` sizes it, never `threads`. Its CPU pool follows "
        "OMP_NUM_THREADS.",
        own="fixed", own_limit=8, label="Arrow (I/O)",
    ),
    Variable(
        "LOKY_MAX_CPU_COUNT", "loky", None, basis="workers",
        notes="The CPU count joblib/loky uses for n_jobs=-1; tcap holds it to "
        "`workers`, or the usable CPUs when workers is not set.",
        quota_aware=True, label="loky (joblib)",
    ),
)

#: Per-library profile keys, in table order.  Variables sized from
#: ``workers`` (loky) have no key of their own: ``workers`` decides them.
LIBRARIES: tuple[str, ...] = tuple(
    dict.fromkeys(v.library for v in VARIABLES if v.library not in APIS and v.basis == "threads")
)

#: Every key that takes a thread count, most general first.
CAP_KEYS: tuple[str, ...] = ("threads", *APIS, *LIBRARIES)


def by_name(name: str) -> Variable | None:
    """The table row for ``name``, or ``None``."""
    for variable in VARIABLES:
        if variable.name == name:
            return variable
    return None


def keys_for(variable: Variable) -> tuple[str, ...]:
    """The profile keys that can size ``variable``, most specific first
    (its own key alone when ``threads`` does not size it)."""
    if not variable.by_threads:
        return (variable.library,)
    keys = [variable.library]
    if variable.api is not None and variable.api != variable.library:
        keys.append(variable.api)
    keys.append("threads")
    return tuple(keys)

"""tcap's verification probe: runs inside every Python process of a launch.

Loaded by ``tcap/_bootstrap/sitecustomize.py`` under the private name
``_tcap_probe`` (the target may be another interpreter or venv without
tcap).  It compares each native thread pool (threadpoolctl's view) with its
cap and, by mode, warns (``warn``, ``strict``) or also brings the pool back
(``enforce``).  Records for ``tcap run --report``/strict go to
``$TCAP_REPORT_DIR/<pid>.json``.

Rules for this file: standard library only at import; threadpoolctl is
loaded only when a check runs, and then tcap's own copy under a private name
so the program's imports are untouched; every failure is swallowed
(``TCAP_DEBUG=1`` prints them); nothing is written to stdout.
"""

import _thread
import atexit
import os
import sys
import time

# Top-level packages whose import means native thread pools may exist
# (_ctypes: a C library loaded by the program itself may start a pool no
# registry names, seen by observation).
NUMERIC = frozenset(
    ("numpy", "scipy", "sklearn", "torch", "numexpr", "numba", "threadpoolctl", "mkl", "pandas", "polars",
     "tensorflow", "jax", "xgboost", "lightgbm", "cupy", "faiss", "numcodecs", "blosc", "zarr", "pyarrow", "cv2",
     "onnxruntime", "tokenizers", "jaxlib", "_ctypes")
)
# The pools threadpoolctl does not see are rows of tcap/_pools.py (loaded by
# path at the first check): a library's row is found there, not here.


# Seconds after which a check looks for newly loaded native libraries even
# if no module was imported (a library loaded through ctypes); an import
# makes the next check look at once.
RESCAN = 60.0
# Seconds after the first numeric import (or after a fork) of each timer
# check; afterwards every LAST seconds.
SCHEDULE = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
LAST = 15.0
# For %tcap without the probe's TCAP_CAPS: the variables the main pools follow.
ENV_CAPS = (("openblas", "OPENBLAS_NUM_THREADS"), ("mkl", "MKL_NUM_THREADS"), ("blis", "BLIS_NUM_THREADS"),
            ("openmp", "OMP_NUM_THREADS"))

_state = {}


def _debug(what):
    if os.environ.get("TCAP_DEBUG"):
        import traceback

        sys.stderr.write(f"tcap: probe: {what} failed in pid {os.getpid()}:\n")
        traceback.print_exc()


def _cpu_list(text):
    """"0-3,8" -> {0, 1, 2, 3, 8}; None when empty or malformed."""
    cpus = set()
    try:
        for part in text.split(","):
            first, _, last = part.partition("-")
            cpus.update(range(int(first), int(last or first) + 1))
    except ValueError:
        return None
    return cpus or None


def _affinity():
    """The CPUs any thread of this process may run on, and the thread ids."""
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    allowed = set()
    for tid in tids:
        try:
            allowed |= os.sched_getaffinity(tid)
        except OSError:
            pass  # the thread ended meanwhile
    return allowed, tids


def _caps():
    caps = {}
    for item in os.environ.get("TCAP_CAPS", "").split(","):
        name, _, value = item.partition("=")
        if name and value.isdigit():
            caps[name] = int(value)
    return caps


def start():
    """Called once from sitecustomize: arm the checks; never raises."""
    try:
        mode = os.environ.get("TCAP_VERIFY", "warn")
        if mode not in ("warn", "strict", "enforce"):
            return
        _state.update(_settings(mode), report_dir=os.environ.get("TCAP_REPORT_DIR") or None)
        _reset_process()
        atexit.register(_at_exit)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_after_fork)
        if os.environ.get("TCAP_SHARE"):
            _share_start()
        if _numeric_loaded() or _state["report_dir"]:
            _start_timer()
        else:
            sys.meta_path.insert(0, _Watcher())
    except Exception:
        _debug("start")


def _settings(mode):
    """What the launch's TCAP_* variables tell the checks."""
    return {"mode": mode, "caps": _caps(), "profile": os.environ.get("TCAP_PROFILE", ""),
            "tpc_path": os.environ.get("TCAP_THREADPOOLCTL") or None,
            "cpus": _cpu_list(os.environ.get("TCAP_CPUS", ""))}


def configure(main=None, explained=()):
    """tcap.apply in a running process (tcap/api.py): the launch's TCAP_*
    variables, just set in os.environ, read again - the checks start if they
    were not running, and stop when verification is now off.  ``main``: the
    main thread's id (apply may run on another); ``explained``: pools apply
    reported it could not bring within their caps ((filepath, name), size),
    recorded as violations by the checks but not warned about again."""
    try:
        mode = os.environ.get("TCAP_VERIFY", "")
        if mode not in ("warn", "strict", "enforce"):
            _state["mode"] = None
            return
        if not _state.get("mode") and "pid" not in _state:
            start()
        else:
            settings = _settings(mode)
            settings["tpc_path"] = settings["tpc_path"] or _state.get("tpc_path")
            _state.update(settings, seen={})
            if os.environ.get("TCAP_SHARE") and _state.get("sharer") is None:
                _share_start()
            if _state.get("timer") is None:
                if _numeric_loaded():
                    _start_timer()
                elif not any(isinstance(item, _Watcher) for item in sys.meta_path):
                    sys.meta_path.insert(0, _Watcher())
        if main is not None:
            _state["main"] = main
        _state["explained"] = dict(explained)
    except Exception:
        _debug("configure")


def _reset_process():
    _state.pop("lock", None)
    _state.update(
        pid=os.getpid(),
        main=_thread.get_ident(),  # start() and fork handlers run on the main thread
        seen={},
        peaks={},
        violations=[],
        enforced=[],
        hazards={},
        checks=0,
        peak_os_threads=0,
        timer=None,
        born=time.time(),
        applied=None,
        observer=None,
        observed_violation=None,
        main_view=None,
    )


class _Watcher:
    """A meta path entry that finds nothing: it only notices numeric imports."""

    def find_spec(self, name, path=None, target=None):
        try:
            if name.partition(".")[0] in NUMERIC:
                _start_timer()
                if self in sys.meta_path:
                    sys.meta_path.remove(self)
        except Exception:
            _debug("import watch")
        return None


def _numeric_loaded():
    return any(name in sys.modules for name in NUMERIC)


def _start_timer():
    if _state.get("timer") is not None:
        return

    _share_claim()

    def loop():
        delays = list(SCHEDULE)
        due = time.monotonic() + delays.pop(0)
        tick = 0.1  # the first look at the launch's table comes early: siblings are starting
        observer = _observer()
        while True:
            sharer = _state.get("sharer")
            now = time.monotonic()
            waiting = _state.get("renudge")  # main-thread work that landed inside an import: ask again soon
            step = due - now
            if sharer or waiting:
                step = min(step, tick if sharer else 0.1)
            if observer is not None:
                step = min(step, observer.interval())
            time.sleep(max(0.0, step))
            if os.getpid() != _state.get("pid"):
                return
            if sharer:
                _share_tick()
                tick = sharer.interval()
            elif _state.pop("renudge", False) and _state.get("main_work") is not None:
                _nudge(_state["main_work"])
            if observer is not None:
                _observe_tick(observer)
            if time.monotonic() >= due:
                check("timer")
                due = time.monotonic() + (delays.pop(0) if delays else LAST)
            elif _state.pop("recheck", False):
                check("share")

    # threading must be imported here, on the thread that saw the numeric
    # import (the main one, unless the program itself already uses threads):
    # imported first on the timer thread, it would take that thread for the
    # main one and hang the interpreter's exit waiting for it.
    import threading

    thread = threading.Thread(target=loop, name="tcap-probe", daemon=True)
    _state["timer"] = thread
    thread.start()
    if not _state.get("late_fork_hook") and hasattr(os, "register_at_fork"):
        _state["late_fork_hook"] = True  # after threading's (imported by now): see _after_fork_late
        os.register_at_fork(after_in_child=_after_fork_late)


def _after_fork():
    try:
        _reset_process()
        sharer = _state.get("sharer")
        if sharer is not None:
            # A forked worker takes its share now, on its only thread, before its first task.
            _state["sharer"] = None
            _share_claim(busy=True)  # a forked worker imports nothing: it is about to work
            if _state.get("sharer") is not None:
                _share_tick(on_main=True)
    except Exception:
        _debug("fork")


def _after_fork_late():
    """The timer of a forked child, started from a fork handler registered
    after threading's own: started before it, threading would take the new
    thread for one of the parent's and mark it stopped."""
    try:
        if _numeric_loaded() or _state.get("report_dir"):
            _start_timer()
    except Exception:
        _debug("fork")


def _observer():
    """This process's Observer (tcap/_observe.py), made on the timer thread;
    None without caps to judge against or without per-thread clocks."""
    if not _state.get("caps") or _state.get("observer") is not None:
        return _state.get("observer")
    try:
        module = _state.get("observe_module")
        if module is None:
            module = _state["observe_module"] = _load(
                "_tcap_observe", os.path.join(os.path.dirname(os.environ["TCAP_PROBE"]), "_observe.py"))
        observer = module.Observer()
        if observer.available:
            _state["observer"] = observer
            return observer
    except Exception:
        _debug("observing threads")
    return None


def _observe_tick(observer):
    """One sample of this process's threads; an episode over what the caps
    allow becomes a violation (warned once, recorded at once)."""
    if not _state.get("mode"):
        return  # verification off (tcap.apply with verify off)
    try:
        import threading

        timer = _state.get("timer")
        ours = getattr(timer, "native_id", None)
        python = {thread.native_id for thread in list(threading._active.values())
                  if getattr(thread, "native_id", None)}
        python.discard(ours)
        finding = observer.sample(python, (ours,), _allowed)
    except Exception:
        _debug("observing threads")
        return
    if finding is not None:
        _observed(finding)


def _allowed(busy_python):
    """What the caps allow to be busy at once: the largest thread cap for
    each busy Python thread (at least one), plus the pools no cap applies to."""
    io = getattr(_pools_module(), "IO_KEYS", ())
    caps = [value for key, value in _state["caps"].items() if key not in io]
    if not caps:
        return None
    return max(caps) * max(1, busy_python) + _state.get("uncapped", 0)


def _allowance(python):
    """"the 1 its caps allow: largest cap 1 x max(1, 0 busy Python threads)"."""
    io = getattr(_pools_module(), "IO_KEYS", ())
    largest = max(value for key, value in _state["caps"].items() if key not in io)
    uncapped = _state.get("uncapped", 0)
    return (f"the {_allowed(python)} its caps allow: largest cap {largest} x max(1, {python} busy Python "
            f"thread{'' if python == 1 else 's'})" + (f" + {uncapped} of pools no cap applies to" if uncapped else ""))


def _observed(finding):
    violation = _state.get("observed_violation")
    if violation is None:
        check("observed")  # first, the pools tcap reads, as they are now (and the libraries loaded)
    over_at = _state.get("registry_over_at")
    if over_at is not None and over_at >= time.monotonic() - finding["seconds"] - 1.0:
        return  # a pool tcap reads was over its cap during this episode: that violation names the cause
    if violation is not None:  # the same escape goes on, or grows: recorded, not warned again
        grew = finding["threads"] > violation["threads"]
        violation["seconds"] = max(violation["seconds"], finding["seconds"])
        if grew:
            violation.update(threads=finding["threads"], cap=finding["cap"], names=finding["names"])
        if grew or finding["seconds"] >= 2 * violation.get("_written", 0):
            violation["_written"] = finding["seconds"]
            _state["recheck"] = True
        return
    violation = {
        "internal_api": "busy threads",
        "user_api": "observed",
        "filepath": None,
        "threads": finding["threads"],
        "cap": finding["cap"],
        "at": time.time() - finding["seconds"],
        "reason": "observed",
        "seconds": finding["seconds"],
        "names": finding["names"],
        "libraries": _loaded_libraries(),
        "_written": finding["seconds"],
    }
    _state["observed_violation"] = violation
    _state["violations"].append(violation)
    profile = _state.get("profile")
    python = finding["python"]
    loaded = ", ".join(violation["libraries"]) or "none that tcap knows"
    names = ", ".join(violation["names"]) or "unnamed"
    sys.stderr.write(
        f"tcap: warning: {_who()}: {finding['threads']} threads busy at once for {finding['seconds']:g} s, "
        f"more than {_allowance(python)}; loaded: {loaded}; busy threads named {names}"
        + (f" [profile {profile}]" if profile else "") + "\n")
    if _state["mode"] == "enforce":
        sys.stderr.write(f"tcap: note: {_who()}: enforce cannot bring back threads no pool tcap reads "
                         "accounts for; the warning stands\n")
    sys.stderr.flush()
    if _state.get("report_dir"):
        check("observed")  # the record now: a program leaving through os._exit writes no other


def _loaded_libraries():
    """Short names of the loaded libraries with pools: threadpoolctl's (at
    the last check) and the registry's, observed-only ones included."""
    names = list(_state.get("libraries") or ())
    try:
        module = _pools_module()
        rows = list(module.POOLS) + list(getattr(module, "OBSERVED", ()))
        names += [row.module.partition(".")[0] for row in rows if row.module in sys.modules]
    except Exception:
        _debug("naming the loaded libraries")
    return list(dict.fromkeys(name for name in names if name))[:16]


def _at_exit():
    try:
        _share_stop()
    except Exception:
        _debug("leaving the share table")
    try:
        if _numeric_loaded():
            if _state.get("report_dir") or _may_be_over():
                check("exit")
        elif _state.get("report_dir"):
            _write_record("exit", [], None)
    except Exception:
        _debug("exit")


def _may_be_over():
    """Whether some pool could be over its cap, judged from thread counts alone.

    A pool over a cap of C runs at least C native threads besides the main
    one (OpenBLAS starts them when its limit is raised; OpenMP keeps its team
    after a parallel region). With fewer native threads than the smallest cap
    - threads Python did not start - no pool can be, and the exit check of a
    short program need not load threadpoolctl (~4 ms).
    """
    caps = _state.get("caps")
    if not caps:
        return False
    threads = os_threads()
    if threads is None:
        return True
    native = threads - 1 - _thread._count()
    return native >= min(caps.values())


def _share_module():
    module = _state.get("share_module")
    if module is None:
        module = _state["share_module"] = _load(
            "_tcap_share", os.path.join(os.path.dirname(os.environ["TCAP_PROBE"]), "_share.py"))
    return module


def _share_start():
    """At interpreter start: a child of the launch (not its root) lowers the
    variables of libraries not yet loaded to the share its busy siblings
    leave it, before the program imports anything."""
    try:
        root = os.environ.get("TCAP_SHARE_LAUNCH", "").partition(":")[0]
        if not root:  # started without tcap's launcher (a static alias): this process is the launch's root
            root = str(os.getpid())
            os.environ["TCAP_SHARE_LAUNCH"] = f"{root}:{_share_module().share_dir(os.environ)}"
            os.environ["TCAP_SHARE_BASE"] = _share_module().base_of(os.environ)
        if root == str(os.getpid()):
            return  # the launch's first process: nothing else is busy yet
        module = _share_module()
        divided = module.divided_by_others(os.environ, _state["caps"])
        if divided:
            _state["divided"] = divided  # counted in the table, its pools left to that division
        table = module.open_launch(os.environ, create=False)
        if table is None:
            return
        _state["share_table"] = table
        _state["share_table_pid"] = os.getpid()
        found = module.process_start(os.getpid())
        helper = any("multiprocessing.resource_tracker" in arg or "multiprocessing.forkserver" in arg
                     for arg in getattr(sys, "orig_argv", ())[:4])
        if found is not None and not helper:
            table.claim(os.getpid(), found[0], module.STARTING_FLAG)  # the siblings starting with it see it
            _state["share_starting"] = True
        done = {} if divided else module.lower_at_start(table, os.environ, _state["caps"], os.getpid())
        keys = dict(module.START_VARIABLES)
        _state["share_bases"] = {keys[name]: value for name, value in done.items()}
    except Exception:
        _debug("sharing at start")


def _share_claim(busy=False):
    """Join the launch's table (once numeric work may start, or after a fork)."""
    if _state.get("sharer") is not None or not os.environ.get("TCAP_SHARE"):
        return
    try:
        module = _share_module()
        table = _state.get("share_table")
        if table is not None and _state.get("share_table_pid") != os.getpid():
            table = module.Table(table.cpus, table.path, table.fd)  # forked: the same file, a slot of its own
        elif table is None:
            table = module.open_launch(os.environ, create=True)
            if table is None:
                return
        _state["share_table"] = table
        _state["share_table_pid"] = os.getpid()
        found = module.process_start(os.getpid())
        if found is None or table.claim(os.getpid(), found[0]) is None:
            return
        sharer = _state["sharer"] = module.Sharer(table, os.getpid(), found[0], busy,
                                                   bool(_state.pop("share_starting", False)))
        sharer.measure(len(sys.modules))
        table.write(os.getpid(), found[0], busy, table.cpus, 0, sharer.starting)
        if "share_pools" not in _state:
            _state["share_pools"] = module.Pools(_state.get("share_bases"))
    except Exception:
        _debug("joining the share table")


def _share_tick(on_main=False):
    """Measure, publish and decide; hand the pools' change to the main thread."""
    sharer = _state["sharer"]
    if _state.pop("renudge", False) and _state.get("main_work") is not None:
        _nudge(_state["main_work"])
    try:
        import threading

        timer = _state.get("timer")
        ours = timer.ident if timer else None
        threads = [(ident, thread.native_id) for ident, thread in list(threading._active.items())
                   if ident != ours and getattr(thread, "native_id", None)]
        if not threads:  # a forked child before threading's own fork handler ran
            threads = [(_thread.get_ident(), threading.get_native_id())]
        target = sharer.tick(len(sys.modules), threads)
    except Exception:
        _debug("sharing")
        return
    if target >= sharer.table.cpus or _state.get("divided"):
        target = None  # alone with the launch's CPUs (or divided by joblib, Dask...): every pool at its ceiling
    modules = len(sys.modules)
    applied = _state.get("applied")  # (target, modules) of the last adjustment
    pools = _state["share_pools"]
    if applied is not None and applied[0] == target and (applied[1] == modules or (
            target is None and not pools.lowered())):
        return
    if applied is None and target is None and not _state.get("limits"):
        _state["applied"] = (target, modules)
        return  # alone: every pool keeps the size it has
    _state["applied"] = (target, modules)
    if _state.get("caps"):
        # The pools as the program left them, judged before sharing resizes
        # them: a pool the program raised over its cap is a violation even if
        # sharing brings it down at once.
        check("share")
    try:
        _prepare()
        _adjust(target, "any")  # at once, even while the main thread is inside a long BLAS call
        if on_main:
            _adjust(target)
    except Exception:
        _debug("sharing")
    if not on_main:
        _nudge(lambda: _adjust(_state["applied"][0]))


def _prepare():
    """What ``_adjust`` needs, loaded off the main thread: threadpoolctl, ctypes
    and the list of loaded libraries (rebuilt when modules were imported), so
    the work on the main thread, which may run in the middle of one of the
    program's imports, imports nothing."""
    tpc = _threadpoolctl()
    import ctypes  # noqa: F401  (for _on_main's pending call)

    modules = len(sys.modules)
    if (_state.get("controller") is None or _state.get("controller_modules") != modules
            or time.monotonic() - _state.get("controller_at", 0.0) > RESCAN):
        _state["controller"] = tpc.ThreadpoolController()
        _state["controller_modules"] = modules
        _state["controller_at"] = time.monotonic()


def _adjust(target, where="main"):
    """Every run-time pool to min(its ceiling, ``target``, a build limit):
    those ``where`` ("main": the per-thread ones, on the main thread; "any":
    the process-wide ones, from whichever thread calls). OpenBLAS on its own
    threads has one size, a global: threadpoolctl lets only the first thread
    that set it change it, so tcap calls the library's setter directly."""
    controller = _state.get("controller")
    if controller is None:
        return
    caps = _state["caps"]
    pools = []
    for lib in controller.lib_controllers:
        layer = getattr(lib, "threading_layer", None)
        key = "openmp" if layer == "openmp" or lib.user_api == "openmp" else lib.internal_api
        anywhere = lib.internal_api == "openblas" and layer == "pthreads" and hasattr(lib, "_real_set_num_threads")
        if anywhere != (where == "any"):
            continue
        setter = lib._real_set_num_threads if anywhere else lib.set_num_threads
        info = {"internal_api": lib.internal_api, "user_api": lib.user_api, "threading_layer": layer}
        pools.append(((lib.filepath, lib.internal_api), key, lib.num_threads, cap_for(info, caps), setter))
    io = getattr(_pools_module(), "IO_KEYS", ())
    for pool in other_pools():
        # One process-wide size (numexpr, Blosc...) is set from any thread; a
        # size per calling thread (torch's, through OpenMP) on the main one.
        # Threads that wait on I/O (Arrow's) take no CPU to share.
        if pool["_limit"] is not None and pool["user_api"] not in io and (not pool["_per_thread"]) == (where == "any"):
            module, limit = pool["_module"], pool["_limit"]
            pools.append(((pool["filepath"], pool["internal_api"]), pool["user_api"], pool["num_threads"],
                          caps.get(pool["user_api"]), lambda n, m=module, f=limit: f(m, n)))
    if _state["share_pools"].adjust(pools, target, _state.get("limits")) and _state.get("report_dir"):
        _state["recheck"] = True  # the record shows the pools as tcap left them, at the next tick


def _run_main_work():
    if _state.get("main_work") is None:
        return
    if _in_import():
        _state["renudge"] = True  # not in the middle of the program's import: the next tick asks again
        return
    work = _state.pop("main_work", None)
    if work is not None:
        try:
            work()
        except Exception:
            _debug("work on the main thread")


def _in_import():
    """Whether this thread is inside importlib (a pending call or signal
    handler runs at any bytecode, an import's own included)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _nudge(work):
    """``work`` for the main thread, through a pending call (at its next
    bytecode: a main thread blocked in a wait or a long C call runs no OpenMP
    region meanwhile, and gets the work before its next one)."""
    try:
        _prepare()
    except Exception:
        _debug("preparing the pools' change")
        return
    _state["main_work"] = work
    _on_main(("share",), _run_main_work)


def _share_stop():
    """Leave the table; the launch's root removes it (whether or not it joined:
    its workers may have made it)."""
    table = _state.get("share_table")
    mine = table is not None and _state.get("share_table_pid") == os.getpid()
    if mine:
        table.release()
    root, _, directory = os.environ.get("TCAP_SHARE_LAUNCH", "").partition(":")
    if root != str(os.getpid()) or not os.environ.get("TCAP_SHARE"):
        return
    if mine:
        path = table.path
    else:  # the name _share.path_for gives, without loading _share at every root's exit
        try:
            with open("/proc/self/stat", "rb") as f:
                start = f.read(4096).rpartition(b")")[2].split()[19].decode()
        except (OSError, IndexError):
            return
        if not directory:
            directory = _share_module().share_dir(os.environ)
        path = os.path.join(directory, f"share-{root}-{start}")
    try:
        os.unlink(path)  # the launch's root leaves: the launch ends
    except OSError:
        pass


def _on_main(key, work):
    """Run ``work`` on the main thread: at once when this is it, else as a
    CPython pending call (run at the main thread's next bytecode boundary)."""
    if _thread.get_ident() == _state.get("main"):
        work()
        return
    pending = _state.setdefault("pending", {})
    if key in pending:
        return
    import ctypes

    callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)

    def run(_):
        try:
            pending.pop(key, None)
            # Sharing's work and reading import nothing; enforce waits for the next check if inside an import.
            if key in (("share",), ("view",)) or not _in_import():
                work()
        except Exception:
            _debug("work on the main thread")
        return 0

    callback = callback_type(run)
    pending[key] = callback  # keep it alive until it has run
    add = ctypes.pythonapi.Py_AddPendingCall
    add.argtypes = [callback_type, ctypes.c_void_p]
    add.restype = ctypes.c_int
    if add(callback, None) != 0:
        pending.pop(key, None)


def _load(name, path, register=False):
    """The module at ``path`` under the private ``name``, leaving the
    program's imports alone (``register``: in sys.modules while it runs)."""
    # importlib's frozen halves: importlib.util costs ~0.4 ms more.
    from _frozen_importlib import module_from_spec
    from _frozen_importlib_external import spec_from_file_location

    spec = spec_from_file_location(name, path)
    module = module_from_spec(spec)
    if register:
        sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _threadpoolctl():
    module = _state.get("tpc")
    if module is not None:
        return module
    if _state.get("tpc_failed"):
        raise ImportError("threadpoolctl unavailable")
    path = _state.get("tpc_path")
    if path:
        try:
            # Registered under its private name while it runs: its dataclasses
            # look their module up in sys.modules.
            module = _load("_tcap_threadpoolctl", path, register=True)
        except Exception:
            sys.modules.pop("_tcap_threadpoolctl", None)
            _debug("loading tcap's threadpoolctl")
            module = None
    if module is None:
        try:
            import threadpoolctl as module  # the program's own, if it has one
        except ImportError:
            _state["tpc_failed"] = True  # don't pay for the search at every check
            raise
    _state["tpc"] = module
    return module


def cap_for(pool, caps):
    """The cap for one threadpoolctl pool dict, or None if tcap set none."""
    internal = pool.get("internal_api")
    user = pool.get("user_api")
    # An OpenBLAS (or BLIS) built with OpenMP follows OMP_NUM_THREADS only.
    if pool.get("threading_layer") == "openmp" and "openmp" in caps:
        return caps["openmp"]
    if internal in caps:
        return caps[internal]
    return caps.get(user)


def os_threads():
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Threads:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def check(reason="manual"):
    """Compare every pool with its cap; warn, enforce and record. Returns the
    list of (pool, cap) over cap, or None when the check itself failed or
    another check (timer thread vs exit) was already running."""
    if not _state.get("mode"):
        return None  # verification off (tcap.apply with verify off)
    lock = _state.get("lock")
    if lock is None:

        lock = _state["lock"] = _thread.allocate_lock()
    if not lock.acquire(False):
        return None
    try:
        return _check(reason)
    except Exception:
        _debug("check")
        return None
    finally:
        lock.release()


def _check(reason):
    if os.getpid() != _state.get("pid"):
        _reset_process()
    tpc = _threadpoolctl()
    _prepare()  # the libraries found at the last scan, scanned again after an import or RESCAN seconds
    info = _state["controller"].info() + other_pools()
    _as_main_sees(info)
    _state["libraries"] = [pool.get("prefix") for pool in info if "_module" not in pool and pool.get("prefix")]
    _state["uncapped"] = sum(pool.get("num_threads") or 0 for pool in info if "_module" in pool
                             and pool.get("user_api") is None)
    caps = _state["caps"]
    planned = _state.get("cpus")
    if planned and hasattr(os, "sched_getaffinity"):
        # The plan pinned CPUs: a thread allowed outside them escaped it.
        allowed, _ = _affinity()
        # As a pool: the CPUs in reach (the plan's and any outside it) against the plan's count.
        info.append({"internal_api": "affinity", "user_api": "cpus", "num_threads": len(allowed | planned)
                     if not allowed <= planned else len(allowed), "filepath": None, "_cpus": allowed})
        caps = {**caps, "affinity": len(planned)}
    over = []
    for pool in info:
        cap = cap_for(pool, caps)
        pool["cap"] = cap
        key = (pool.get("filepath"), pool.get("internal_api"))
        threads = pool.get("num_threads") or 0
        pool["peak_threads"] = max(_state["peaks"].get(key, 0), threads)
        _state["peaks"][key] = pool["peak_threads"]
        if cap is not None and threads > cap:
            over.append((pool, cap))
    if any(pool.get("internal_api") != "affinity" for pool, _ in over):
        _state["registry_over_at"] = time.monotonic()
    seen = _state["seen"]  # (filepath, api) -> thread count last warned about
    for pool in info:
        if pool["cap"] is None or (pool.get("num_threads") or 0) <= pool["cap"]:
            seen.pop((pool.get("filepath"), pool.get("internal_api")), None)  # back within: a new escape warns again
    for pool, cap in over:
        key = (pool.get("filepath"), pool.get("internal_api"))
        if seen.get(key) != pool.get("num_threads"):
            seen[key] = pool.get("num_threads")
            _state["violations"].append(
                {
                    "internal_api": pool.get("internal_api"),
                    "user_api": pool.get("user_api"),
                    "filepath": pool.get("filepath"),
                    "threads": pool.get("num_threads"),
                    "cap": cap,
                    "at": time.time(),
                    "reason": reason,
                }
            )
            # Brought back before (the enforcement said it), or a pool tcap.apply said it could not resize.
            if key not in _state.get("enforced_keys", ()) and \
                    _state.get("explained", {}).get(key) != pool.get("num_threads"):
                _warn(pool, cap)
        if _state["mode"] == "enforce":
            try:
                _enforce(tpc, pool, cap)
            except Exception:
                _debug("enforce")
    _state["checks"] += 1
    try:
        _libraries([pool for pool in info if "_module" not in pool and pool.get("internal_api") != "affinity"], caps)
    except Exception:
        _debug("reading library facts")
    _count_threads(info)
    _write_record(reason, info, tpc)
    return over


def _as_main_sees(info):
    """Each pool's size as the main thread sees it, where that is larger:
    OpenMP keeps its setting per calling thread (threadpool_limits or
    omp_set_num_threads on the main thread changes the main thread's teams
    only), and this check may run on the probe's own thread."""
    if _thread.get_ident() == _state.get("main"):
        return
    view = _main_view()
    if not view:
        return
    for pool in info:
        if not _kept_per_thread(pool):
            continue  # one size for the process: what this thread read holds (a stale view of it could not)
        seen = view.get((pool.get("filepath"), pool.get("internal_api")))
        if isinstance(seen, int) and not isinstance(seen, bool) and seen > (pool.get("num_threads") or 0):
            pool["num_threads"] = seen


def _kept_per_thread(pool):
    """Whether a pool's size is kept per calling thread, so the main thread
    may see another one: OpenMP's (and a BLAS on OpenMP's threads), MKL's
    (mkl_set_num_threads_local), the registry's per-thread rows.  OpenBLAS on
    its own threads and BLIS have one size for the whole process."""
    if "_module" in pool:
        return bool(pool.get("_per_thread"))
    return pool.get("user_api") == "openmp" or pool.get("threading_layer") == "openmp" \
        or pool.get("internal_api") == "mkl"


def _main_view(wait=0.05):
    """{(filepath, pool name): size} read on the main thread, as a pending
    call: waited for ``wait`` seconds, else the last one it gave (a main
    thread inside a long C call runs no Python; when it comes back, a
    changed view makes the next tick check again)."""
    try:
        _prepare()
    except Exception:
        _debug("preparing the main thread's view")
        return _state.get("main_view")
    controller = _state.get("controller")
    done = _thread.allocate_lock()
    done.acquire()
    token = object()

    def read():
        view = {}
        for lib in controller.lib_controllers if controller is not None else ():
            kind = {"user_api": lib.user_api, "internal_api": lib.internal_api,
                    "threading_layer": getattr(lib, "threading_layer", None)}
            if not _kept_per_thread(kind):
                continue
            try:
                view[(lib.filepath, lib.internal_api)] = lib.get_num_threads()
            except Exception:
                pass
        for pool in other_pools():
            if pool["_per_thread"]:
                view[(pool["filepath"], pool["internal_api"])] = pool["num_threads"]
        if view != _state.get("main_view") and _state.get("view_waiting") is not token:
            _state["recheck"] = True  # came after the check gave up waiting: the next tick checks again
        _state["main_view"] = view
        done.release()

    _state["view_waiting"] = token
    _on_main(("view",), read)
    done.acquire(True, wait)
    _state["view_waiting"] = None
    return _state.get("main_view")


def _libraries(pools, caps):
    """The build facts of each native library, recorded for this interpreter
    the first time tcap meets the library (its next plans respect their
    limits), and the hazards the libraries make together: each warned once
    per process (a "note" only goes to the report)."""
    if not pools:
        return
    module = _state.get("inspect")
    if module is None:
        module = _state["inspect"] = _load(
            "_tcap_inspect", os.path.join(os.path.dirname(os.environ["TCAP_PROBE"]), "_inspect.py"))
    facts = _state.setdefault("facts", {})
    new = [pool for pool in pools if pool.get("filepath") and pool["filepath"] not in facts]
    directory = os.environ.get("TCAP_LIBRARIES")
    keyed = bool(directory and sys.executable)  # an embedded interpreter has no executable to key on
    if new:
        store = module.known(directory, sys.executable) if keyed else {}
        fresh = module.describe([pool for pool in new if pool["filepath"] not in store])
        for pool in new:
            facts[pool["filepath"]] = store.get(pool["filepath"]) or {}
        for fact in fresh:
            facts[fact["filepath"]] = fact
        if fresh and keyed:
            module.record(directory, sys.executable, fresh)
            _state.setdefault("fresh", set()).update(fact["filepath"] for fact in fresh)
    python_threads = _thread._count() + 1 - (_state.get("timer") is not None)  # not the probe's own
    profile = _state.get("profile")
    for hazard in module.hazards(pools, facts, caps, python_threads):
        if hazard["key"] in _state["hazards"]:
            continue
        _state["hazards"][hazard["key"]] = hazard
        if hazard["kind"] != "hazard":
            continue
        text = hazard["what"]
        path = hazard.get("filepath")
        if hazard.get("cap") == "openmp" and isinstance(facts.get(path, {}).get("max_threads"), int):
            limit = facts[path]["max_threads"]
            _build_limit(limit)
            text += f"; lowered to {limit} in this process"
            hazard["what"] = text
            if path in _state.get("fresh", ()):
                text += f", and tcap's next launches of {sys.executable} cap openmp at {limit}"
        sys.stderr.write(f"tcap: warning: {_who()}: {text}"
                         + (f" [profile {profile}]" if profile else "") + "\n")
        sys.stderr.flush()


def _build_limit(limit):
    """An OpenBLAS build limit learned in this process (the first launch of
    an interpreter, before tcap recorded it): OpenMP teams that call it are
    kept within it at once - the variable for runtimes and children not yet
    started, the loaded runtimes on the main thread."""
    limits = _state.setdefault("limits", {})
    if limits.get("openmp") is not None and limits["openmp"] <= limit:
        return
    limits["openmp"] = limit
    first = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if not first.isdigit() or int(first) > limit:
        os.environ["OMP_NUM_THREADS"] = str(limit)
    if "share_pools" not in _state:
        _state["share_pools"] = _share_module().Pools()
    target = (_state.get("applied") or (None,))[0]
    try:
        _prepare()
        _adjust(target, "any")
    except Exception:
        _debug("applying a build limit")
    _nudge(lambda: _adjust((_state.get("applied") or (None,))[0]))


def _count_threads(info):
    """Native threads no known pool and no Python thread accounts for
    (information for the report): each pool runs at most its size, less the
    calling thread where that is one of them.  A thread that is starting or
    ending is briefly counted by the OS and not by Python, so only what two
    checks in a row see counts."""
    before = _thread._count()
    threads = os_threads()
    if threads is None:
        return
    pooled = sum(max((pool.get("num_threads") or 0) - pool.get("_spare", 1), 0)
                 for pool in info if pool.get("internal_api") != "affinity")
    unexplained = max(threads - 1 - max(before, _thread._count()) - pooled, 0)
    stable = min(unexplained, _state.get("unexplained", 0))
    _state["unexplained"] = unexplained
    _state["peak_unexplained"] = max(_state.get("peak_unexplained", 0), stable)


def _who():
    """"pid 4242 (python fit.py)", and the rank of a launcher when there is one."""
    rank = os.environ.get("TCAP_RANK")
    return f"pid {os.getpid()} ({describe_process()})" + (f" [{rank}]" if rank else "")


def describe_process():
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable] + sys.argv)
    if argv:
        argv[0] = os.path.basename(argv[0])
    text = " ".join(" ".join(argv).split())  # one line, however the argv looks
    return text if len(text) <= 60 else text[:57] + "..."


def _warn(pool, cap):
    profile = _state.get("profile")
    suffix = f" [profile {profile}]" if profile else ""
    if pool.get("internal_api") == "affinity":
        sys.stderr.write(
            f"tcap: warning: {_who()}: CPU affinity widened to "
            f"{_cpu_text(pool['_cpus'])}, outside the plan's CPUs {_cpu_text(_state['cpus'])}{suffix}\n"
        )
        sys.stderr.flush()
        return
    sys.stderr.write(
        f"tcap: warning: {_who()}: {pool.get('internal_api')} "
        f"({pool.get('user_api')}) has {pool.get('num_threads') or 0} threads, cap {cap}{suffix}\n"
    )
    sys.stderr.flush()


def _enforce(tpc, pool, cap):
    """Bring ``pool`` back to ``cap``, on the main thread (OpenMP keeps a
    size per thread, and threadpoolctl lets only the first thread that set
    OpenBLAS's size change it)."""
    _on_main((pool.get("filepath"), cap), lambda: _limit(tpc, pool, cap))


def _cpu_text(cpus):
    return ",".join(str(c) for c in sorted(cpus))


def _sibling(name):
    """A file next to this probe (TCAP_PROBE is unset where only %tcap runs)."""
    return os.path.join(os.path.dirname(os.environ.get("TCAP_PROBE") or __file__), name)


def _pools_module():
    module = _state.get("pools_module")
    if module is None:
        module = _state["pools_module"] = _load(
            "_tcap_pools", _sibling("_pools.py"))
    return module


def other_pools():
    """The registry's pools (tcap/_pools.py) of the libraries the program has
    imported, as threadpoolctl style dicts; a library whose API fails is
    "could not check", not listed."""
    found = []
    for row in _pools_module().loaded(sys.modules):
        module = sys.modules.get(row.module)
        if module is None or getattr(getattr(module, "__spec__", None), "_initializing", False):
            continue  # not imported, or still importing (on another thread)
        try:
            threads = row.read(module)
            if isinstance(threads, bool) or not isinstance(threads, int):
                continue
        except Exception:
            _debug(f"reading the {row.name} pool")
            continue
        found.append({"internal_api": row.name, "user_api": row.key, "num_threads": threads, "prefix": row.module,
                      "filepath": getattr(module, "__file__", None), "version": getattr(module, "__version__", None),
                      "_limit": row.limit, "_module": module, "_spare": row.spare, "_per_thread": row.per_thread})
    return found


def _limit(tpc, pool, cap):
    before = pool.get("num_threads")
    if pool.get("internal_api") == "affinity":
        planned = _state["cpus"]
        for tid in _affinity()[1]:
            try:
                os.sched_setaffinity(tid, planned)
            except OSError:
                pass
        _state["enforced"].append({"internal_api": "affinity", "filepath": None, "from": _cpu_text(pool["_cpus"]),
                                   "to": _cpu_text(planned), "at": time.time()})
        _state["seen"].pop((None, "affinity"), None)
        sys.stderr.write(f"tcap: enforced: {_who()}: CPU affinity pinned back "
                         f"to {_cpu_text(planned)}\n")
        sys.stderr.flush()
        return
    if "_module" in pool:
        if pool["_limit"] is None:
            if not _state.setdefault("cannot", set()) >= {pool.get("internal_api")}:
                _state["cannot"].add(pool.get("internal_api"))
                sys.stderr.write(
                    f"tcap: note: {_who()}: enforce cannot shrink the "
                    f"{pool.get('internal_api')} pool (sized once, at import); it stays at {before}\n"
                )
            return
        pool["_limit"](pool["_module"], cap)
    else:
        tpc.ThreadpoolController().select(filepath=pool.get("filepath")).limit(limits=cap)
    _state["main_view"] = None  # read again: what the main thread saw before is gone
    # Checked again at the next tick: the program may undo it (threadpoolctl's
    # context managers restore every pool's size as they found it at entry).
    _state["recheck"] = True
    key = (pool.get("filepath"), pool.get("internal_api"))
    again = _state.setdefault("enforced_keys", {})
    again[key] = again.get(key, 0) + 1
    if again[key] > 1:  # undone and brought back again: counted, not announced every time
        if _state["enforced"] and _state["enforced"][-1].get("filepath") == key[0]:
            _state["enforced"][-1]["times"] = again[key]
        return
    _state["enforced"].append(
        {"internal_api": pool.get("internal_api"), "filepath": pool.get("filepath"),
         "from": before, "to": cap, "at": time.time()}
    )
    _state["seen"].pop(key, None)
    sys.stderr.write(
        f"tcap: enforced: {_who()}: {pool.get('internal_api')} "
        f"({pool.get('user_api')}) brought back from {before} to {cap} threads\n"
    )
    sys.stderr.flush()


def _write_record(reason, info, tpc):
    threads = os_threads()
    if threads is not None:
        _state["peak_os_threads"] = max(_state.get("peak_os_threads", 0), threads)
    directory = _state.get("report_dir")
    if not directory:
        return
    import json

    pools = [
        {k: pool.get(k) for k in ("internal_api", "user_api", "prefix", "filepath", "version",
                                  "threading_layer", "num_threads", "cap", "peak_threads")}
        for pool in info
    ]
    record = {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "argv": list(getattr(sys, "orig_argv", None) or [sys.executable] + sys.argv),
        "command": describe_process(),
        "profile": _state.get("profile"),
        "mode": _state.get("mode"),
        "reason": reason,
        "checks": _state.get("checks", 0),
        "checked_at": time.time(),
        "started_at": _state.get("born"),
        "inspected": tpc is not None,
        "os_threads": threads,
        "peak_os_threads": _state.get("peak_os_threads"),
        "python_threads": _thread._count() + 1,
        "unexplained_threads": _state.get("unexplained"),
        "peak_unexplained_threads": _state.get("peak_unexplained"),
        "hazards": [{k: h[k] for k in ("kind", "what")} for h in _state.get("hazards", {}).values()],
        "pools": pools,
        "violations": [{k: v for k, v in item.items() if not k.startswith("_")}
                       for item in _state.get("violations", [])],
        "enforced": _state.get("enforced", []),
        "share": _state["sharer"].record() if _state.get("sharer") is not None else None,
        "observed": _state["observer"].record() if _state.get("observer") is not None else None,
    }
    path = os.path.join(directory, f"{os.getpid()}.json")
    temporary = f"{path}.{time.monotonic_ns()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
    os.replace(temporary, path)


# IPython: a tcap kernelspec starts the kernel with ``--ext=_tcap_probe``
# (``%load_ext tcap`` leads here too): check after every cell, so a
# violation shows in the output of the cell that caused it; and ``%tcap``.


def load_ipython_extension(ipython):
    try:
        if not _state.get("ipython"):
            _state["ipython"] = True
            ipython.events.register("post_run_cell", _after_cell)
        ipython.register_magic_function(_magic, "line", "tcap")
    except Exception:
        _debug("loading the IPython extension")


def _after_cell(result=None):
    try:
        if _state.get("mode") and _numeric_loaded():
            check("cell")
    except Exception:
        _debug("cell check")


def _magic(line=""):
    """%tcap: every native thread pool of this process against its cap;
    ``%tcap apply PROFILE [flags]``: tcap.apply (tcap/api.py)."""
    words = line.split(None, 1)
    if words and words[0] == "apply":
        try:
            from tcap.api import magic_apply
        except ImportError:
            print("tcap: error: %tcap apply needs tcap installed in this kernel's interpreter "
                  f"({sys.executable} -m pip install tcap)")
            return
        magic_apply(words[1] if len(words) > 1 else "")
        return
    if words:
        print(f"tcap: error: %tcap: unknown subcommand {words[0]!r}: %tcap shows the pools, "
              "%tcap apply PROFILE [flags] applies a profile")
        return
    try:
        tpc = _threadpoolctl()
        info = tpc.threadpool_info() + other_pools()
    except Exception as error:
        print(f"tcap: cannot inspect the thread pools: {error}")
        return
    caps = _state.get("caps") if "caps" in _state else _caps()
    mode = _state.get("mode") or "off"
    profile = _state.get("profile") or os.environ.get("TCAP_PROFILE")
    if not caps:  # verification off, or not started by tcap: the variables say what was asked
        caps = {key: int(os.environ[name]) for key, name in ENV_CAPS if os.environ.get(name, "").isdigit()}
        profile = profile or "unknown (caps from the environment's variables)"
    rows = [("LIBRARY", "API", "THREADS", "CAP", "STATUS")]
    for pool in info:
        cap = cap_for(pool, caps)
        threads = pool.get("num_threads") or 0
        status = "-" if cap is None else ("ok" if threads <= cap else "OVER")
        rows.append((str(pool.get("internal_api")), str(pool.get("user_api")), str(threads),
                     "-" if cap is None else str(cap), status))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    cpus = _plural(len(os.sched_getaffinity(0)), "CPU") if hasattr(os, "sched_getaffinity") else "? CPUs"
    lines = [f"tcap: profile {profile}, verify {mode}, {_plural(os_threads() or 0, 'OS thread')}, {cpus} in affinity"]
    if len(rows) == 1:
        lines.append("no native thread pools loaded (threadpoolctl sees none yet)")
    else:
        lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines += _share_lines() + _observed_lines()
    print("\n".join(lines))


def _plural(count, word):
    return f"{count} {word}" + ("" if count == 1 else "s")


def _observed_lines():
    """%tcap's line about the busy threads observed in this process."""
    observer = _state.get("observer")
    record = observer.record() if observer is not None else None
    if record is None:
        return []
    violation = _state.get("observed_violation")
    verdict = (f"; over what the caps allow for {violation['seconds']:g} s ({violation['threads']} > "
               f"{violation['cap']})" if violation else "; within what the caps allow")
    return [f"observed: at most {_plural(record['peak'], 'busy thread')} at once "
            f"({record['python_peak']} of them Python's at most), {record['mean']:g} on average over "
            f"{_plural(record['samples'], 'sample')}{verdict}"]


def _share_lines():
    """%tcap's line about sharing: the share this process applies and why."""
    sharer = _state.get("sharer")
    if sharer is None:
        return ["sharing: on, not joined yet (it starts with the first numeric import)"] \
            if os.environ.get("TCAP_SHARE") else []
    if _state.get("divided"):
        return [f"sharing: counted, pools left alone: {_state['divided']} divides this process's CPUs already"]
    busy = len(sharer.table.busy_others(sharer.pid, time.monotonic(), os.getppid())) + 1
    return [f"sharing: this process's share is {sharer.share} of the launch's {_plural(sharer.table.cpus, 'CPU')} "
            f"({_plural(busy, 'busy process')}, this one counted; {_plural(sharer.busy_threads, 'busy Python thread')})"
            f": pools at most {sharer.per_thread} (and at most their caps); lowest {sharer.low or sharer.per_thread}, "
            f"highest {sharer.high or sharer.per_thread}, {_plural(sharer.changes, 'change')}"]

"""The side effects of a launch: environment, CPU affinity, exec.

A recipe is the part of a Plan the launch needs, as plain data (it is what
the plan cache stores): ``{"env": [[name, value-or-None], ...], "pin":
[cpus] or None}``.
"""

from __future__ import annotations

import errno
import os

from tcap.errors import EXIT_INTERNAL, EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, TcapError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any, NoReturn

    from tcap.plan import Plan


def child_environ(recipe: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with the recipe's variables set and unset, and the probe's
    bootstrap directory first on PYTHONPATH when the plan verifies."""
    env = dict(environ)
    for name, value in recipe["env"]:
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    bootstrap = recipe.get("bootstrap")
    if bootstrap:
        entries = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != bootstrap]
        env["PYTHONPATH"] = os.pathsep.join([bootstrap, *entries])
        if env.get("TCAP_SHARE"):
            # This process (exec'ed into the command, or supervising it) is the
            # launch's root: its probes share through a table named after it.
            env["TCAP_SHARE_LAUNCH"] = f"{os.getpid()}:{share_dir(environ)}"
            # The thread variables as the launch gives them: a process of the
            # launch where they differ was divided by someone else (joblib, Dask).
            env["TCAP_SHARE_BASE"] = ",".join(f"{name}={env.get(name, '')[:32]}" for name in DIVISION_VARIABLES)
    return env


#: tcap._share.DIVISION_VARIABLES' names (a test checks they agree).
DIVISION_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


def share_dir(environ: Mapping[str, str]) -> str:
    """Where the launches' share tables live: ``$XDG_RUNTIME_DIR/tcap``
    (a per-user tmpfs) when set, else ``$XDG_CACHE_HOME/tcap/share``.  The
    probe's copy of this rule (tcap._share.share_dir, for a launch that no
    launcher started) must agree: a test checks it."""
    runtime = environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(runtime) and len(runtime) < 1024:
        return os.path.join(runtime, "tcap")
    from tcap.cache import cache_dir

    return os.path.join(cache_dir(environ), "share")


def probe_environ(plan: Plan, environ: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """(bootstrap directory, TCAP_* variables) that arm the probe for ``plan``;
    the probe records native library facts under TCAP_LIBRARIES."""
    from importlib.util import find_spec

    from tcap.cache import store_dir

    here = os.path.dirname(os.path.abspath(__file__))
    spec = find_spec("threadpoolctl")
    caps = ",".join(f"{key}={value}" for key, value in plan.caps.items() if key != "threads")
    extra = {
        "TCAP_PROBE": os.path.join(here, "probe.py"),
        "TCAP_VERIFY": plan.verify,
        "TCAP_PROFILE": plan.profile,
        "TCAP_CAPS": caps,
        "TCAP_LIBRARIES": store_dir(environ),
    }
    if plan.rank_label:  # the probe names the rank in its warnings
        extra["TCAP_RANK"] = plan.rank_label
    if plan.pin is not None:  # the probe verifies the affinity against it
        extra["TCAP_CPUS"] = ",".join(str(cpu) for cpu in plan.pin)
    if spec is not None and spec.origin:
        extra["TCAP_THREADPOOLCTL"] = spec.origin
    if getattr(plan, "share", "busy") == "busy":  # the probes share the launch's CPUs at run time
        extra["TCAP_SHARE"] = str(plan.cpus)
    return os.path.join(here, "_bootstrap"), extra


def pin(recipe: Mapping[str, Any], environ: Mapping[str, str], child: dict[str, str] | None = None) -> list[int] | None:
    """Apply the recipe's CPU pinning to this process (children inherit it);
    for auto placement, book the CPUs first (tcap.placement), and tell the
    probe in ``child`` (the child's environment) which CPUs were booked.
    Returns the CPUs pinned to (None: the affinity is left alone)."""
    cpus = recipe.get("pin")
    if recipe.get("place"):
        from tcap.placement import book

        cpus = book(recipe["place"], environ)
        if child is not None and recipe.get("bootstrap"):
            child["TCAP_CPUS"] = ",".join(str(cpu) for cpu in sorted(cpus))
    if cpus is None:
        return None
    try:
        set_affinity(cpus)
    except (OSError, AttributeError) as failure:
        raise TcapError(f"cannot pin to CPUs {cpus}: {failure}", code=EXIT_INTERNAL) from None
    return sorted(cpus)


def set_affinity(cpus: Sequence[int], thread: int = 0) -> None:
    """Pin this process (and so its children) to ``cpus`` - the calling
    thread, or the thread whose native id is ``thread``: os.sched_setaffinity,
    or Linux's sched_setaffinity(2) through ctypes where the interpreter
    lacks it (PyPy)."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(thread, cpus)
        return
    import ctypes
    import ctypes.util

    size = (max(cpus) // 64 + 1) * 8  # bytes, a whole number of 64-bit words
    mask = (ctypes.c_ubyte * size)()
    for cpu in cpus:
        mask[cpu // 8] |= 1 << (cpu % 8)
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.sched_setaffinity(thread, ctypes.c_size_t(size), mask) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


def can_exec() -> bool:
    """Whether this system replaces a process image (POSIX exec). Windows'
    os.execv starts a new process and exits, which loses the exit code and
    the console's Ctrl-C: there tcap runs the command as a supervised child."""
    return os.name == "posix" and hasattr(os, "execve")


def execute(recipe: Mapping[str, Any], argv: Sequence[str], environ: Mapping[str, str]) -> NoReturn:
    """Pin, then replace this process with ``argv``; raise TcapError on failure."""
    env = child_environ(recipe, environ)
    pin(recipe, environ, env)
    command = argv[0]
    first: OSError | None = None
    # execvpe's own PATH search imports warnings (os.get_exec_path); this
    # loop does the same search, keeping the first "permission denied".
    for candidate in _candidates(command, env):
        try:
            os.execve(candidate, list(argv), env)
        except OSError as failure:
            if failure.errno == errno.EACCES and os.path.isdir(candidate):
                failure = OSError(errno.EISDIR, "is a directory")
            if first is None or (first.errno == errno.ENOENT and failure.errno != errno.ENOENT):
                first = failure
            if failure.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EISDIR):
                break
    raise exec_error(command, first or OSError(errno.ENOENT, "not found"))


def _candidates(command: str, environ: Mapping[str, str]) -> list[str]:
    if "/" in command:
        return [command]
    path = environ.get("PATH", os.defpath)
    return [os.path.join(directory or ".", command) for directory in path.split(":")]


def exec_error(command: str, error: OSError) -> TcapError:
    """Map a failed exec to env(1)'s exit codes with a hint: 127 when there is
    no such command, 126 when it was found but cannot be run (whatever the
    reason: permissions, format, a missing #! interpreter, a symlink loop, a
    name or arguments too long, a program being written)."""
    if error.errno in (errno.ENOENT, errno.ENOTDIR):
        interpreter = _missing_interpreter(command)
        if interpreter is not None:
            return TcapError(f"cannot execute {command}: its #! line names {interpreter}, which does not exist",
                             code=EXIT_NOT_EXECUTABLE)
        hint = "" if "/" in command else " (not on PATH)"
        return TcapError(f"command not found: {command}{hint}", code=EXIT_NOT_FOUND)
    if error.errno in (errno.EACCES, errno.EPERM):
        kind = _not_a_program(command)
        if kind:
            return TcapError(f"cannot execute {command}: {kind}, not a program", code=EXIT_NOT_EXECUTABLE)
        return TcapError(f"permission denied: {command} (is it executable?)", code=EXIT_NOT_EXECUTABLE)
    if error.errno == errno.ENOEXEC:
        return TcapError(f"cannot execute {command}: exec format error (missing #! line?)", code=EXIT_NOT_EXECUTABLE)
    if error.errno == errno.EISDIR:
        return TcapError(f"cannot execute {command}: is a directory", code=EXIT_NOT_EXECUTABLE)
    if error.errno == errno.E2BIG:
        return TcapError(f"cannot execute {command}: the arguments and environment are too long for the system",
                         code=EXIT_NOT_EXECUTABLE)
    reason = error.strerror or str(error)
    return TcapError(f"cannot execute {command}: {reason}", code=EXIT_NOT_EXECUTABLE)


def _not_a_program(command: str) -> str | None:
    """"a FIFO" (a device, a socket) when ``command`` is one: exec refuses
    those with EACCES, which would read as a permission problem."""
    import stat

    from tcap import safefile

    try:
        mode = os.stat(command).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return safefile.kind(mode)


def _missing_interpreter(command: str) -> str | None:
    """The interpreter a script's ``#!`` line names when the script exists
    but that interpreter does not (exec says ENOENT for both)."""
    if "/" not in command:
        return None
    from tcap import safefile

    try:
        first = safefile.head(command, 256).split(b"\n", 1)[0]
    except OSError:
        return None
    words = first[2:].split() if first.startswith(b"#!") else []
    if not words or os.path.exists(words[0]):
        return None
    return words[0].decode(errors="replace")


def find_command(command: str, environ: Mapping[str, str]) -> str:
    """Where ``command`` would be found, as exec would search (for --dry-run,
    and before a supervised child starts): the same exit codes as exec."""
    import stat

    if not command:
        raise exec_error(command, OSError(errno.ENOENT, "not found"))
    denied = None
    for candidate in _candidates(command, environ):
        try:
            info = os.stat(candidate)
        except OSError as failure:
            if "/" in command and failure.errno not in (errno.ENOENT, errno.ENOTDIR):
                raise exec_error(command, failure) from None  # a symlink loop, a name too long
            continue
        if stat.S_ISDIR(info.st_mode):
            if "/" in command:
                raise exec_error(command, OSError(errno.EISDIR, "is a directory"))
            continue
        if os.access(candidate, os.X_OK):
            if "/" in command:
                interpreter = _missing_interpreter(candidate)
                if interpreter is not None:
                    raise exec_error(command, OSError(errno.ENOENT, "bad interpreter"))
            return candidate
        denied = candidate
    if denied is not None:
        raise exec_error(command, OSError(errno.EACCES, "permission denied"))
    raise exec_error(command, OSError(errno.ENOENT, "not found"))

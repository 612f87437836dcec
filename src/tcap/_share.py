"""Run-time CPU sharing: the probes of one launch divide its CPUs among the
processes (and, inside a process, the Python threads) that are busy now.

Loaded by path by the probe (as ``_tcap_share``) when ``TCAP_SHARE`` is set,
and imported by the supervisor to clean up; standard library only, and
nothing here imports a numeric library or threadpoolctl.

The launch's state is one small file, private to the user (``share_dir``),
named after the launch's root process (``TCAP_SHARE_LAUNCH``: the pid tcap
exec'ed into, or the supervisor; else the first Python process with the
probe, as under a static alias) and that process's start time, so a reused
pid never meets an old file.  It holds ``SLOTS`` records
of ``RECORD.size`` bytes, one per participating process: pid, start time,
heartbeat (CLOCK_MONOTONIC, the same clock in every process), whether it is
busy, the share it applies and its busy Python threads.  A process claims a
slot under a POSIX record lock (tried, never waited on for long), then
writes its own slot with pwrite and reads the table with one pread at
every tick: no daemon, no supervisor, a few microseconds per tick.

The rule (docs/verification.md, "Sharing"): a process is busy when over the
last tick it used at least ``BUSY`` of a CPU and was not importing; with n
busy processes (the deciding one always counted), each gets ``cpus // n``,
the first ``cpus % n`` of them by pid one more, never less than 1; inside a
process the share is divided among its busy Python threads.  A process that
dies without a word stops counting once its heartbeat is ``STALE`` and the
OS says it is gone (or a zombie).
"""

from __future__ import annotations

import os
import struct
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, MutableMapping
    from typing import Any

#: pid, parent pid, start, heartbeat, flags, share, busy threads: 32 bytes, in
#: the machine's byte order (every reader is on this machine), each field at
#: an offset that is a multiple of its size, so a table reads as columns.
RECORD = struct.Struct("=IIQdHHH2x")
SLOTS = 256
SIZE = RECORD.size * SLOTS
TICK = 0.25  # seconds between two looks at the table while anything changes
QUIET = 1.0  # ... for an idle process once nothing changed for QUIET_AFTER seconds
QUIET_AFTER = 1.0
BUSY = 0.5  # of one CPU, over a tick
# A thread that ran less than this share of a tick is not busy, however long
# it waited: an event loop waking every few ms behind busy threads (a Dask
# worker's) waits most of the time, and wants a CPU only for moments.
RAN = 0.2
STALE = 0.6  # seconds without a heartbeat before the OS is asked whether a busy process lives
GONE = 2.5  # ... and before /proc is asked whether it is a zombie or another process with its pid
HOLD = 0.2  # seconds of idle ticks in a row before a busy process counts as idle
IMPORTING = 20  # modules loaded during one tick: the process is still importing
MAX_SAMPLES = 256
BUSY_FLAG = 1
STARTING_FLAG = 2  # a Python child at start, before its first measurement
STARTING = 1.0  # seconds a start counts for its siblings, unless renewed by its ticks while it imports
#: Variables lowered at a Python child's start (before its imports) when its
#: siblings are busy: (variable, cap key).  Numba and Polars size their pool
#: once, at import, so this is the only time they can get their share;
#: OpenMP and OpenBLAS can change later, but get it before the first call.
START_VARIABLES = (("OMP_NUM_THREADS", "openmp"), ("OPENBLAS_NUM_THREADS", "openblas"),
                   ("NUMBA_NUM_THREADS", "numba"), ("POLARS_MAX_THREADS", "polars"))


def settings(environ: Mapping[str, str]) -> tuple[int, int, str] | None:
    """(cpus, root pid, directory) from TCAP_SHARE and TCAP_SHARE_LAUNCH
    ("PID", or "PID:DIRECTORY"), or None."""
    cpus = environ.get("TCAP_SHARE", "")
    root, _, directory = environ.get("TCAP_SHARE_LAUNCH", "").partition(":")
    directory = directory or share_dir(environ)
    if not (cpus.isdigit() and root.isdigit()) or len(cpus) > 6 or len(root) > 10:
        return None
    if not 0 < int(cpus) <= 65536 or not os.path.isabs(directory):
        return None
    return int(cpus), int(root), directory


def share_dir(environ: Mapping[str, str]) -> str:
    """Where the launches' tables live: ``$XDG_RUNTIME_DIR/tcap`` (a per-user
    tmpfs) when set, else ``$XDG_CACHE_HOME/tcap/share`` (default
    ``~/.cache/tcap/share``)."""
    runtime = environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(runtime) and len(runtime) < 1024:
        return os.path.join(runtime, "tcap")
    base = environ.get("XDG_CACHE_HOME") or os.path.join(environ.get("HOME") or os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tcap", "share")


def process_start(pid: int) -> tuple[int, str] | None:
    """(start time in clock ticks, state letter) of ``pid`` from /proc, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read(4096)
    except OSError:
        return None
    fields = text[text.rfind(b")") + 2:].split()
    try:
        return int(fields[19]), fields[0].decode("ascii", "replace")
    except (IndexError, ValueError):
        return None


def path_for(root: int, directory: str) -> str | None:
    """The launch's state file, or None when its root process is gone."""
    found = process_start(root)
    if found is None:
        return None
    return os.path.join(directory, f"share-{root}-{found[0]}")


def _private_dir(directory: str) -> None:
    os.makedirs(directory, mode=0o700, exist_ok=True)
    info = os.lstat(directory)
    if not (info.st_mode & 0o170000 == 0o040000 and info.st_uid == os.geteuid() and not info.st_mode & 0o022):
        raise PermissionError(f"{directory}: not a private directory of this user")


def open_table(path: str, create: bool) -> int:
    """The state file's descriptor: only a regular file of this user's that
    nobody else can write, and no bigger than the table (else OSError)."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    created = False
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        if not create:
            raise
        _private_dir(os.path.dirname(path))
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
            created = True
        except FileExistsError:
            fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not (info.st_mode & 0o170000 == 0o100000 and info.st_uid == os.geteuid()
                and not info.st_mode & 0o022 and info.st_size <= SIZE and info.st_nlink == 1):
            raise PermissionError(f"{path}: not a private state file of this user")
    except BaseException:
        os.close(fd)
        raise
    if created:
        sweep(os.path.dirname(path), os.path.basename(path))
    return fd


def sweep(directory: str, keep: str) -> None:
    """Remove the state files of launches whose root process is gone (a
    root killed without a word leaves its file); bounded."""
    try:
        names = os.listdir(directory)[:1024]
    except OSError:
        return
    for name in names:
        parts = name.split("-")
        if name == keep or len(parts) != 3 or parts[0] != "share" or not (parts[1].isdigit() and parts[2].isdigit()):
            continue
        found = process_start(int(parts[1]))
        if found is None or str(found[0]) != parts[2]:
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass


def read_table(fd: int) -> list[tuple[int, int, int, float, int, int, int]]:
    data = os.pread(fd, SIZE, 0)
    data = data[: len(data) - len(data) % RECORD.size]
    return list(RECORD.iter_unpack(data))


def _schedstat(tid: int) -> float | None:
    """Seconds thread ``tid`` of this process has run or waited to run, from
    Linux's schedstat; None when the thread ended or there is no schedstat."""
    try:
        fd = os.open(f"/proc/self/task/{tid}/schedstat", os.O_RDONLY)
    except OSError:
        return None
    try:
        fields = os.read(fd, 128).split()
        return (int(fields[0]) + int(fields[1])) / 1e9
    except (OSError, ValueError, IndexError):
        return None
    finally:
        os.close(fd)


def thread_busy(
    ident: int, tid: int, elapsed: float, before: tuple[float, float | None] | None,
) -> tuple[bool, tuple[float, float | None]] | None:
    """Whether a Python thread (ident, native id) wanted a CPU for at least
    BUSY of the last ``elapsed`` seconds, and its counters for the next
    time; None when it ended.  Its CPU clock decides when clear (busy, or
    near idle); in between, where a busy machine may be keeping it waiting,
    its run and wait times from schedstat (read only then)."""
    try:
        clock = time.clock_gettime(time.pthread_getcpuclockid(ident))
    except (OSError, OverflowError, ValueError, AttributeError):
        return None
    if before is None:
        return False, (clock, None)
    run = (clock - before[0]) / elapsed
    if run >= BUSY or run < RAN:
        return run >= BUSY, (clock, None)
    wanted = _schedstat(tid)
    if wanted is None or before[1] is None:
        return True, (clock, wanted)  # no baseline yet: busy for one tick rather than a share too big
    return (wanted - before[1]) / elapsed >= BUSY, (clock, wanted)


def divide(cpus: int, busy_pids: Iterable[int], me: int) -> tuple[int, int]:
    """``me``'s share of ``cpus`` among ``busy_pids`` (``me`` is counted
    whether or not it is in them): cpus // n, one more for the first
    cpus % n by pid, never below 1."""
    others = set(busy_pids)
    others.discard(me)
    n = len(others) + 1
    rank = sum(1 for pid in others if pid < me)
    return max(1, cpus // n + (1 if rank < cpus % n else 0)), n


def split(share: int, threads: int) -> int:
    """A process's share divided among its busy Python threads (>= 1)."""
    return max(1, share // max(1, threads))


class Table:
    """One process's view of its launch's table."""

    def __init__(self, cpus: int, path: str, fd: int) -> None:
        self.cpus = cpus
        self.path = path
        self.fd = fd
        self.slot: int | None = None
        self.dead: set[tuple[int, int]] = set()  # (pid, start) known gone

    def busy_others(self, me: int, now: float, parent: int | None = None) -> list[int]:
        """The pids of the other busy processes; a sibling (same parent) that
        is starting counts too: pool workers start together, then work."""
        data = os.pread(self.fd, SIZE, 0)
        view = memoryview(data[: len(data) - len(data) % RECORD.size])
        flags = view.cast("H")[12::16].tolist()
        if not any(flags):
            return []
        words = view.cast("I")
        return [pid for pid, ppid, start, beat, flag in zip(
                    words[0::8].tolist(), words[1::8].tolist(), view.cast("Q")[1::4].tolist(),
                    view.cast("d")[2::4].tolist(), flags)
                if flag and pid != me and pid
                and (flag & BUSY_FLAG or (flag & STARTING_FLAG and ppid == parent and now - beat < STARTING))
                and (now - beat <= STALE or self._lives(pid, start, now - beat))]

    def _lives(self, pid: int, start: int, silent: float) -> bool:
        """Whether a busy process ``silent`` seconds without a heartbeat still
        runs: kill(pid, 0) first (a microsecond; a killed worker its parent
        reaped is gone), /proc once it has been silent for GONE seconds (a
        zombie, or the pid of another process now)."""
        if (pid, start) in self.dead:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            if len(self.dead) < 4096:
                self.dead.add((pid, start))
            return False
        except OSError:
            pass  # another user's pid now: /proc says
        else:
            if silent < GONE:
                return True
        return self._alive(pid, start)

    def _alive(self, pid: int, start: int) -> bool:
        state = process_start(pid)
        if state is None or state[0] != start or state[1] in ("Z", "X", "x"):
            if len(self.dead) < 4096:
                self.dead.add((pid, start))
            return False
        return True

    def claim(self, pid: int, start: int, flags: int = 0) -> int | None:
        """A slot for this process, under a lock tried for at most ~50 ms."""
        import fcntl

        for _ in range(50):
            try:
                fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                time.sleep(0.001)
        else:
            return None
        try:
            records = read_table(self.fd)
            now = time.monotonic()
            own = reuse = None
            for index, (other, _, other_start, beat, _, _, _) in enumerate(records):
                if other == pid:
                    own = index
                    break
                if reuse is None and (other == 0 or (now - beat > STALE and not self._alive(other, other_start))):
                    reuse = index
            slot = own if own is not None else reuse if reuse is not None else \
                len(records) if len(records) < SLOTS else None
            if slot is None:
                return None
            os.pwrite(self.fd, RECORD.pack(pid, os.getppid(), start, now, flags, 0, 0), slot * RECORD.size)
            self.slot = slot
            return slot
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def write(self, pid: int, start: int, busy: bool, share: int, threads: int, starting: bool = False) -> None:
        if self.slot is not None:
            flags = (BUSY_FLAG if busy else 0) | (STARTING_FLAG if starting else 0)
            os.pwrite(self.fd, RECORD.pack(pid, os.getppid(), start, time.monotonic(), flags,
                                           min(share, 65535), min(threads, 65535)), self.slot * RECORD.size)

    def release(self) -> None:
        if self.slot is not None:
            try:
                os.pwrite(self.fd, bytes(RECORD.size), self.slot * RECORD.size)
            except OSError:
                pass
            self.slot = None


def open_launch(environ: Mapping[str, str], create: bool) -> Table | None:
    """The launch's Table, or None (sharing off, root gone, state refused)."""
    found = settings(environ)
    if found is None:
        return None
    cpus, root, directory = found
    path = path_for(root, directory)
    if path is None:
        return None
    try:
        return Table(cpus, path, open_table(path, create))
    except OSError:
        return None


#: Variables whose value below its cap says someone divided the CPUs already.
DIVISION_VARIABLES = (("OMP_NUM_THREADS", "openmp"), ("OPENBLAS_NUM_THREADS", "openblas"),
                      ("MKL_NUM_THREADS", "mkl"), ("BLIS_NUM_THREADS", "blis"))


def base_of(environ: Mapping[str, str]) -> str:
    """TCAP_SHARE_BASE: the DIVISION_VARIABLES as the launch gave them to its
    first process ("OMP_NUM_THREADS=2,OPENBLAS_NUM_THREADS=,...")."""
    return ",".join(f"{name}={environ.get(name, '')[:32]}" for name, _ in DIVISION_VARIABLES)


def shared_at_start(environ: Mapping[str, str]) -> dict[str, tuple[str, str | None]]:
    """TCAP_SHARED, what an ancestor's lower_at_start set: {variable: (value
    it set, the value before it or None)}."""
    found: dict[str, tuple[str, str | None]] = {}
    for item in environ.get("TCAP_SHARED", "").split(","):
        name, _, rest = item.partition("=")
        value, _, before = rest.partition("/")
        if name:
            found[name] = (value, before or None)
    return found


def divided_by_others(environ: Mapping[str, str], caps: Mapping[str, int]) -> str | None:
    """The variable that says this process's CPUs were divided by someone
    else — joblib/loky's cpu_count() // n_jobs or inner_max_num_threads,
    Dask's 1 per worker, torchrun's 1, a script's own value — or None: one of
    DIVISION_VARIABLES that differs from what the launch gave its first
    process (TCAP_SHARE_BASE; without it, a count below the cap) and that
    tcap's own lowering at start (TCAP_SHARED) does not explain.  Such a
    process keeps that division."""
    ours = {name: value for name, (value, _) in shared_at_start(environ).items()}
    base = {}
    for item in environ.get("TCAP_SHARE_BASE", "").split(","):
        name, eq, value = item.partition("=")
        if eq:
            base[name] = value
    for name, key in DIVISION_VARIABLES:
        value = environ.get(name, "")
        if value and ours.get(name) == value:
            continue
        if base:
            if name in base and value[:32] != base[name]:
                return name
        else:
            first = value.split(",")[0].strip()
            if first.isdigit() and key in caps and int(first) < caps[key]:
                return name
    return None


def lower_at_start(
    table: Table, environ: MutableMapping[str, str], caps: Mapping[str, int], me: int,
) -> dict[str, tuple[str, str | None]]:
    """In a child Python at interpreter start: lower the START_VARIABLES to
    its share of the CPUs its busy siblings leave.  Returns {variable:
    (value set, value before or None)}; the original values of a lowering
    done by an ancestor are kept in TCAP_SHARED so none is taken for the
    program's own choice."""
    earlier = shared_at_start(environ)
    share, _ = divide(table.cpus, table.busy_others(me, time.monotonic(), os.getppid()), me)
    done = {}
    for name, key in START_VARIABLES:
        current: str | None = environ.get(name)
        if name in earlier and current == earlier[name][0]:
            current = earlier[name][1]  # tcap's own lowering: the value before it is the ceiling
            if current is None:
                del environ[name]
            else:
                environ[name] = current
        ceiling = caps.get(key, caps.get("openmp" if key == "openmp" else "blas", table.cpus))
        if current is not None:
            first = current.split(",")[0].strip()
            if not first.isdigit() or not 0 < int(first) <= 65536:
                continue  # the program's or user's own value, not a count tcap reads
            ceiling = min(ceiling, int(first))
        if share < ceiling:
            environ[name] = str(share)
            done[name] = (str(share), current)
    # Only this start's lowerings: an ancestor's was undone above (or the
    # program changed the value since, which makes it the program's).
    if done:
        environ["TCAP_SHARED"] = ",".join(f"{n}={v}/{b or ''}" for n, (v, b) in done.items())
    else:
        environ.pop("TCAP_SHARED", None)
    return done


class Sharer:
    """The sharing state of one process: what it measured, decided and set."""

    def __init__(self, table: Table, pid: int, start: int, busy: bool = False, starting: bool = False) -> None:
        self.table = table
        self.starting = starting  # a spawned child: starting until a tick that is not importing
        self.pid = pid
        self.start = start
        self.last: tuple[float, float, int] | None = None  # (monotonic, process CPU time, modules)
        self.threads: dict[int, tuple[float, float | None]] = {}  # native id -> counters (thread_busy)
        self.share = table.cpus  # the process's share of the launch's CPUs
        self.per_thread = table.cpus
        self.busy_threads = 0
        self.busy_seen = 0  # the launch's busy count at the last tick
        self.calm: float | None = None  # since when the ticks measured less demand than the flags say
        self.changed = 0.0  # when the share, the busy flag or count last changed
        self.busy = busy  # until the first measurement: a forked worker counts as busy from its start
        self.low: int | None = None
        self.high: int | None = None
        self.changes = 0
        self.busy_peak = 0
        self.threads_peak = 0
        self.samples: list[list[float]] = []
        self.every = 1  # keep every n-th change once the samples are full
        self.skipped = 0

    def measure(self, modules: int) -> None:
        """The starting point of the first tick's measurement."""
        self.last = (time.monotonic(), time.process_time(), modules)

    def measure_threads(self, now: float, modules: int, python_threads: Iterable[tuple[int, int]]) -> None:
        cpu = time.process_time()
        last = self.last
        elapsed = now - last[0] if last is not None else 1.0
        busy_threads = 0
        seen: dict[int, tuple[float, float | None]] = {}
        for ident, tid in list(python_threads)[:256]:
            found = thread_busy(ident, tid, elapsed, self.threads.get(tid) if last is not None else None)
            if found is not None:
                busy_threads += found[0]
                seen[tid] = found[1]
        self.threads = seen
        self.last = (now, cpu, modules)
        if last is None:
            return
        importing = modules - last[2] >= IMPORTING
        self.starting = self.starting and importing
        # Busy: a Python thread wants a CPU (running or waiting for one), or
        # the native pools run without one of them (Polars, a C pool).
        busy = not importing and (busy_threads > 0 or (cpu - last[1]) / elapsed >= BUSY)
        # Busy at once, idle only after HOLD seconds of idle ticks (and fewer
        # busy threads likewise): a task's gap does not hand the CPUs around,
        # nor does a forked worker's wait for its first task.
        if (self.busy and not busy) or busy_threads < self.busy_threads:
            self.calm = now if self.calm is None else self.calm
        else:
            self.calm = None
        holding = self.calm is not None and now - self.calm < HOLD
        if not busy and self.busy and holding:
            busy = True
        if busy_threads < self.busy_threads and holding:
            busy_threads = self.busy_threads
        if busy != self.busy or busy_threads != self.busy_threads:
            self.changed = now
        self.busy = busy
        self.busy_threads = busy_threads

    def tick(self, modules: int, python_threads: Iterable[tuple[int, int]]) -> int:
        """Measure, publish, decide; returns the per-thread share.
        ``python_threads``: (ident, native id) of the program's Python threads."""
        now = time.monotonic()
        if self.last is None or now - self.last[0] >= 0.05:  # else too soon to measure (a fork's first look)
            self.measure_threads(now, modules, python_threads)
        others = self.table.busy_others(self.pid, now, os.getppid())
        self.share, n = divide(self.table.cpus, others, self.pid)
        count = len(others) + (1 if self.busy else 0)
        self.busy_peak = max(self.busy_peak, count)
        self.threads_peak = max(self.threads_peak, self.busy_threads)
        self.table.write(self.pid, self.start, self.busy, self.share, self.busy_threads, self.starting)
        per_thread = split(self.share, self.busy_threads)
        self.note(per_thread, count)
        return per_thread

    def interval(self) -> float:
        """Seconds to the next tick: TICK while busy, while things change
        and while a busy state is being held; QUIET for a process idle a while
        (it holds no CPUs, and notices its own work at its next tick)."""
        if self.busy or time.monotonic() - self.changed < QUIET_AFTER or self.calm is not None:
            return TICK
        return QUIET

    def note(self, per_thread: int, busy: int) -> None:
        if busy != self.busy_seen:
            self.busy_seen = busy
            self.changed = time.monotonic()
        if per_thread == self.per_thread and self.low is not None:
            return
        self.changed = time.monotonic()
        if self.low is not None:
            self.changes += 1
        self.per_thread = per_thread
        self.low = per_thread if self.low is None else min(self.low, per_thread)
        self.high = per_thread if self.high is None else max(self.high, per_thread)
        self.skipped += 1
        if self.skipped >= self.every:
            self.skipped = 0
            self.samples.append([round(time.time(), 3), per_thread, busy])
            if len(self.samples) >= MAX_SAMPLES:
                self.samples = self.samples[::2]
                self.every *= 2

    def record(self) -> dict[str, Any]:
        return {"cpus": self.table.cpus, "now": self.per_thread, "low": self.low or self.per_thread,
                "high": self.high or self.per_thread, "changes": self.changes, "busy_peak": self.busy_peak,
                "threads_peak": self.threads_peak, "samples": list(self.samples)}


class Pools:
    """Run-time pools as tcap last set them, to tell tcap's own changes from
    the program's: a pool the program changed is taken at its new size as
    the ceiling (tcap never raises a pool the program lowered)."""

    def __init__(self, start_bases: Mapping[str, tuple[str, str | None]] | None = None) -> None:
        self.owned: dict[Any, tuple[int, int]] = {}  # key -> (ceiling, size tcap last saw or set)
        self.start_bases = start_bases or {}  # cap key -> (value set at start, value before it)

    def lowered(self) -> bool:
        return any(size < ceiling for ceiling, size in self.owned.values())

    def adjust(
        self, pools: Iterable[tuple[Any, str, Any, int | None, Callable[[int], Any] | None]], target: int | None,
        limits: Mapping[str, int] | None = None,
    ) -> list[tuple[Any, int, int]]:
        """``pools``: (key, cap key, current size, cap or None, setter or
        None).  Sets each to min(ceiling, cap, target, limit); returns
        [(key, from, to)] for what changed."""
        changed = []
        for key, cap_key, current, cap, setter in pools:
            if not isinstance(current, int) or isinstance(current, bool) or current < 1:
                continue
            state = self.owned.get(key)
            if state is None:
                ceiling = current
                base = self.start_bases.get(cap_key)
                if base is not None and str(current) == base[0]:
                    before = (base[1] or "").split(",")[0].strip()
                    ceiling = int(before) if before.isdigit() and int(before) > 0 else (cap or current)
            elif current != state[1]:
                ceiling = current  # the program's own change
            else:
                ceiling = state[0]
            # Not the cap: a pool over it is the program's escape, which the
            # probe warns about (and enforce brings back); sharing only divides.
            want = max(1, min(ceiling, target or ceiling, (limits or {}).get(cap_key) or ceiling))
            if want != current and setter is not None:
                try:
                    setter(want)
                except Exception:
                    self.owned[key] = (ceiling, current)
                    continue
                changed.append((key, current, want))
                current = want
            self.owned[key] = (ceiling, current)
        return changed

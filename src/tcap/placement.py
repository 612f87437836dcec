"""Cooperative CPU placement for ``cpus = "auto:N"``.

Each launch books N CPUs that no other live tcap-launched process, of any
user, holds, preferring idle ones, and pins to them. Bookings are files in
one directory shared by every user (``$TCAP_BOOKINGS_DIR``, default
``/tmp/tcap-bookings``, created sticky and world-writable like /tmp):

- ``<pid>-<start time>`` per launch, holding the booked CPUs. tcap execs the
  command, so the pid is the command's and the booking lives exactly as long
  as it does: a process that is gone (or a pid reused by another process,
  which has another start time) holds nothing, however it ended, SIGKILL
  included. Stale files are removed by their owner's next launch and
  ignored by everyone else's.
- ``.lock``: every choice is made under an exclusive ``flock`` on it, so two
  launches never pick the same free CPU.

Files are opened without following symlinks and written by atomic rename.
This is cooperation between tcap launches, not a security boundary: any user
can book CPUs, and processes not started by tcap book nothing.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sys
import time

from tcap.errors import EXIT_IO, TcapError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any

#: Exit code when ``on_full = "error"`` (or ``wait`` timing out) leaves too few
#: CPUs: EX_TEMPFAIL of sysexits.h, "try again later".
EXIT_BUSY = 75
#: Seconds between two CPU-time readings used to tell idle CPUs from busy ones.
IDLE_SAMPLE = 0.02
#: Seconds a launch waits for the bookings lock (held for milliseconds normally).
LOCK_PATIENCE = 10.0


def bookings_dir(environ: Mapping[str, str]) -> str:
    return environ.get("TCAP_BOOKINGS_DIR") or "/tmp/tcap-bookings"


def _open_dir(path: str) -> int:
    """An fd of the bookings directory, created if missing; refuse anything
    that is not a real directory safe to share."""
    import stat

    try:
        os.mkdir(path, 0o700)
        os.chmod(path, 0o1777)  # as /tmp: everyone books, nobody removes another's file
    except FileExistsError:
        pass
    except OSError as failure:
        raise TcapError(f"cannot create the CPU bookings directory: {failure.strerror}", path=path,
                        code=EXIT_IO) from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as failure:
        symlink = failure.errno == errno.ELOOP or os.path.islink(path)
        reason = "a symlink" if symlink else failure.strerror
        raise TcapError(f"unusable CPU bookings directory ({reason})", path=path) from None
    info = os.fstat(fd)
    if info.st_mode & 0o002 and not info.st_mode & stat.S_ISVTX:
        os.close(fd)
        raise TcapError("CPU bookings directory is world-writable without the sticky bit; refusing it", path=path)
    return fd


def start_time(pid: int) -> int | None:
    """The start time of ``pid``, or None if it is gone (a zombie, dead but
    not yet collected by its parent, counts as gone)."""
    from tcap.procfacts import backend

    return backend().start_time(pid)


def _alive(pid: int, start: int) -> bool:
    found = start_time(pid)
    if found is not None:
        return found == start
    from tcap.procfacts import backend

    if backend().is_zombie(pid):
        return False
    try:  # /proc hides other users' processes under hidepid: ask the kernel
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return False


def read_bookings(directory: int, clean: bool = True) -> list[dict[str, Any]]:
    """The live bookings; with ``clean``, this user's dead ones are removed."""
    live = []
    for name in os.listdir(directory):
        pid_text, dash, start_text = name.partition("-")
        if not dash or not pid_text.isdigit() or not start_text.isdigit():
            continue
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=directory)
            with os.fdopen(fd) as f:
                owner = os.fstat(f.fileno()).st_uid
                data = json.load(f)
            if not isinstance(data["cpus"], list):
                continue
            cpus = [int(c) for c in data["cpus"]]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if _alive(int(pid_text), int(start_text)):
            live.append({"pid": int(pid_text), "cpus": cpus, "uid": owner, "at": data.get("at")})
        elif clean and owner == os.getuid():
            try:
                os.unlink(name, dir_fd=directory)
            except OSError:
                pass
    return live


def _busy(cpus: Iterable[int]) -> dict[int, float]:
    """Share of the last IDLE_SAMPLE seconds each CPU was busy (0 when unknown)."""
    from tcap.procfacts import backend, busy_share

    facts = backend()
    before = facts.cpu_times()
    time.sleep(IDLE_SAMPLE)
    return busy_share(cpus, before, facts.cpu_times())


def choose(count: int, allowed: Iterable[int], held: Mapping[int, int], busy: Mapping[int, float]) -> list[int]:
    """The ``count`` CPUs with the fewest bookings, the idlest first among
    equals, then the lowest number (pure: the policy of placement)."""
    ranked = sorted(allowed, key=lambda cpu: (held.get(cpu, 0), round(busy.get(cpu, 0.0), 1), cpu))
    return sorted(ranked[:count])


def book(place: Mapping[str, Any], environ: Mapping[str, str], pid: int | None = None) -> list[int]:
    """Book ``place["count"]`` CPUs among ``place["allowed"]`` for ``pid``
    (default: this process, which is about to exec the command)."""
    count, allowed = int(place["count"]), sorted(place["allowed"])
    on_full, timeout = place.get("on_full", "share"), float(place.get("wait_timeout", 600))
    pid = os.getpid() if pid is None else pid
    start = start_time(pid)
    if start is None:
        raise TcapError("cannot read this process's start time from /proc for its CPU booking")
    path = bookings_dir(environ)
    directory = _open_dir(path)
    deadline = time.monotonic() + timeout
    waited = False
    busy = _busy(allowed)  # sampled outside the lock: launches do not queue behind it
    try:
        lock = os.open(".lock", os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW, 0o444, dir_fd=directory)
        try:
            while True:
                _lock(lock, path)
                try:
                    held: dict[int, int] = {}
                    for booking in read_bookings(directory):
                        if booking["pid"] == pid:
                            continue
                        for cpu in booking["cpus"]:
                            held[cpu] = held.get(cpu, 0) + 1
                    free = [cpu for cpu in allowed if not held.get(cpu)]
                    if len(free) >= count or on_full == "share":
                        chosen = choose(count, allowed, held, busy)
                        _write(directory, pid, start, chosen)
                        shared = [cpu for cpu in chosen if held.get(cpu)]
                        break
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
                if on_full == "error" or time.monotonic() >= deadline:
                    why = f"after waiting {timeout:g} s" if on_full == "wait" else "(policy on_full = \"error\")"
                    raise TcapError(
                        f"cpus auto:{count}: only {len(free)} of the CPUs {_cpu_text(allowed)} are free {why}",
                        code=EXIT_BUSY,
                    )
                if not waited:
                    sys.stderr.write(f"tcap: waiting for {count} free CPUs among {_cpu_text(allowed)}...\n")
                    waited = True
                time.sleep(0.2)
        finally:
            os.close(lock)
    except OSError as failure:
        raise TcapError(f"CPU booking failed: {failure.strerror}", path=path) from None
    finally:
        os.close(directory)
    if shared:
        sys.stderr.write(
            f"tcap: notice: cpus auto:{count}: {len(free)} free among {_cpu_text(allowed)}; sharing CPU "
            f"{_cpu_text(shared)} with other tcap launches\n"
        )
    return chosen


def _lock(fd: int, path: str, patience: float = LOCK_PATIENCE) -> None:
    """Take the bookings lock, or fail after ``patience`` seconds: a process
    holding it forever (stopped, or hostile) must not hang every launch."""
    deadline = time.monotonic() + patience
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise TcapError(
                    f"the CPU bookings lock has been held for {patience:g} s by another process", path=path,
                    code=EXIT_BUSY,
                ) from None
            time.sleep(0.01)


def _write(directory: int, pid: int, start: int, cpus: list[int]) -> None:
    name = f"{pid}-{start}"
    temporary = f".{name}.{time.monotonic_ns()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=directory)
    with os.fdopen(fd, "w") as f:
        json.dump({"cpus": cpus, "at": time.time()}, f)
    os.replace(temporary, name, src_dir_fd=directory, dst_dir_fd=directory)


def _cpu_text(cpus: Iterable[int]) -> str:
    from tcap.cpuset import format_cpu_list

    return format_cpu_list(cpus)


def list_bookings(environ: Mapping[str, str]) -> list[dict[str, Any]]:
    """The live bookings (for ``tcap bookings``), without cleaning anything."""
    path = bookings_dir(environ)
    if not os.path.isdir(path):
        return []
    directory = _open_dir(path)
    try:
        return read_bookings(directory, clean=False)
    finally:
        os.close(directory)

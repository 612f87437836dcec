"""Cooperative CPU placement for ``cpus = "auto:N"``.

Each launch books N CPUs that no other live tcap-launched process, of any
user, holds, preferring idle ones, and pins to them. Bookings are files in
one directory shared by every user (``$TCAP_BOOKINGS_DIR``, default
``/tmp/tcap-bookings``, created sticky and world-writable like /tmp).

The directory is trusted only when it belongs to root or to this user (the
owner of a sticky directory may delete or rename everyone's files in it): in
another user's directory a launch places itself without bookings, with one
note. Administrators create it root-owned (docs/shared-servers.md).

- A booking is ``<uid>-<pid>-<start time>-<random>``, holding the booked
  CPUs (and, for a supervised run, the child's pid and start time too). The
  random part means nobody can create a launch's name before it does; the
  file's owner must be the uid the name claims, and the processes it names
  must be that user's, or it is ignored. tcap execs the command, so the pid
  is the command's and the booking lives exactly as long as it does: a
  process that is gone (or a pid reused by another process, which has
  another start time) holds nothing, however it ended, SIGKILL included.
  Stale files are removed by their owner's next launch and ignored by
  everyone else's.
- Every booking is read through :mod:`tcap.safefile` (a regular file of its
  owner, never through a symlink, without blocking, at most
  :data:`MAX_BOOKING` bytes, bounded JSON), and its CPUs are checked one by
  one: a FIFO, a huge or a poisoned file holds nothing.
- Every choice is made under an exclusive ``flock`` on the directory itself
  (an open directory cannot be a FIFO, nor be replaced while it is held). A
  process that keeps the lock (stopped, or hostile) delays a launch by at
  most :data:`LOCK_PATIENCE` seconds, after which it places itself without
  the lock, with one note.

This is cooperation between tcap launches, not a security boundary: any user
can book CPUs, and processes not started by tcap book nothing.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import stat
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
#: Seconds one process may hold the bookings lock before a launch goes on
#: without it (it is held for milliseconds normally; when it changes hands,
#: launches are queueing, and they wait on up to LOCK_CAP seconds in all).
LOCK_PATIENCE = 2.0
LOCK_CAP = 30.0
#: The largest booking file read (all 8192 CPUs take about 48 KiB).
MAX_BOOKING = 64 << 10
#: Bookings read per user at a launch (a user filling the directory with
#: files slows no-one else's reading beyond this).
MAX_PER_USER = 1024
#: Processes one booking may name (tcap and its supervised child).
MAX_PIDS = 4
#: Linux's PID_MAX_LIMIT, and the largest uid.
PID_MAX = 1 << 22
UID_MAX = (1 << 32) - 1
#: Seconds after which a temporary file of this user's is a leftover.
STALE_TEMPORARY = 60.0

NAME = re.compile(r"([0-9]{1,10})-([0-9]{1,7})-([0-9]{1,20})-([0-9a-f]{16})")
TEMPORARY = ".tmp-"


def bookings_dir(environ: Mapping[str, str]) -> str:
    return environ.get("TCAP_BOOKINGS_DIR") or "/tmp/tcap-bookings"


def _uid() -> int:
    return os.getuid()


def _trusted(uid: int) -> bool:
    return uid in (0, _uid())


def _who(uid: int) -> str:
    import pwd

    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (KeyError, OverflowError):
        return f"uid {uid}"


def _untrusted(path: str, why: str) -> None:
    sys.stderr.write(f"tcap: note: CPU bookings directory {path} {why}: placing without bookings (an "
                     "administrator should create it root-owned, mode 1777)\n")


def _open_dir(path: str, create: bool = True) -> int | None:
    """An fd of the bookings directory (created if missing and ``create``);
    None when it is missing (and not created) or another user's (one note).
    Refuse a symlink, a file or a directory others may write without the
    sticky bit, of root or this user (exit 2); I/O errors exit 74."""
    if create:
        try:
            os.mkdir(path, 0o700)
            os.chmod(path, 0o1777)  # as /tmp: everyone books, nobody removes another's file
        except FileExistsError:
            pass
        except OSError as failure:
            raise TcapError(f"cannot create the CPU bookings directory: {failure.strerror}", path=path,
                            code=EXIT_IO) from None
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        if create:
            raise TcapError("cannot create the CPU bookings directory: it vanished", path=path,
                            code=EXIT_IO) from None
        return None
    except OSError as failure:
        raise TcapError(f"cannot reach the CPU bookings directory: {failure.strerror}", path=path,
                        code=EXIT_IO) from None
    if not stat.S_ISDIR(info.st_mode):
        kind = "a symlink" if stat.S_ISLNK(info.st_mode) else "Not a directory"
        if not _trusted(info.st_uid):
            what = "a symlink" if stat.S_ISLNK(info.st_mode) else "not a directory"
            _untrusted(path, f"is {what}, made by {_who(info.st_uid)}, not by root or you")
            return None
        raise TcapError(f"unusable CPU bookings directory ({kind})", path=path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as failure:
        if failure.errno in (errno.ELOOP, errno.ENOTDIR):  # replaced since it was looked at
            raise TcapError("unusable CPU bookings directory (replaced while it was opened)", path=path) from None
        raise TcapError(f"cannot open the CPU bookings directory: {failure.strerror}", path=path,
                        code=EXIT_IO) from None
    info = os.fstat(fd)
    if not _trusted(info.st_uid):
        os.close(fd)
        _untrusted(path, f"belongs to {_who(info.st_uid)}, not to root or you")
        return None
    mode = info.st_mode
    if mode & 0o022 and not mode & stat.S_ISVTX:
        os.close(fd)
        who = "world" if mode & 0o002 else "group"
        raise TcapError(f"CPU bookings directory is {who}-writable without the sticky bit; refusing it", path=path)
    return fd


def start_time(pid: int) -> int | None:
    """The start time of ``pid``, or None if it is gone (a zombie, dead but
    not yet collected by its parent, counts as gone)."""
    from tcap.procfacts import backend

    return backend().start_time(pid)


def _real_uid(pid: int) -> int | None:
    """The real uid of ``pid`` from /proc (None where it cannot be read: a
    kernel file, read as tcap.procfacts reads /proc)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            data = f.read(1 << 16)
    except OSError:
        return None
    for line in data.splitlines():
        if line.startswith(b"Uid:"):
            fields = line.split()
            return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None
    return None


def _alive(pid: int, start: int, uid: int | None = None) -> bool:
    """Whether ``pid`` is the process that started at ``start`` (and, where
    /proc tells, one of ``uid``'s: a booking cannot live on another user's
    process)."""
    found = start_time(pid)
    if found is not None:
        if found != start:
            return False
        # This user's own files are this user's word; another's must name its processes.
        owner = _real_uid(pid) if uid is not None and uid != _uid() else None
        return owner is None or owner == uid
    from tcap.procfacts import backend

    if backend().is_zombie(pid):
        return False
    try:  # /proc hides other users' processes under hidepid: ask the kernel
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return False


def _parse(data: bytes) -> dict[str, Any] | None:
    """A booking's content, checked field by field; None when malformed."""
    from tcap import bounds, safefile

    try:
        value = safefile.load_json(data)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    raw = value.get("cpus")
    if not isinstance(raw, list) or not raw or len(raw) > bounds.MAX_CPU + 1:
        return None
    cpus = set()
    for cpu in raw:
        checked = safefile.number(cpu, 0, bounds.MAX_CPU)
        if checked is None:
            return None
        cpus.add(int(checked))
    pids = []
    extra = value.get("pids", [])
    if not isinstance(extra, list) or len(extra) > MAX_PIDS:
        return None
    for pair in extra:
        if not isinstance(pair, list) or len(pair) != 2:
            return None
        pid, start = safefile.number(pair[0], 1, PID_MAX), safefile.number(pair[1], 0, 1 << 63)
        if pid is None or start is None:
            return None
        pids.append((int(pid), int(start)))
    at = safefile.number(value.get("at"), 0, 1e12, integer=False)
    return {"cpus": sorted(cpus), "pids": pids, "at": at}


def read_bookings(directory: int, clean: bool = True) -> list[dict[str, Any]]:
    """The live bookings; with ``clean``, this user's dead ones (and its
    leftover temporary files) are removed."""
    from tcap import safefile

    me = _uid()
    live = []
    read: dict[int, int] = {}
    for name in os.listdir(directory):
        if name.startswith(TEMPORARY):
            if clean:
                _clean_temporary(directory, name, me)
            continue
        match = NAME.fullmatch(name)
        if match is None:
            continue
        uid, pid, start = int(match[1]), int(match[2]), int(match[3])
        if uid > UID_MAX or not 0 < pid <= PID_MAX or read.get(uid, 0) >= MAX_PER_USER:
            continue
        try:  # a regular file of the uid it claims, never followed, never blocking, bounded
            data = safefile.read(name, MAX_BOOKING, owners={uid}, follow=False, dir_fd=directory)
        except OSError:
            continue
        read[uid] = read.get(uid, 0) + 1
        booking = _parse(data)
        if booking is None:
            continue
        processes = [(pid, start), *booking["pids"]]
        running = [p for p, s in processes if _alive(p, s, uid)]
        if running:
            live.append({"pid": pid, "pids": running, "cpus": booking["cpus"], "uid": uid, "at": booking["at"],
                         "file": name})
        elif clean and uid == me:
            try:
                os.unlink(name, dir_fd=directory)
            except OSError:
                pass
    return live


def _clean_temporary(directory: int, name: str, me: int) -> None:
    """Remove this user's temporary file ``name`` if it is a leftover (a
    launch killed between writing and renaming it)."""
    if not name.startswith(f"{TEMPORARY}{me}-"):
        return
    try:
        info = os.stat(name, dir_fd=directory, follow_symlinks=False)
        if info.st_uid == me and time.time() - info.st_mtime > STALE_TEMPORARY:
            os.unlink(name, dir_fd=directory)
    except OSError:
        pass


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


class Booking:
    """This process's booking: where it is, to add a supervised child to it."""

    def __init__(self, directory: int, name: str, content: dict[str, Any]) -> None:
        self.directory = directory
        self.name = name
        self.content = content


#: The booking this process made (None before, or when it booked nothing).
current: Booking | None = None


def book(place: Mapping[str, Any], environ: Mapping[str, str], pid: int | None = None) -> list[int]:
    """Book ``place["count"]`` CPUs among ``place["allowed"]`` for ``pid``
    (default: this process, which is about to exec the command)."""
    global current
    count, allowed = int(place["count"]), sorted(place["allowed"])
    on_full, timeout = place.get("on_full", "share"), float(place.get("wait_timeout", 600))
    pid = os.getpid() if pid is None else pid
    start = start_time(pid)
    if start is None:
        raise TcapError("cannot read this process's start time for its CPU booking", code=EXIT_IO)
    path = bookings_dir(environ)
    directory = _open_dir(path)
    busy = _busy(allowed)  # sampled outside the lock: launches do not queue behind it
    if directory is None:  # another user's directory: placed on the idlest CPUs, booked nowhere
        return choose(count, allowed, {}, busy)
    deadline = time.monotonic() + timeout
    waited = False
    lockless = False
    kept = False
    try:
        while True:
            locked = False if lockless else _lock(directory, path)
            lockless = not locked
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
                    content = {"cpus": chosen, "at": time.time()}
                    name = _write(directory, f"{_uid()}-{pid}-{start}", content)
                    current = Booking(directory, name, content)
                    kept = True
                    shared = [cpu for cpu in chosen if held.get(cpu)]
                    break
            finally:
                if locked:
                    fcntl.flock(directory, fcntl.LOCK_UN)
            if on_full == "error" or time.monotonic() >= deadline:
                why = f"after waiting {timeout:g} s" if on_full == "wait" else "(policy on_full = \"error\")"
                raise TcapError(
                    f"cpus auto:{count}: only {len(free)} of the CPUs {_cpu_text(allowed)} "
                    f"{'is' if len(free) == 1 else 'are'} free {why}",
                    code=EXIT_BUSY,
                )
            if not waited:
                from tcap.plural import counted

                sys.stderr.write(f"tcap: waiting for {counted(count, 'free CPU')} among {_cpu_text(allowed)}...\n")
                waited = True
            time.sleep(0.2)
    except OSError as failure:
        raise TcapError(f"CPU booking failed: {failure.strerror}", path=path, code=EXIT_IO) from None
    finally:
        if not kept:
            os.close(directory)
    if shared:
        sys.stderr.write(
            f"tcap: notice: cpus auto:{count}: {len(free)} free among {_cpu_text(allowed)}; sharing CPU "
            f"{_cpu_text(shared)} with other tcap launches\n"
        )
    return chosen


def hold_for(pid: int) -> None:
    """Add ``pid`` (a supervised child) to this process's booking, so the
    booking lives while either runs: a supervised tcap killed with SIGKILL
    does not take its child's CPUs with it. Best effort: nothing is raised."""
    booking = current
    start = start_time(pid)
    if booking is None or start is None:
        return
    content = dict(booking.content)
    content["pids"] = [*content.get("pids", []), [pid, start]][-MAX_PIDS:]
    try:
        _replace(booking.directory, booking.name, content)
    except OSError:
        return
    booking.content = content


def _lock(fd: int, path: str) -> bool:
    """Take the bookings lock (True); or give up (False, one note) when one
    process has held it for LOCK_PATIENCE seconds, or launches have queued
    for LOCK_CAP: a process holding it forever (stopped, or hostile) must
    not hold up every launch."""
    began = time.monotonic()
    holder: int | None = None
    since = began
    look = began
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        except OSError as failure:  # a filesystem without flock
            sys.stderr.write(f"tcap: note: cannot lock the CPU bookings directory {path} ({failure.strerror}); "
                             "booking without the lock\n")
            return False
        now = time.monotonic()
        if now >= look:
            seen = _lock_holder(fd)
            if seen != holder:
                holder, since = seen, now
            look = now + 0.25
        if now - since >= LOCK_PATIENCE:
            who = "" if holder is None else f" by pid {holder}"
            sys.stderr.write(f"tcap: note: the CPU bookings lock of {path} has been held{who} for "
                             f"{now - since:.0f} s; booking without it\n")
            return False
        if now - began >= LOCK_CAP:
            sys.stderr.write(f"tcap: note: waited {now - began:.0f} s in the queue for the CPU bookings lock of "
                             f"{path}; booking without it\n")
            return False
        time.sleep(0.005)


def _lock_holder(fd: int) -> int | None:
    """The pid holding the flock on the open file ``fd`` (Linux's
    /proc/locks), or None when it cannot be told."""
    from tcap import safefile

    info = os.fstat(fd)
    key = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}".encode()
    try:
        data = safefile.read("/proc/locks", 4 << 20)
    except OSError:
        return None
    for line in data.splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[1] == b"FLOCK" and fields[5] == key and fields[4].isdigit():
            return int(fields[4])
    return None


def _write(directory: int, stem: str, content: dict[str, Any]) -> str:
    """A new booking file ``STEM-RANDOM`` holding ``content``; its name.

    Written under a temporary name (created with O_EXCL) and renamed: a
    reader never sees half a booking. The random part cannot be guessed, so
    nobody can take the name first; the temporary file never stays behind."""
    for _ in range(8):
        name = f"{stem}-{os.urandom(8).hex()}"
        try:
            _replace(directory, name, content, fresh=True)
        except FileExistsError:
            continue  # somebody holds that name (it cannot be guessed: never happens)
        return name
    raise OSError(errno.EEXIST, "could not create a booking file")


def _replace(directory: int, name: str, content: dict[str, Any], fresh: bool = False) -> None:
    """Write ``content`` to ``name`` through a temporary file and a rename
    (with ``fresh``, fail with FileExistsError rather than replace a file)."""
    temporary = f"{TEMPORARY}{_uid()}-{os.urandom(8).hex()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(temporary, flags, 0o644, dir_fd=directory)
    try:
        try:
            os.fchmod(fd, 0o644)  # readable by everyone whatever the umask: others must see it
            data = json.dumps(content).encode()
            while data:
                data = data[os.write(fd, data):]
        finally:
            os.close(fd)
        if fresh:
            try:
                os.link(temporary, name, src_dir_fd=directory, dst_dir_fd=directory, follow_symlinks=False)
                return
            except FileExistsError:
                raise
            except OSError as failure:
                if failure.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
                    raise
                # A filesystem without hard links: the name is random, a rename replaces nothing.
        os.replace(temporary, name, src_dir_fd=directory, dst_dir_fd=directory)
    finally:
        try:
            os.unlink(temporary, dir_fd=directory)
        except OSError:
            pass


def _cpu_text(cpus: Iterable[int]) -> str:
    from tcap.cpuset import format_cpu_list

    return format_cpu_list(cpus)


def list_bookings(environ: Mapping[str, str]) -> list[dict[str, Any]]:
    """The live bookings (for ``tcap bookings``), without cleaning anything."""
    path = bookings_dir(environ)
    directory = _open_dir(path, create=False)
    if directory is None:
        return []
    try:
        return read_bookings(directory, clean=False)
    except OSError as failure:
        raise TcapError(f"cannot read the CPU bookings directory: {failure.strerror}", path=path,
                        code=EXIT_IO) from None
    finally:
        os.close(directory)

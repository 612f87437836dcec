"""The one way tcap touches the filesystem: reads that cannot hang, grow or be
steered, and writes that never lose the old file.

Every read tcap makes (profiles, the policy, bookings, caches, library facts,
reports, plans, kernelspecs) goes through :func:`read`: the path is looked at
before it is opened, so a FIFO, a device, a socket or a directory is refused
with a reason instead of opened (opening a FIFO for reading blocks until a
writer comes); it is then opened non-blocking (a file swapped for a FIFO in
between still cannot block), checked again on the open descriptor (the file
read is the file checked), held to an owner and to "nobody else can write
it" where the caller asks, and refused when larger than the caller's bound
*before* a byte is read. :func:`load_json` parses within the recursion
limit and refuses NaN; :func:`number` checks a value's type and range.

Every write goes through :func:`write_atomic`: a new file made with
``O_EXCL`` under a random name in the destination's directory, written and
flushed whole, then renamed over the destination. A full disk fails before
the rename, so the old file is never truncated; a symlink at the destination
is replaced, never followed.

The models: OpenSSH's checks of its key files (owner and mode), sudo's
refusal of a sudoers file others can write, ``mkstemp``'s ``O_EXCL``.

This module is the bottom layer: it imports nothing of tcap's (the probe and
``tcap._inspect`` load it by path inside other interpreters), and it runs on
Python 3.9 and PyPy.
"""

from __future__ import annotations

import errno
import os
import stat

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection
    from typing import Any


class Refused(OSError):
    """A file tcap will not use, with the reason as one line (``strerror``)
    and the path (``filename``): a FIFO, another user's file, too large..."""

    def __init__(self, path: str, reason: str, code: int = errno.EPERM) -> None:
        super().__init__(code, reason, path)


def kind(mode: int) -> str:
    """What a file of ``mode`` is, for a message: "a FIFO", "a device"..."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def check(path: str, info: os.stat_result, owners: Collection[int] | None = None, private: bool = False) -> None:
    """Refuse ``info`` (an os.stat_result of ``path``) unless it is a regular
    file; with ``owners``, owned by one of those uids; with ``private``, not
    writable by group or others (else: not writable by others)."""
    if not stat.S_ISREG(info.st_mode):
        raise Refused(path, f"{kind(info.st_mode)}, not a regular file")
    if owners is not None and info.st_uid not in owners:
        raise Refused(path, f"owned by uid {info.st_uid}, not by {_owners_text(owners)}")
    if info.st_mode & (0o022 if private else 0o002):
        who = "group or others" if private else "other users"
        raise Refused(path, f"writable by {who} (mode {stat.S_IMODE(info.st_mode):04o}); refusing it")


def _owners_text(owners: Collection[int]) -> str:
    names = []
    for uid in sorted(owners):
        names.append("root" if uid == 0 else "you" if uid == _uid() else f"uid {uid}")
    return " or ".join(names)


def _uid() -> int:
    return os.getuid() if hasattr(os, "getuid") else -1


def mine() -> frozenset[int]:
    """The owners a private file may have: this user (and root, for root)."""
    return frozenset((_uid(),))


def read(path: str, limit: int, owners: Collection[int] | None = None, private: bool = False, follow: bool = True,
         dir_fd: int | None = None) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them.

    Raises :class:`Refused` (an OSError) for anything that is not a regular
    file, has the wrong owner or mode, or is larger than ``limit``; and the
    OSError of the system call otherwise (ENOENT, EACCES, ELOOP...). With
    ``follow=False`` a symlink at ``path`` itself is refused (ELOOP)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    if not follow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    kwargs = {} if dir_fd is None else {"dir_fd": dir_fd}
    # Looked at before it is opened: opening some devices has effects.
    before = os.stat(path, follow_symlinks=follow, **kwargs)
    if not follow and stat.S_ISLNK(before.st_mode):
        raise Refused(path, "a symlink; refusing to follow it", errno.ELOOP)
    check(path, before, owners, private)
    if before.st_size > limit:
        raise Refused(path, f"{before.st_size} bytes, larger than tcap's limit of {_size_text(limit)} for it",
                      errno.EFBIG)
    fd = os.open(path, flags, **kwargs)
    try:
        info = os.fstat(fd)
        check(path, info, owners, private)
        if (info.st_dev, info.st_ino) != (before.st_dev, before.st_ino):
            raise Refused(path, "replaced while it was being opened", errno.EAGAIN)
        chunks = []
        left = limit + 1
        while left > 0:
            try:
                chunk = os.read(fd, min(left, 1 << 20))
            except BlockingIOError:  # pragma: no cover (regular files do not block)
                break
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise Refused(path, f"larger than tcap's limit of {_size_text(limit)} for it", errno.EFBIG)
    return data


def head(path: str, size: int) -> bytes:
    """The first ``size`` bytes of the regular file ``path`` (a script's
    ``#!`` line): opened without blocking, anything else refused (OSError)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    check(path, os.stat(path))
    fd = os.open(path, flags)
    try:
        check(path, os.fstat(fd))
        return os.read(fd, size)
    finally:
        os.close(fd)


def _size_text(limit: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if limit >= 1 << shift and limit % (1 << shift) == 0:
            return f"{limit >> shift} {unit}"
    return f"{limit} bytes"


def load_json(data: bytes | str) -> Any:
    """Parse JSON ``data`` (bytes or text); raise ValueError with a short
    reason otherwise (nesting deeper than the interpreter's recursion limit,
    NaN and Infinity, numbers of thousands of digits, invalid text). The
    callers check every field's type and range after (1e400 parses as
    an infinite float: :func:`number` refuses it)."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"not UTF-8 (byte {error.start + 1})") from None
    import json  # not at the top: the launch path reads its cache entry without it

    try:
        value = json.loads(data, parse_constant=_no_constant)
    except RecursionError:  # the C decoder stops at the interpreter's recursion limit
        raise ValueError("nested too deeply") from None
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number tcap takes")


def number(value: Any, low: float, high: float, integer: bool = True) -> Any:
    """``value`` if it is a JSON number (not a boolean) from ``low`` to
    ``high`` (an int when ``integer``), else None: what a booking's CPU, a
    count or a time must pass before use."""
    if isinstance(value, bool):
        return None
    if integer and not isinstance(value, int):
        return None
    if not isinstance(value, (int, float)) or not low <= value <= high:  # NaN and infinities fail here
        return None
    return value


def read_json(path: str, limit: int, owners: Collection[int] | None = None, private: bool = False,
              follow: bool = True, dir_fd: int | None = None) -> Any:
    """:func:`read` then :func:`load_json`: OSError or ValueError."""
    return load_json(read(path, limit, owners, private, follow, dir_fd))


def write_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` (bytes) whole, or leave it as it was.

    The new file is created with ``O_EXCL`` in the same directory, written,
    flushed to disk and renamed over ``path``: a symlink at ``path`` is
    replaced, not followed; a full disk fails before anything is replaced.
    A destination that exists and is not a regular file (a directory, a
    FIFO) is refused. Raises OSError."""
    check_destination(path)
    directory = os.path.dirname(path) or "."
    temporary = _create_temporary(directory, os.path.basename(path), mode)
    name, fd = temporary
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(name, path)
    except BaseException:
        try:
            os.unlink(name)
        except OSError:
            pass
        raise


def _create_temporary(directory: str, stem: str, mode: int) -> tuple[str, int]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(16):
        name = os.path.join(directory, f".{stem[:64]}.{os.urandom(6).hex()}.tmp")
        try:
            fd = os.open(name, flags, mode)
        except FileExistsError:
            continue
        try:
            os.fchmod(fd, mode)  # the umask must not make a shared file private, nor widen it
        except (OSError, AttributeError):
            pass
        return name, fd
    raise OSError(errno.EEXIST, "could not create a temporary file", directory)


def check_destination(path: str) -> None:
    """Refuse a destination that exists and is neither a regular file nor a
    symlink (which a rename replaces); raise OSError."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode)):
        raise Refused(path, f"{kind(info.st_mode)}; refusing to replace it", errno.EEXIST)


def check_writable(path: str) -> None:
    """Whether ``path`` can be written by :func:`write_atomic`, found out
    without touching it: its directory takes a new file (made and removed
    again), and the destination is not a directory or a FIFO. Raises OSError."""
    check_destination(path)
    directory = os.path.dirname(path) or "."
    name, fd = _create_temporary(directory, os.path.basename(path), 0o600)
    os.close(fd)
    os.unlink(name)


def private_dir(path: str, create: bool = True) -> str:
    """``path`` as a directory of this user's that nobody else can write,
    created (mode 0700, parents too) if missing; raise :class:`Refused` when
    it is another user's, writable by others, or not a directory (a cache
    under a shared XDG_CACHE_HOME is not used, rather than trusted)."""
    if create:
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
        except FileExistsError:
            pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise Refused(path, f"{'a symlink' if stat.S_ISLNK(info.st_mode) else kind(info.st_mode)}, "
                            "not a directory of yours")
    if info.st_uid != _uid():
        raise Refused(path, f"owned by uid {info.st_uid}, not by you")
    if info.st_mode & 0o022:
        raise Refused(path, f"writable by group or others (mode {stat.S_IMODE(info.st_mode):04o})")
    return path


def searchable(path: str) -> tuple[str, str] | None:
    """None when every directory above ``path`` can be searched by this user,
    else (the first directory that cannot, the OS reason): a file that exists
    behind it cannot be told from one that does not."""
    path = os.path.abspath(path)
    parts = path.split(os.sep)
    for index in range(1, len(parts)):
        directory = os.sep.join(parts[:index]) or os.sep
        try:
            os.stat(os.path.join(directory, parts[index]))
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            return None
        except OSError as failure:  # EACCES mostly; ELOOP, EIO too
            return directory, failure.strerror or str(failure)
    return None

"""A per-user cache of resolved launches, so ``tcap run`` rarely parses TOML.

An entry maps a key — tcap's version, the profile asked for, the flags, the
profile search path and the machine facts — to the launch recipe (variables
and CPU pinning) plus every file the resolution depended on, with its
(mtime, size, inode) or None for a file that must stay absent.  An entry is
used only when all of those still match, so editing, adding or removing a
profile anywhere on the search path invalidates it.

The file is written atomically (temporary file + rename) and read only when
it belongs to the current user and nobody else can write it.  Every failure
here is a cache miss: the cache can make tcap faster, never wrong.
"""

from __future__ import annotations

import marshal
import os

from tcap import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

MAX_ENTRIES = 64
#: Bump when the recipe's shape changes, so older caches are never read.
FORMAT = 4
FILENAME = f"plans-{__version__}-{FORMAT}.marshal"


def cache_dir(environ: Mapping[str, str]) -> str:
    """tcap's directory in the user's cache: ``$XDG_CACHE_HOME/tcap``
    (default ``~/.cache/tcap``)."""
    base = environ.get("XDG_CACHE_HOME") or os.path.join(environ.get("HOME") or os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tcap")


def cache_file(environ: Mapping[str, str]) -> str | None:
    """Where the cache lives, or None when it is disabled (TCAP_NO_CACHE=1)."""
    if environ.get("TCAP_NO_CACHE", "") not in ("", "0"):
        return None
    return os.path.join(cache_dir(environ), FILENAME)


def signature(path: str) -> tuple[int, int, int] | None:
    """A file's (mtime_ns, size, inode), or None when it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _read_all(path: str) -> dict[Any, Any]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return {}
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            return {}
        with os.fdopen(fd, "rb") as f:
            fd = -1
            data = marshal.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, EOFError, ValueError, TypeError):
        return {}
    finally:
        if fd >= 0:
            os.close(fd)


def lookup(path: str | None, key: tuple[Any, ...]) -> Any:
    """The recipe stored under ``key`` if every file it depends on is unchanged."""
    if path is None:
        return None
    entry = _read_all(path).get(key)
    if not isinstance(entry, tuple) or len(entry) != 2:
        return None
    depends, recipe = entry
    try:
        for dep_path, sig in depends:
            if not isinstance(dep_path, str) or signature(dep_path) != sig:
                return None
    except (TypeError, ValueError):  # a malformed entry is a miss
        return None
    return recipe


def store(path: str | None, key: tuple[Any, ...], depends: list[tuple[str, Any]], recipe: Any) -> None:
    """Add an entry, keeping the newest MAX_ENTRIES; failures are ignored."""
    if path is None:
        return
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        entries = _read_all(path)
        entries.pop(key, None)
        entries[key] = (tuple(depends), recipe)
        while len(entries) > MAX_ENTRIES:
            entries.pop(next(iter(entries)))
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            marshal.dump(entries, f)
        os.replace(temporary, path)
    except (OSError, ValueError):
        _unlink(temporary)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass

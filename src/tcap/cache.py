"""A per-user cache of resolved launches, so ``tcap run`` rarely parses TOML.

An entry maps a key — tcap's version, the profile asked for, the flags, the
profile search path and the machine facts — to the launch recipe (variables
and CPU pinning) plus every file the resolution depended on, with its
(mtime, size, inode) or None for a file that must stay absent.  An entry is
used only when all of those still match, so editing, adding or removing a
profile anywhere on the search path invalidates it.

One small file per key, named by a checksum of the key and read by name: a
launch reads its own entry and nothing else, so it costs the same whether
the cache holds one plan or MAX_ENTRIES (a single file of every plan, read
whole at each launch, made a well-used cache cost 5 ms a launch). The key
itself is stored in the entry and compared, so a hash collision is a miss.

Entries are written atomically (an ``O_EXCL`` temporary file and a rename)
into a directory of this user's that nobody else can write, and read only
when they are regular files of this user that nobody else can write (never
through a symlink, a FIFO or a device), no larger than MAX_ENTRY_BYTES, and
of the recipe's shape. Every failure here is a cache miss: the cache can
make tcap faster, never wrong, and never stop a launch.
"""

from __future__ import annotations

import marshal
import os

from tcap import __version__, safefile
from tcap.bounds import MAX_CPU, MAX_THREADS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

#: Entries kept; a store beyond this removes the least recently written.
MAX_ENTRIES = 64
#: An entry is a recipe of a few dozen variables: far below this.
MAX_ENTRY_BYTES = 256 << 10
#: Bump when the recipe's shape changes, so older caches are never read.
FORMAT = 6
DIRNAME = f"plans-{__version__}-{FORMAT}"


def cache_dir(environ: Mapping[str, str]) -> str:
    """tcap's directory in the user's cache: ``$XDG_CACHE_HOME/tcap``
    (default ``~/.cache/tcap``)."""
    base = environ.get("XDG_CACHE_HOME") or os.path.join(environ.get("HOME") or os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tcap")


def store_dir(environ: Mapping[str, str]) -> str:
    """Where native library facts are recorded: ``$XDG_CACHE_HOME/tcap/libraries``."""
    return os.path.join(cache_dir(environ), "libraries")


def cache_file(environ: Mapping[str, str]) -> str | None:
    """The directory of plan entries, or None when the cache is disabled
    (TCAP_NO_CACHE=1)."""
    if environ.get("TCAP_NO_CACHE", "") not in ("", "0"):
        return None
    return os.path.join(cache_dir(environ), DIRNAME)


def entry_path(directory: str, key: tuple[Any, ...]) -> str:
    """The file of ``key``'s entry: its repr (marshal's bytes depend on
    reference counts; repr of tuples of strings, numbers and None does not,
    and escapes every unprintable character) as a number modulo the prime
    2**127 - 1, in hex: a few microseconds of integer arithmetic, where zlib
    or hashlib would cost a library load (1 ms) on every launch."""
    number = int.from_bytes(repr(key).encode(), "little") % ((1 << 127) - 1)
    return os.path.join(directory, f"{number:032x}.plan")


def signature(path: str) -> tuple[int, int, int] | None:
    """A file's (mtime_ns, size, inode), or None when it does not exist;
    (-1, -1, errno) when that cannot be told (a directory on the way that
    cannot be searched): never equal to a stored "absent", so a site policy
    that became unreadable is a miss, and the launch says why, instead of a
    hit that skips it."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        return (-1, -1, error.errno or -1)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def lookup(directory: str | None, key: tuple[Any, ...]) -> Any:
    """The recipe stored under ``key`` if every file it depends on is unchanged."""
    if directory is None:
        return None
    try:
        data = safefile.read(entry_path(directory, key), MAX_ENTRY_BYTES, owners=safefile.mine(), private=True,
                             follow=False)
        entry = marshal.loads(data)
    except (OSError, EOFError, ValueError, TypeError):
        return None
    if not isinstance(entry, tuple) or len(entry) != 4 or entry[0] != FORMAT or entry[1] != key:
        return None
    _, _, depends, recipe = entry
    try:
        for dep_path, sig in depends:
            if not isinstance(dep_path, str) or signature(dep_path) != sig:
                return None
    except (TypeError, ValueError):  # a malformed entry is a miss
        return None
    return recipe if recipe_problem(recipe) is None else None


def store(directory: str | None, key: tuple[Any, ...], depends: list[tuple[str, Any]], recipe: Any) -> None:
    """Write ``key``'s entry, keeping the newest MAX_ENTRIES; failures are
    ignored (and a cache directory another user owns or can write is not
    written into)."""
    if directory is None:
        return
    try:
        safefile.private_dir(directory)
        safefile.write_atomic(entry_path(directory, key), marshal.dumps((FORMAT, key, tuple(depends), recipe)), 0o600)
        _prune(directory)
    except (OSError, ValueError):
        pass


def _prune(directory: str) -> None:
    """Remove the entries beyond MAX_ENTRIES, least recently written first."""
    entries = []
    with os.scandir(directory) as found:
        for item in found:
            if item.name.endswith(".plan") and item.is_file(follow_symlinks=False):
                try:
                    entries.append((item.stat(follow_symlinks=False).st_mtime_ns, item.name))
                except OSError:
                    continue
    entries.sort()
    for _, name in entries[: max(0, len(entries) - MAX_ENTRIES)]:
        try:
            os.unlink(os.path.join(directory, name))
        except OSError:
            pass


def recipe_problem(recipe: Any) -> str | None:
    """What is wrong with ``recipe`` as a launch recipe, or None: the shape
    the launch relies on (a cache entry or a frozen plan of another shape is
    never used). Cheap: it runs on every cached launch."""
    if not isinstance(recipe, dict):
        return "not a table"
    env = recipe.get("env")
    if not isinstance(env, list) or len(env) > 4096:
        return "env: expected a list of [name, value] pairs"
    for index, pair in enumerate(env):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not isinstance(pair[0], str) \
                or not pair[0] or "=" in pair[0] or "\0" in pair[0] \
                or not (pair[1] is None or isinstance(pair[1], str) and "\0" not in pair[1]):
            return f"env[{index}]: expected [name, value or null]"
    pin = recipe.get("pin")
    if pin is not None and not _cpus(pin):
        return "pin: expected a list of CPU numbers"
    place = recipe.get("place")
    if place is not None and not _place(place):
        return "place: expected count, allowed CPUs, on_full and wait_timeout"
    if recipe.get("verify", "warn") not in ("off", "warn", "strict", "enforce"):
        return "verify: expected off, warn, strict or enforce"
    for name in ("bootstrap", "rank"):
        if recipe.get(name) is not None and not isinstance(recipe[name], str):
            return f"{name}: expected a string"
    if recipe.get("cpus") is not None and safefile.number(recipe["cpus"], 1, MAX_THREADS) is None:
        return "cpus: expected a number of CPUs"
    notes = recipe.get("notes")
    if notes is not None and (not isinstance(notes, list) or not all(isinstance(n, str) for n in notes)):
        return "notes: expected a list of strings"
    return None


def _place(place: Any) -> bool:
    return isinstance(place, dict) and _cpus(place.get("allowed")) \
        and safefile.number(place.get("count"), 1, MAX_CPU + 1) is not None \
        and place.get("on_full", "share") in ("share", "wait", "error") \
        and safefile.number(place.get("wait_timeout", 0), 0, 7 * 24 * 3600, integer=False) is not None


def _cpus(value: Any) -> bool:
    return isinstance(value, list) and 0 < len(value) <= MAX_CPU + 1 and all(
        safefile.number(cpu, 0, MAX_CPU) is not None for cpu in value)

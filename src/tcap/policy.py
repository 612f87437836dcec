"""Site policy: the ceilings an administrator sets in ``$TCAP_SITE_DIR/policy.toml``.

Applied after profiles and flags (``tcap.plan.resolve``), so users cannot
go above them; ``tcap show`` says which values it capped. A policy file that
cannot be read or does not validate is an error, never ignored: a broken
ceiling must not silently become no ceiling.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tcap.bounds import MAX_CPU, MAX_THREADS
from tcap.cpuset import parse_cpu_list
from tcap.errors import TcapError
from tcap.search import site_dir

#: What a full machine does to ``cpus = "auto:N"``.
ON_FULL = ("share", "wait", "error")
#: The longest a launch may wait for free CPUs (on_full = "wait"): a week.
MAX_WAIT = 7 * 24 * 3600
KEYS = ("max_threads", "max_cpus", "allowed_cpus", "default_profile", "on_full", "wait_timeout")


@dataclass(frozen=True)
class Policy:
    path: str
    #: Ceiling of every thread pool's cap.
    max_threads: int | None = None
    #: Most CPUs one launch may run on.
    max_cpus: int | None = None
    #: The only CPUs launches may run on.
    allowed_cpus: frozenset[int] | None = None
    #: The profile used when no -p is given.
    default_profile: str | None = None
    on_full: str = "share"
    #: Seconds ``on_full = "wait"`` waits for free CPUs before failing.
    wait_timeout: float = 600.0
    #: key -> ``FILE:LINE key = value``, for the "why" of capped values.
    origins: dict[str, str] = field(default_factory=dict)

    def origin(self, key: str) -> str:
        return self.origins.get(key, f"{self.path} {key}")


def policy_path(environ: Mapping[str, str]) -> str:
    return os.path.join(site_dir(environ), "policy.toml")


def load_policy(environ: Mapping[str, str]) -> Policy | None:
    """The site policy, or None when there is no policy file.

    "No file" must be known, not guessed: when a directory on the way
    cannot be searched by this user (``umask 077; mkdir /etc/tcap``), a
    policy behind it cannot be told from none, and that is an error, as
    an unreadable policy is. The file must be root's or this user's, and
    not writable by other users (sudo's rule for sudoers)."""
    path = policy_path(environ)
    from tcap import safefile

    blocked = safefile.searchable(path)
    if blocked is not None:
        directory, reason = blocked
        raise TcapError(f"cannot read policy: cannot search {directory} ({reason}), so whether a site policy "
                        "is there cannot be known; the administrator must make it searchable (chmod o+x)",
                        path=path)
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        raise TcapError(f"cannot read policy: {error.strerror}", path=path) from None
    from tcap.profiles import locate, read_toml

    data, text = read_toml(path, what="policy", owners=safefile.mine() | {0})
    values: dict[str, Any] = {}
    origins = {}
    for key, value in data.items():
        line = locate(text, None, key)

        def fail(message: str, key: str = key, line: int | None = line) -> TcapError:
            return TcapError(f"{key}: {message}", path=path, line=line)

        if key not in KEYS:
            from tcap.profiles import did_you_mean

            raise TcapError(f"unknown key {key!r}{did_you_mean(key, KEYS)}", path=path, line=line)
        if key in ("max_threads", "max_cpus"):
            ceiling = MAX_THREADS if key == "max_threads" else MAX_CPU + 1
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= ceiling:
                raise fail(f"expected an integer from 1 to {ceiling}, not {repr(value)[:40]}")
        elif key == "allowed_cpus":
            if not isinstance(value, str):
                raise fail(f"expected a CPU list string such as \"0-15\", not {repr(value)[:40]}")
            try:
                value = parse_cpu_list(value)
            except ValueError as error:
                raise fail(str(error)) from None
        elif key == "default_profile":
            from tcap.profiles import NAME_RE

            if not isinstance(value, str) or not NAME_RE.match(value):
                raise fail(f"expected a profile name, not {repr(value)[:40]}")
        elif key == "on_full":
            if value not in ON_FULL:
                raise fail(f"expected one of {', '.join(ON_FULL)}, not {repr(value)[:40]}")
        elif key == "wait_timeout":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_WAIT:  # nan too
                raise fail(f"expected a number of seconds from 0 to {MAX_WAIT} (a week), not {repr(value)[:40]}")
            value = float(value)
        values[key] = value
        shown = data[key]
        origins[key] = f"{path}:{line} {key} = {shown!r}" if line else f"{path} {key} = {shown!r}"
    return Policy(path=path, origins=origins, **values)

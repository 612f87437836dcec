"""Which interpreter a launch starts, and the build limits of its native
libraries that tcap has recorded (by the probe, or by ``tcap doctor``).

Read only when a plan is resolved (a plan-cache miss): the store file of the
interpreter is a dependency of the cached plan, so a newly recorded limit
changes the next launch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from tcap import _inspect
from tcap.cache import store_dir
from tcap.errors import TcapError
from tcap.launch import find_command
from tcap.plan import Limit


def store_file(environ: Mapping[str, str], interpreter: str) -> str:
    return str(_inspect.store_file(store_dir(environ), interpreter))  # type: ignore[no-untyped-call]


def interpreter_of(command: Sequence[str], environ: Mapping[str, str]) -> str | None:
    """The Python interpreter ``command`` starts, if it plainly is one: a
    ``python*`` executable, or a script whose ``#!`` line names one."""
    if not command:
        return None
    found = _which(command[0], environ)
    if found is None:
        return None
    if _is_python(found):
        return found
    from tcap import safefile

    try:  # never blocks: a FIFO with an execute bit is refused, not opened
        first = safefile.head(found, 256).split(b"\n", 1)[0]
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode("utf-8", "replace").split()
    if words and os.path.basename(words[0]) == "env":
        words = [w for w in words[1:] if not w.startswith("-")]
        return _which(words[0], environ) if words and _is_python(words[0]) else None
    return words[0] if words and _is_python(words[0]) else None


def default_interpreter(environ: Mapping[str, str]) -> str:
    """For ``tcap show``/``doctor`` without a command: the ``python3`` on PATH
    (what ``tcap run -- python3 ...`` would start), else tcap's own."""
    import sys

    return _which("python3", environ) or sys.executable


def _is_python(path: str) -> bool:
    name = os.path.basename(path)
    return name.startswith("python") and not name.endswith(("-config", ".py"))


def _which(command: str, environ: Mapping[str, str]) -> str | None:
    """Where exec would find ``command`` (tcap.launch's own PATH search), or None."""
    try:
        return os.path.abspath(find_command(command, environ))
    except TcapError:
        return None


def recorded(environ: Mapping[str, str], interpreter: str) -> list[dict[str, Any]]:
    """The current facts recorded for ``interpreter`` (stale ones dropped)."""
    data = _inspect.read(store_file(environ, interpreter)) or {}  # type: ignore[no-untyped-call]
    current = _inspect.current
    return [f for f in data.get("libraries", []) if isinstance(f, dict) and current(f)]  # type: ignore[no-untyped-call]


def what(fact: Mapping[str, Any]) -> str:
    """"numpy's OpenBLAS 0.3.31" for a fact."""
    return str(_inspect.what(fact))  # type: ignore[no-untyped-call]


def limits(facts: Sequence[Mapping[str, Any]]) -> list[Limit]:
    """The build limits among ``facts``."""
    out = []
    for fact in facts:
        limit = fact.get("max_threads")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            continue
        if isinstance(fact.get("internal_api"), str):
            out.append(Limit(fact["internal_api"], limit, what(fact)))
    return out

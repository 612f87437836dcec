"""Real Unix users for the shared-server tests.

Running as root, the tests create three users (``tcapana``, ``tcapben``,
``tcapcyd``) with ``useradd`` and run tcap as each of them through
``setpriv`` (real uids, real groups, a real home). tcap runs from this
checkout's ``src`` under the system's ``/usr/bin/python3``: the test venv's
interpreter may live under ``/root``, which other users cannot enter, and
tcap's launch path needs nothing beyond the standard library. Elsewhere
(not root, no useradd, no system Python) the tests that need users skip
with the reason.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import tcap

SRC = Path(tcap.__file__).resolve().parent.parent
NAMES = ("tcapana", "tcapben", "tcapcyd")
SYSTEM_PYTHON = "/usr/bin/python3"


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: Path

    def env(self, **extra: str) -> dict[str, str]:
        """A clean environment for this user, with tcap's source importable."""
        env = {
            "HOME": str(self.home),
            "USER": self.name,
            "LOGNAME": self.name,
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "PYTHONPATH": str(SRC),
            "LANG": "C.UTF-8",
        }
        env.update(extra)
        return env

    def argv(self, *args: str) -> list[str]:
        """``tcap ARGS`` run as this user."""
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", "--",
                SYSTEM_PYTHON, "-m", "tcap", *args]

    def as_user(self, *command: str) -> list[str]:
        """Any command run as this user."""
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", "--", *command]

    def tcap(self, *args: str, env: dict[str, str] | None = None, timeout: float = 30,
             cwd: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), env=env or self.env(), capture_output=True, text=True,
                              timeout=timeout, cwd=cwd or str(self.home))


def why_not() -> str | None:
    """Why real users cannot be made here, or None."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root to create real Unix users"
    for tool in ("useradd", "setpriv"):
        if shutil.which(tool) is None:
            return f"needs {tool} to create and become real Unix users"
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"needs {SYSTEM_PYTHON}, an interpreter other users can run"
    if sys.platform != "linux":
        return "real-user tests run on Linux"
    # Other users must be able to reach tcap's source.
    for parent in [SRC, *SRC.parents]:
        if not os.stat(parent).st_mode & 0o001:
            return f"other users cannot enter {parent}, where tcap's source is"
    return None


def ensure(name: str) -> User:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", "--user-group", name], check=True,
                       capture_output=True)
        entry = pwd.getpwnam(name)
    home = Path(entry.pw_dir)
    home.mkdir(parents=True, exist_ok=True)
    os.chown(home, entry.pw_uid, entry.pw_gid)
    return User(name, entry.pw_uid, entry.pw_gid, home)


@pytest.fixture(scope="session")
def users() -> tuple[User, User, User]:
    """Three real Unix users (created once; kept for the next run)."""
    reason = why_not()
    if reason:
        pytest.skip(reason)
    made = tuple(ensure(name) for name in NAMES)
    return made  # type: ignore[return-value]


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory in /tmp every user may write, sticky like /tmp itself
    (pytest's own tmp_path is private to root), removed afterwards."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="tcap-shared-", dir="/tmp"))
    os.chmod(path, 0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)

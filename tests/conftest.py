"""Shared fixtures: an isolated environment and a runner for the installed ``tcap``.

Every test that starts ``tcap`` gets its own HOME, XDG_CONFIG_HOME,
XDG_CACHE_HOME (so the plan cache is private) and an empty TCAP_SITE_DIR,
and none of the developer's thread variables, so results depend only on
the profiles and flags the test gives.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tcap.variables import VARIABLES

if not hasattr(os, "sched_getaffinity") and os.path.exists("/proc/self/status"):
    # PyPy on Linux lacks the call; the tests' own checks read what the
    # kernel says instead (tcap itself does the same, see tcap.machine).
    def _sched_getaffinity(pid: int) -> set[int]:
        from tcap.cpuset import parse_cpu_list

        with open(f"/proc/{pid or 'self'}/status") as f:
            line = next(line for line in f if line.startswith("Cpus_allowed_list:"))
        return set(parse_cpu_list(line.split(":", 1)[1]))

    os.sched_getaffinity = _sched_getaffinity  # type: ignore[attr-defined]

#: The console script installed next to the interpreter running the tests.
TCAP = Path(sys.executable).parent / "tcap"
PYTHON = sys.executable

#: Variables that must not leak from the developer's environment.
STRIPPED = {v.name for v in VARIABLES} | {
    "TCAP_PROFILE_PATH",
    "TCAP_NO_CACHE",
    "TCAP_DEBUG",
    "TCAP_SITE_DIR",
    "OMP_PROC_BIND",
    "OMP_PLACES",
    "OMP_DYNAMIC",
    "OMP_THREAD_LIMIT",
    "GOMP_CPU_AFFINITY",
    "KMP_AFFINITY",
    "MKL_DYNAMIC",
    "SHELL",
}


class Isolated:
    """An isolated tcap environment rooted in a tmp directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.config = root / "config"
        self.cache = root / "cache"
        self.site = root / "site"
        self.work = root / "work"
        for directory in (self.home, self.config, self.cache, self.site, self.work):
            directory.mkdir(parents=True, exist_ok=True)
        self.env = {
            key: value
            for key, value in os.environ.items()
            # TCAP_PROCESS_FACTS stays: the suite runs again with the psutil backend.
            if key not in STRIPPED and (not key.startswith(("SLURM_", "TCAP_")) or key == "TCAP_PROCESS_FACTS")
        }
        self.env.update(
            HOME=str(self.home),
            XDG_CONFIG_HOME=str(self.config),
            XDG_CACHE_HOME=str(self.cache),
            TCAP_SITE_DIR=str(self.site),
        )

    @property
    def user_profiles(self) -> Path:
        """``$XDG_CONFIG_HOME/tcap/profiles`` (created on first use)."""
        path = self.config / "tcap" / "profiles"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def cache_dir(self) -> Path:
        return self.cache / "tcap"

    def write_profile(self, name: str, text: str, directory: Path | None = None) -> Path:
        """Write ``name.toml`` into the user profile directory (or ``directory``)."""
        path = (directory or self.user_profiles) / f"{name}.toml"
        path.write_text(text)
        return path

    def run(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        extra_env: dict[str, str] | None = None,
        timeout: float = 120,
        text: bool = True,
        input: str | bytes | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
        """Run the installed ``tcap`` with ``args`` and capture its output."""
        full_env = dict(self.env if env is None else env)
        full_env.update(extra_env or {})
        return subprocess.run(
            [str(TCAP), *args],
            env=full_env,
            cwd=str(cwd or self.work),
            capture_output=True,
            text=text,
            input=input,
            timeout=timeout,
            check=False,
        )

    def popen(self, *args: str, extra_env: dict[str, str] | None = None, **kwargs: object) -> subprocess.Popen:  # type: ignore[type-arg]
        full_env = dict(self.env)
        full_env.update(extra_env or {})
        return subprocess.Popen([str(TCAP), *args], env=full_env, cwd=str(self.work), **kwargs)  # type: ignore[call-overload]

    def show_json(self, *args: str, extra_env: dict[str, str] | None = None) -> dict:  # type: ignore[type-arg]
        """``tcap show --json ARGS`` parsed; fails the test if tcap fails."""
        result = self.run("show", "--json", *args, extra_env=extra_env)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    def planned_env(self, *args: str, extra_env: dict[str, str] | None = None) -> dict[str, str | None]:
        """The variables ``tcap show --json ARGS`` says it will set (None: unset)."""
        return {name: value for name, value, _why in self.show_json(*args, extra_env=extra_env)["env"]}

    def takes(self, *args: str, extra_env: dict[str, str] | None = None) -> dict[str, str | None]:
        """Each table variable as the libraries will run with it: the value
        tcap sets, or what the library picks itself where tcap leaves it alone."""
        data = self.show_json(*args, extra_env=extra_env)
        return {name: value for name, value, _why in [*data["left_alone"], *data["env"]]}

    @staticmethod
    def error_line(result: subprocess.CompletedProcess, code: int) -> str:  # type: ignore[type-arg]
        """tcap failed with ``code`` and said so on exactly one stderr line; return it."""
        stderr = result.stderr if isinstance(result.stderr, str) else result.stderr.decode()
        assert result.returncode == code, (result.returncode, result.stdout, stderr)
        assert stderr.startswith("tcap: error: "), stderr
        assert stderr.endswith("\n") and stderr.count("\n") == 1, stderr
        assert "Traceback" not in stderr
        assert "internal error" not in stderr
        return stderr.rstrip("\n")


def in_one_worker(method: str, body: str) -> str:
    """A program that runs ``body`` (statements) in a one-worker
    multiprocessing Pool of start ``method``, keeps the worker alive through
    the probe's first checks, and prints the worker's pid."""
    indented = "".join(f"    {line}\n" for line in body.strip().splitlines())
    return f"""
import multiprocessing, os, time

def work(_):
{indented}    time.sleep(0.9)
    return os.getpid()

if __name__ == "__main__":
    with multiprocessing.get_context("{method}").Pool(1) as pool:
        print(pool.map(work, [0])[0])
"""


@pytest.fixture
def iso(tmp_path: Path) -> Isolated:
    """A fresh isolated tcap environment for one test."""
    return Isolated(tmp_path)


@pytest.fixture(scope="session")
def tcap_exe() -> Path:
    assert TCAP.exists(), f"the tcap console script is not installed at {TCAP}"
    return TCAP


# Real Unix users and a shared sticky directory (tests/users.py), for every test module.
from users import shared_tmp, users  # noqa: E402, F401

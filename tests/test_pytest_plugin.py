"""The pytest plugin (tcap.pytest_plugin), end to end: real pytest (and
pytest-xdist) subprocesses over small test files that import numpy and
scikit-learn and write what each process sees (its pools as threadpoolctl
reads them, its thread variables, the modules loaded) to JSON files.

The machine's usable CPUs decide the expected sizes (cpus / workers under
xdist); nothing here assumes 2."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import textwrap
from typing import Any

import pytest

from conftest import PYTHON, Isolated

CPUS = len(os.sched_getaffinity(0))
#: Tests that raise a pool to 2 threads and see it there.
two_cpus = pytest.mark.skipif(CPUS < 2, reason="needs 2 usable CPUs")


def _entry_point() -> importlib.metadata.EntryPoint | None:
    return next((ep for ep in importlib.metadata.entry_points(group="pytest11") if ep.name == "tcap"), None)


#: The plugin loaded as an installed tcap loads it (its entry point), or by
#: -p while the entry point is not installed; and the same run without it.
WITH = [] if _entry_point() is not None else ["-p", "tcap.pytest_plugin"]
WITHOUT = ["-p", "no:tcap"] if _entry_point() is not None else []

#: What every test file records, at the call: `record(name)` writes
#: OUT/<worker>-<name>.json (worker: gw0, gw1, ... or main).
RECORDER = '''
import json, os, sys

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "LOKY_MAX_CPU_COUNT")


def record(name):
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    data = {
        "worker": worker,
        "workers": os.environ.get("PYTEST_XDIST_WORKER_COUNT"),
        "env": {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"},
        "modules": sorted(m for m in sys.modules if m.partition(".")[0] in ("tcap", "threadpoolctl", "numpy",
                                                                            "sklearn", "_tcap_probe")),
        "affinity": sorted(os.sched_getaffinity(0)),
    }
    if "threadpoolctl" in sys.modules or "numpy" in sys.modules:
        from threadpoolctl import threadpool_info

        data["pools"] = {p["internal_api"]: p["num_threads"] for p in threadpool_info()}
    with open(os.path.join(os.environ["PLUGIN_OUT"], f"{worker}-{name}.json"), "w") as f:
        json.dump(data, f)
'''

#: numpy's OpenBLAS and scikit-learn's OpenMP runtime, loaded by a conftest
#: (before the plugin's configure) and used by the tests.
NUMERIC_CONFTEST = "import numpy\nimport sklearn.cluster\n"
POOLS_TESTS = '''
import numpy as np
import pytest
from sklearn.cluster import KMeans

from recorder import record


@pytest.mark.parametrize("i", range(8))
def test_pools(i):
    a = np.random.default_rng(i).random((60, 60))
    (a @ a).sum()
    KMeans(2, n_init=1, random_state=i).fit(a)
    record(f"pools{i}")
'''


class Session:
    """A directory of test files and the pytest runs over it."""

    def __init__(self, iso: Isolated, files: dict[str, str], ini: str = "") -> None:
        self.iso = iso
        self.dir = iso.work / "suite"
        self.out = iso.root / "out"
        self.dir.mkdir()
        self.out.mkdir()
        (self.dir / "recorder.py").write_text(RECORDER)
        (self.dir / "pytest.ini").write_text(
            "[pytest]\naddopts = -p no:cacheprovider -p no:hypothesispytest\n" + textwrap.dedent(ini))
        for name, text in files.items():
            (self.dir / name).write_text(textwrap.dedent(text))
        self.env = {k: v for k, v in iso.env.items() if not k.startswith("PYTEST_") and k != "PYTHONPATH"}
        self.env.update(PLUGIN_OUT=str(self.out))

    def run(self, *args: str, plugin: bool = True) -> subprocess.CompletedProcess[str]:
        for old in self.out.iterdir():
            old.unlink()
        argv = [PYTHON, "-m", "pytest", *(WITH if plugin else WITHOUT), *args]
        return subprocess.run(argv, cwd=self.dir, env=self.env, capture_output=True, text=True, timeout=300,
                              check=False)

    def records(self) -> dict[str, dict[str, Any]]:
        """<worker>-<name> -> what that test recorded."""
        return {path.stem: json.loads(path.read_text()) for path in sorted(self.out.glob("*.json"))}

    def by_worker(self) -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = {}
        for data in self.records().values():
            found.setdefault(data["worker"], []).append(data)
        return found


def passed(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def tcap_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith("tcap: ")]


def pools_at(records: list[dict[str, Any]], expected: int) -> None:
    """Every record saw its OpenBLAS and OpenMP pools at ``expected``."""
    assert records
    for data in records:
        pools = data["pools"]
        assert {"openblas", "openmp"} <= set(pools), pools
        assert pools["openblas"] == expected and pools["openmp"] == expected, (data["worker"], pools)


def test_the_entry_point_names_the_plugin() -> None:
    """pytest loads the plugin wherever tcap is installed (pyproject's
    [project.entry-points.pytest11] tcap = "tcap.pytest_plugin")."""
    entry = _entry_point()
    assert entry is not None, "no pytest11 entry point named tcap: pyproject.toml's entry point is not installed"
    assert entry.value == "tcap.pytest_plugin"


INERT_TESTS = '''
import os

from recorder import record


def test_before_numpy():
    record("bare")


def test_numpy():
    import numpy, sklearn.cluster
    record("numeric")
'''


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["plain", "xdist"])
def test_inert_without_tcap(iso: Isolated, xdist: list[str]) -> None:
    """Loaded but not asked: the same environment and pools as a run
    without the plugin, no tcap module beyond the plugin itself (no
    tcap.api, no threadpoolctl, no probe), no line in the output."""
    session = Session(iso, {"test_inert.py": INERT_TESTS})
    with_plugin = passed(session.run(*xdist, "--strict-markers"))
    seen = _by_test(session)
    without = passed(session.run(*xdist, plugin=False))
    baseline = _by_test(session)
    assert set(seen) == set(baseline) == {"bare", "numeric"}
    for name, data in seen.items():
        assert data["env"] == baseline[name]["env"], name
        assert data.get("pools") == baseline[name].get("pools"), name
        assert data["affinity"] == baseline[name]["affinity"]
    bare = seen["bare"]
    assert [m for m in bare["modules"] if m.startswith(("tcap", "_tcap"))] == ["tcap", "tcap.pytest_plugin"]
    assert "threadpoolctl" not in bare["modules"] and "numpy" not in bare["modules"]
    numeric = seen["numeric"]
    assert numeric["pools"]["openblas"] == CPUS, "the unconstrained default: a pool per CPU"
    assert not any(key.startswith("TCAP_") for key in set(numeric["env"]) - set(session.env))
    assert tcap_lines(with_plugin) == [] and with_plugin.stderr == without.stderr == ""


def _by_test(session: Session) -> dict[str, dict[str, Any]]:
    """Test name -> its record, the worker's name left out of its variables
    (which worker runs which test is xdist's choice)."""
    found = {}
    for name, data in session.records().items():
        data["env"].pop("PYTEST_XDIST_WORKER", None)
        data["env"].pop("PYTEST_XDIST_TESTRUNUID", None)
        found[name.partition("-")[2]] = data
    return found


def test_serial_in_a_plain_run(iso: Isolated) -> None:
    """--tcap serial without xdist: the pools the conftest loaded before
    the plugin's configure are set to 1, and so are the variables."""
    session = Session(iso, {"conftest.py": NUMERIC_CONFTEST, "test_pools.py": POOLS_TESTS})
    result = passed(session.run("--tcap", "serial"))
    records = session.by_worker()
    assert list(records) == ["main"] and len(records["main"]) == 8
    pools_at(records["main"], 1)
    env = records["main"][0]["env"]
    assert env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "1"
    assert env["TCAP_VERIFY"] == "warn"
    header, *more = tcap_lines(result)
    assert header == (
        "tcap: profile serial, this process: threads 1, blas 1, openmp 1 "
        f"({CPUS} CPUs); {_variables(iso, '-p', 'serial')}; verify warn")
    assert all(line.startswith(("tcap: cannot: ", "tcap: note: ")) for line in more), more


def _variables(iso: Isolated, *flags: str) -> str:
    """'N thread variable(s) set', N as `tcap show` plans for these flags."""
    count = len(iso.planned_env(*flags))
    return f"{count} thread variable{'' if count == 1 else 's'} set"


@pytest.mark.parametrize("workers", [1, 2])
def test_each_xdist_worker_gets_its_share(iso: Isolated, workers: int) -> None:
    """-n N --tcap default: every worker's pools at cpus / N (at least 1),
    as `tcap show --workers N` plans; the header names the share once."""
    session = Session(iso, {"conftest.py": NUMERIC_CONFTEST, "test_pools.py": POOLS_TESTS})
    result = passed(session.run("-n", str(workers), "--tcap", "default"))
    share = max(1, CPUS // workers)
    assert iso.show_json("--workers", str(workers))["caps"]["openmp"] == share
    records = session.by_worker()
    assert sorted(records) == [f"gw{i}" for i in range(workers)]
    for worker in records.values():
        pools_at(worker, share)
        assert {data["workers"] for data in worker} == {str(workers)}
        assert worker[0]["env"]["LOKY_MAX_CPU_COUNT"] == str(workers)
    header = [line for line in tcap_lines(result) if line.startswith("tcap: profile")]
    plural = "" if workers == 1 else "s"
    assert header == [
        f"tcap: profile default, {workers} xdist worker{plural}, each: threads {share}, blas {share}, openmp {share} "
        f"({CPUS} CPUs); {_variables(iso, '--workers', str(workers))}; verify warn"]


def test_xdist_auto_as_xdist_resolved_it(iso: Isolated) -> None:
    """-n auto: the share is cpus / the workers xdist started."""
    session = Session(iso, {"conftest.py": NUMERIC_CONFTEST, "test_pools.py": POOLS_TESTS})
    passed(session.run("-n", "auto", "--tcap", "default"))
    records = session.by_worker()
    counts = {data["workers"] for worker in records.values() for data in worker}
    assert len(counts) == 1
    workers = int(counts.pop())
    assert 1 <= len(records) <= workers
    for worker in records.values():
        pools_at(worker, max(1, CPUS // workers))


@two_cpus
def test_explicit_caps_are_per_worker(iso: Isolated) -> None:
    """A profile's explicit `threads = 2` is each process's cap: -n 2 does
    not divide it (only the default cap is cpus / workers), as `tcap show
    -p FILE --workers 2` plans it. (Sharing off: with it, the probes of two
    busy workers on 2 CPUs would share them out at 1 each.)"""
    profile = iso.write_profile("two", 'description = "two threads a pool"\nthreads = 2\nshare = "off"\n', iso.root)
    session = Session(iso, {"conftest.py": NUMERIC_CONFTEST, "test_pools.py": POOLS_TESTS})
    planned = iso.show_json("-p", str(profile), "--workers", "2")["caps"]
    assert planned["blas"] == planned["openmp"] == 2
    for workers in ("1", "2"):
        passed(session.run("-n", workers, "--tcap", str(profile)))
        records = session.by_worker()
        assert len(records) == int(workers)
        for worker in records.values():
            pools_at(worker, 2)


MARKED_TESTS = '''
import os

import numpy as np
import pytest
from sklearn.cluster import KMeans

from recorder import record


def work():
    a = np.random.default_rng(0).random((60, 60))
    (a @ a).sum()
    KMeans(2, n_init=1, random_state=0).fit(a)


def test_1_before():
    work()
    record("before")


@pytest.mark.tcap("serial")
def test_2_profile():
    work()
    record("profile")


@pytest.mark.tcap(threads=2)
def test_3_flags():
    work()
    record("flags")


@pytest.fixture
def fitted():
    work()
    record("fixture")


@pytest.mark.tcap("serial")
class TestClass:
    def test_4_in_class(self, fitted):
        record("class")


def test_5_after():
    work()
    record("after")
'''


@two_cpus
@pytest.mark.parametrize("session_flags", [[], ["--tcap", "serial"]], ids=["alone", "with-tcap"])
def test_the_marker(iso: Isolated, session_flags: list[str]) -> None:
    """@pytest.mark.tcap runs the test (its fixtures too) inside
    tcap.limits: serial at 1, threads=2 at 2, a class's marker on its
    tests; the pools (and variables) are as before after it, with or
    without --tcap. --strict-markers accepts the marker."""
    session = Session(iso, {"test_marked.py": MARKED_TESTS})
    passed(session.run("-p", "no:randomly", "--strict-markers", *session_flags))
    seen = _by_test(session)
    assert set(seen) == {"before", "profile", "flags", "fixture", "class", "after"}
    outside = 1 if session_flags else CPUS
    pools_at([seen["before"], seen["after"]], outside)
    pools_at([seen["profile"], seen["fixture"], seen["class"]], 1)
    pools_at([seen["flags"]], 2)
    assert seen["profile"]["env"]["OMP_NUM_THREADS"] == "1"
    assert seen["after"]["env"].get("OMP_NUM_THREADS") == seen["before"]["env"].get("OMP_NUM_THREADS")
    if not session_flags:
        assert "OMP_NUM_THREADS" not in seen["after"]["env"]


@two_cpus
def test_the_marker_in_xdist_workers(iso: Isolated) -> None:
    """-n 2 --tcap serial with a threads=2 test: 2 inside, 1 after, in
    whichever worker ran it."""
    session = Session(iso, {"test_marked.py": MARKED_TESTS})
    passed(session.run("-n", "2", "--dist", "loadfile", "--tcap", "serial"))
    seen = _by_test(session)
    assert len({data["worker"] for data in seen.values()}) == 1  # loadfile: one worker ran the file, in order
    pools_at([seen["flags"]], 2)
    pools_at([seen["before"], seen["profile"], seen["after"]], 1)


def test_a_bad_marker_fails_that_test(iso: Isolated) -> None:
    session = Session(iso, {"test_bad_marker.py": '''
        import pytest

        @pytest.mark.tcap("no-such-profile")
        def test_marked():
            pass

        def test_other():
            pass
    '''})
    result = session.run("-rE")
    assert result.returncode == 1, result.stdout
    assert "1 passed, 1 error" in result.stdout
    assert "@pytest.mark.tcap: no profile named 'no-such-profile'" in result.stdout
    assert "Traceback" not in result.stdout


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["plain", "xdist"])
def test_a_bad_profile_is_a_usage_error(iso: Isolated, xdist: list[str]) -> None:
    """Exit 4 and one line naming the profile, before any test runs (no
    worker started)."""
    session = Session(iso, {"test_any.py": "from recorder import record\n\ndef test_x():\n    record('x')\n"})
    result = session.run(*xdist, "--tcap", "no-such-profile")
    assert result.returncode == 4, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ERROR: --tcap no-such-profile: no profile named 'no-such-profile'")
    assert session.records() == {}
    assert "created:" not in result.stdout and "Traceback" not in result.stderr


def test_a_broken_profile_file_and_a_bad_verify(iso: Isolated) -> None:
    broken = iso.root / "broken.toml"
    broken.write_text("threads = 'lots'\n")
    session = Session(iso, {"test_any.py": "def test_x():\n    pass\n"})
    result = session.run("--tcap", str(broken))
    assert result.returncode == 4
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"ERROR: --tcap {broken}: ") and "broken.toml" in lines[0][20:]
    result = session.run("--tcap", "serial", "--tcap-verify", "loud")
    assert result.returncode == 4
    assert result.stderr.strip() == "ERROR: --tcap-verify must be one of off, warn, strict, enforce, not 'loud'"


def test_the_ini_key_and_turning_it_off(iso: Isolated) -> None:
    """`tcap = serial` in pytest.ini applies it; `-o tcap=` turns it off for a run."""
    session = Session(iso, {"conftest.py": NUMERIC_CONFTEST, "test_pools.py": POOLS_TESTS},
                      ini="tcap = serial\ntcap_verify = off\n")
    result = passed(session.run())
    pools_at(session.by_worker()["main"], 1)
    assert tcap_lines(result)[0].endswith("verify off")
    assert "TCAP_VERIFY" not in session.by_worker()["main"][0]["env"]
    result = passed(session.run("-o", "tcap="))
    pools_at(session.by_worker()["main"], CPUS)
    assert tcap_lines(result) == []


@two_cpus
def test_the_probe_warnings_are_summarised(iso: Isolated) -> None:
    """A test that raises a pool over the session's cap: the probe's warning
    (captured with that test's stderr, in a worker) is listed by node id in
    the session's tcap section."""
    session = Session(iso, {"conftest.py": NUMERIC_CONFTEST, "test_escape.py": '''
        import sys

        import numpy as np
        from threadpoolctl import threadpool_limits


        def test_escape():
            with threadpool_limits(2, user_api="blas"):
                (np.ones((50, 50)) @ np.ones((50, 50))).sum()
                assert sys.modules["_tcap_probe"].check("test")


        def test_quiet():
            assert not sys.modules["_tcap_probe"].check("test")
    '''})
    result = passed(session.run("-n", "2", "--tcap", "serial"))
    section = result.stdout[result.stdout.index("- tcap -"):]
    assert "the probe warned 1 time in 1 test (captured stderr):" in section
    assert "test_escape.py::test_escape: tcap: warning: " in section
    assert "openblas (blas) has 2 threads, cap 1 [profile serial]" in section
    assert "test_quiet" not in section

"""Pools beyond threadpoolctl's view, with the real libraries: numexpr,
Numba, Polars, and Blosc (numcodecs, python-blosc). A program that raises
one over its cap is warned about (and enforced where the library allows),
in the main process and in spawn and fork workers; the same program within
its caps is silent. The probe reads each pool through the library's own API,
and only when the program imported the library."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from conftest import PYTHON, Isolated, in_one_worker

#: (library to import, what the program does to break a cap of 1, the probe's pool name)
RAISES = {
    # The program changes the library's variables before importing it.
    "numexpr": ("import os; os.environ['NUMEXPR_NUM_THREADS'] = os.environ['NUMEXPR_MAX_THREADS'] = '2'\n"
                "import numexpr", "numexpr"),
    "numba": ("import os; os.environ['NUMBA_NUM_THREADS'] = '2'; import numba", "numba"),
    "polars": ("import os; os.environ['POLARS_MAX_THREADS'] = '2'; import polars", "polars"),
    "numcodecs": ("import os; os.environ['BLOSC_NTHREADS'] = '2'; import numcodecs", r"blosc \(numcodecs\)"),
    "blosc": ("import os; os.environ['BLOSC_NTHREADS'] = '2'; import blosc", "blosc"),
}
#: The same libraries used within a cap of 1 thread: must stay silent.
CLEAN = {
    "numexpr": "import numexpr, numpy; numexpr.evaluate('a + 1', local_dict={'a': numpy.ones(10)})",
    "numba": "import numba\n@numba.njit\ndef f(x): return x + 1\nf(1)",
    "polars": "import polars; polars.DataFrame({'a': [1, 2]}).sum()",
    "numcodecs": "import numcodecs, numpy; numcodecs.Blosc().encode(numpy.ones(1000))",
    "blosc": "import blosc; blosc.compress(b'x' * 1000)",
}
STAY = "\nimport time; time.sleep(0.9)\n"


def warning(pool: str, threads: int = 2, cap: int = 1) -> re.Pattern[str]:
    return re.compile(rf"^tcap: warning: pid (\d+) \(.*\): {pool} \(\w+\) has {threads} threads, cap {cap}", re.M)


def run(iso: Isolated, code: str, *flags: str, name: str = "prog.py") -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    (iso.work / name).write_text(code)
    return iso.run("run", "--threads", "1", *flags, "--", PYTHON, name, timeout=180)


@pytest.mark.parametrize("library", sorted(RAISES))
def test_a_pool_raised_over_its_cap_is_warned_about(iso: Isolated, library: str):
    pytest.importorskip(library)
    code, pool = RAISES[library]
    result = run(iso, code + STAY)
    assert result.returncode == 0, result.stderr
    assert len(warning(pool).findall(result.stderr)) == 1, result.stderr


@pytest.mark.parametrize("library", sorted(CLEAN))
def test_the_library_within_its_cap_is_silent(iso: Isolated, library: str):
    pytest.importorskip(library)
    result = run(iso, CLEAN[library] + STAY)
    assert result.returncode == 0, result.stderr
    assert "tcap:" not in result.stderr, result.stderr


def test_numexpr_is_brought_back_under_enforce(iso: Isolated):
    pytest.importorskip("numexpr")
    code = RAISES["numexpr"][0] + "\nimport time; time.sleep(0.9); print(numexpr.get_num_threads())"
    result = run(iso, code, "--verify", "enforce")
    assert result.returncode == 0, result.stderr
    assert re.search(r"tcap: enforced: pid \d+ .*numexpr \(numexpr\) brought back from 2 to 1 threads", result.stderr)
    assert result.stdout.strip() == "1"


@pytest.mark.parametrize("library", ["numba", "polars"])
def test_enforce_says_when_a_pool_cannot_shrink(iso: Isolated, library: str):
    pytest.importorskip(library)
    code, pool = RAISES[library]
    result = run(iso, code + STAY, "--verify", "enforce")
    assert result.returncode == 0, result.stderr
    assert len(warning(pool).findall(result.stderr)) == 1
    assert f"enforce cannot shrink the {library} pool" in result.stderr


@pytest.mark.parametrize("method", ["spawn", "fork"])
@pytest.mark.parametrize("library", sorted(RAISES))
def test_a_pool_raised_in_a_worker_is_a_violation_of_that_worker(iso: Isolated, library: str, method: str):
    """Warned with the worker's pid; strict fails the run; the report names the worker."""
    pytest.importorskip(library)
    code, pool = RAISES[library]
    (iso.work / "prog.py").write_text(in_one_worker(method, code))
    report = iso.work / "report.json"
    result = iso.run("run", "--threads", "1", "--verify", "strict", "--report-json", str(report), "--",
                     PYTHON, "prog.py", timeout=180)
    assert result.returncode == 86, result.stderr
    worker = int(result.stdout.strip())
    assert [int(pid) for pid in warning(pool).findall(result.stderr)] == [worker], result.stderr
    data = json.loads(report.read_text())
    assert [v["pid"] for v in data["violations"]] == [worker], data["violations"]
    assert re.fullmatch(pool, data["violations"][0]["name"])


@pytest.mark.parametrize("library", sorted(RAISES))
def test_report_and_strict_show_the_pool(iso: Isolated, library: str):
    pytest.importorskip(library)
    code, pool = RAISES[library]
    (iso.work / "prog.py").write_text(code + STAY)
    report = iso.work / "report.json"
    result = iso.run("run", "--threads", "1", "--verify", "strict", "--report-json", str(report), "--",
                     PYTHON, "prog.py", timeout=180)
    assert result.returncode == 86, result.stderr
    data = json.loads(report.read_text())
    pools = [pool for process in data["processes"] for pool in process["pools"]]
    assert any(re.fullmatch(pool, p["name"]) and p["threads"] == 2 and p["cap"] == 1 for p in pools), pools
    assert [v["name"] for v in data["violations"]] and all(re.fullmatch(pool, v["name"]) for v in data["violations"])


def test_a_library_the_program_did_not_import_is_never_imported(iso: Isolated):
    pytest.importorskip("numexpr")
    code = "import numpy, sys, time; time.sleep(0.9); print(sorted(m for m in ('numexpr', 'numba', 'polars', " \
           "'numcodecs', 'blosc') if m in sys.modules))"
    result = run(iso, code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"

"""The escapes of issue 19, end to end: each must be caught by observation
(or by the registry, where a row reads the pool) under ``tcap run --threads 1
--verify strict`` (exit 86, the culprit named in ``--report`` and
``--report-json``), in the main process and in spawn and fork workers; and a
clean program using each library within its caps must be silent under warn
and strict.

Real libraries, real threads: the programs are tests/programs/observed/
(workloads.py holds one function per library).  Each program measures its own
busy threads from /proc/self/task/*/schedstat and prints it, so every escape
test first checks the escape really ran two busy threads for seconds in that
very run: a test that cannot fail proves nothing.  The unknown C pool is
tests/programs/observed/spin.c, built here with the system compiler.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import PYTHON, Isolated
from tcap.errors import EXIT_VIOLATION

pytestmark = pytest.mark.skipif(
    not os.path.exists("/proc/self/task") or not hasattr(os, "sched_getaffinity"), reason="needs Linux /proc"
)

PROGRAMS = Path(__file__).parent / "programs" / "observed"
ESCAPE = str(PROGRAMS / "escape.py")
CLEAN = str(PROGRAMS / "clean.py")

#: Seconds each escape computes with its 2 threads, and each clean program works.
ESCAPE_SECONDS = "2.5"
CLEAN_SECONDS = "1.2"
TIMEOUT = 150

#: What may name each escape in a violation: observation ("busy threads") or
#: the registry row that reads the pool where one exists.
BY_OBSERVATION = re.compile(r"^busy threads$")
NAMES = {
    "lightgbm": re.compile(r"^busy threads$|openmp|gomp", re.I),  # its team size, or the
    "xgboost": re.compile(r"^busy threads$|openmp|gomp", re.I),   # main thread's OpenMP read
    "onnxruntime": BY_OBSERVATION,
    "cpool": BY_OBSERVATION,
    "tokenizers": re.compile(r"^busy threads$|rayon|tokenizers", re.I),
    "pyarrow": re.compile(r"^busy threads$|arrow", re.I),
    "opencv": re.compile(r"^busy threads$|opencv|cv2", re.I),
    "openmp_main": re.compile(r"^busy threads$|openmp|gomp", re.I),
    "faiss": re.compile(r"^busy threads$|openmp|gomp|faiss", re.I),
    "jax": re.compile(r"^busy threads$|jax|xla", re.I),
}

#: Words of which one must appear in what the report says of the culprit:
#: the OS thread names of the busy threads, or the libraries loaded.
CULPRIT = {
    "lightgbm": ("lightgbm", "gomp"),
    "xgboost": ("xgboost", "gomp"),
    "onnxruntime": ("onnxruntime",),
    "cpool": ("tcap-spin",),
    "tokenizers": ("tokenizers", "rayon"),
    "pyarrow": ("arrow",),
    "opencv": ("opencv", "cv2"),
    "openmp_main": ("gomp", "openmp"),
    "faiss": ("faiss", "gomp", "openmp"),
    "jax": ("jax", "xla"),
}


@pytest.fixture(scope="module")
def spin_library(tmp_path_factory: pytest.TempPathFactory) -> str:
    """spin.c built into a shared library in a tmp dir."""
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        pytest.skip("no C compiler (cc, gcc, clang) to build the unknown pool from spin.c")
    out = tmp_path_factory.mktemp("spin") / "libspin.so"
    built = subprocess.run(
        [compiler, "-O1", "-shared", "-fPIC", "-o", str(out), str(PROGRAMS / "spin.c"), "-lpthread"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert built.returncode == 0, built.stderr
    return str(out)


@pytest.fixture
def sv(iso: Isolated, spin_library: str) -> Isolated:
    """``iso`` with a private TMPDIR and the programs' settings."""
    tmp = iso.root / "tmp"
    tmp.mkdir()
    iso.env["TMPDIR"] = str(tmp)
    iso.env["OBSERVED_SPIN_LIB"] = spin_library
    return iso


def measured(result: subprocess.CompletedProcess) -> dict[str, Any]:  # type: ignore[type-arg]
    """The program's JSON line: its own measurement of its busy threads."""
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, (result.returncode, result.stdout, result.stderr)
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def assert_escaped(seen: dict[str, Any], what: str) -> None:
    """The program ran 2 busy threads at once for seconds: a real escape."""
    assert seen["busy_peak"] >= 2 and seen["busy_seconds"] >= 1.5, f"{what} did not escape in this run: {seen}"


def tcap_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("tcap: ")]


def strict_run(sv: Isolated, *command: str, threads: str = "1", extra: tuple[str, ...] = ()) -> tuple[
        subprocess.CompletedProcess, dict[str, Any]]:  # type: ignore[type-arg]
    """``tcap run --threads N --verify strict --report --report-json`` of command."""
    out = sv.root / "report.json"
    result = sv.run(
        "run", "--threads", threads, "--verify", "strict", *extra, "--report", "--report-json", str(out), "--",
        PYTHON, *command, timeout=TIMEOUT,
    )
    assert out.exists(), (result.returncode, result.stderr)
    return result, json.loads(out.read_text())


def violations_of(report: dict[str, Any], pid: int) -> list[dict[str, Any]]:
    return [v for p in report["processes"] if p["pid"] == pid for v in p["violations"]]


def assert_caught(result: subprocess.CompletedProcess, report: dict[str, Any], kind: str, pid: int,  # type: ignore[type-arg]
                  others: tuple[int, ...] = ()) -> None:
    """Strict exited 86 for a violation of ``pid`` named as ``kind``'s escape,
    the culprit named, and nothing pinned on ``others``."""
    context = (result.returncode, result.stdout, result.stderr)
    assert result.returncode == EXIT_VIOLATION == 86, context
    found = violations_of(report, pid)
    assert found, (f"no violation for pid {pid}", report["violations"], context)
    names = [str(v["name"]) for v in found]
    assert any(NAMES[kind].search(name) for name in names), (names, context)
    assert any(v["pid"] == pid for v in report["violations"]), report["violations"]
    verdict = [line for line in tcap_lines(result.stderr) if line.startswith("tcap: verdict: ")]
    assert len(verdict) == 1 and f"in pid {pid}" in verdict[0] and "exit 86" in verdict[0], context
    # The report names the culprit: the pool's row, or the busy threads' OS
    # names and the libraries loaded (the probe's own warning line aside).
    said = (json.dumps(found) + "\n" + verdict[0]).lower()
    assert any(word in said for word in CULPRIT[kind]), (f"{kind}: no {CULPRIT[kind]} in", found, context)
    row = [p for p in report["processes"] if p["pid"] == pid][0]
    assert row["busy_threads"], context  # the supervisor's own count (the BUSY column)
    if os.environ.get("TCAP_PROCESS_FACTS") != "psutil":
        # psutil reads CPU time only, not time waiting to run: on a loaded
        # machine 2 threads sharing a CPU are not both busy (a documented blind spot).
        assert row["busy_threads"]["peak"] >= 2, (row["busy_threads"], context)
    assert re.search(rf"^tcap: {pid} .* VIOLATION$", result.stderr, re.M), context  # the --report table's row
    for other in others:
        assert violations_of(report, other) == [], (other, report["processes"])


def assert_held(result: subprocess.CompletedProcess, report: dict[str, Any], what: str) -> None:  # type: ignore[type-arg]
    """A supervised run (with --report) found nothing: 0, no warning, no violation."""
    context = (what, result.returncode, result.stderr)
    assert result.returncode == 0 and report["violations"] == [] and not report["budget"]["violated"], context
    assert not [line for line in tcap_lines(result.stderr) if line.startswith("tcap: warning")], context


def assert_silent(result: subprocess.CompletedProcess, what: str) -> None:  # type: ignore[type-arg]
    context = (what, result.returncode, result.stdout, result.stderr)
    assert result.returncode == 0, context
    assert not [line for line in tcap_lines(result.stderr) if line.startswith(("tcap: warning", "tcap: error",
                                                                                "tcap: verdict"))], context


# The escapes, in the main process -------------------------------------------------------------------------------

MAIN_ESCAPES = ["lightgbm", "onnxruntime", "tokenizers", "pyarrow", "opencv", "openmp_main", "cpool"]


@pytest.mark.parametrize("kind", MAIN_ESCAPES)
def test_escape_in_the_main_process_is_caught(sv: Isolated, kind: str) -> None:
    result, report = strict_run(sv, ESCAPE, kind, "main", ESCAPE_SECONDS)
    seen = measured(result)
    assert_escaped(seen, kind)
    assert_caught(result, report, kind, seen["pid"])


def test_openmp_raised_on_the_main_thread_is_caught_during_the_run(sv: Isolated) -> None:
    """The program leaves through os._exit(0): no exit handler runs, so only
    what the probe saw while KMeans computed can fail the run."""
    result, report = strict_run(sv, ESCAPE, "openmp_main", "main", ESCAPE_SECONDS, "os_exit")
    seen = measured(result)
    assert_escaped(seen, "openmp_main")
    assert_caught(result, report, "openmp_main", seen["pid"])


def test_faiss_with_its_openmp_raised_is_caught(sv: Isolated) -> None:
    pytest.importorskip("faiss", reason="faiss-cpu is not installed")
    result, report = strict_run(sv, ESCAPE, "faiss", "main", ESCAPE_SECONDS)
    seen = measured(result)
    assert_escaped(seen, "faiss")
    assert_caught(result, report, "faiss", seen["pid"])


#: Libraries whose team size tcap's variables may or may not hold, by version
#: and machine: what each runs under --threads 1 is measured in the run.
MAYBE_ESCAPES = {
    # Recent XGBoost holds nthread to the calling thread's OpenMP setting
    # (min(nthread, omp_get_max_threads()) in OmpGetNumThreads), so nthread=2
    # under OMP_NUM_THREADS=1 computes on 1 thread (measured with 3.2.0);
    # older versions took nthread as it was.
    "xgboost-nthread-2": (ESCAPE, "xgboost", "main"),
    # XLA's Eigen pool is sized from the CPUs: 3-4 busy threads on 2 CPUs
    # under --threads 1 (measured with jax 0.10), unless XLA_FLAGS hold it.
    "jax-defaults": (CLEAN, "jax"),
    # ONNX Runtime sizes its intra-op pool from the physical cores and reads
    # no variable: 2 busy threads under --threads 1 on 2 cores (1.32).
    "onnxruntime-defaults": (CLEAN, "onnxruntime"),
}


@pytest.mark.parametrize("name", list(MAYBE_ESCAPES))
def test_a_pool_tcap_may_not_hold_is_caught_or_held(sv: Isolated, name: str) -> None:
    """Where the program measured 2 busy threads for seconds the run must
    fail, named; where it measured 2 for less than the rule's half second in
    all it must be silent (in between, either, but a failure named)."""
    program, kind, *where = MAYBE_ESCAPES[name]
    if kind == "jax":
        pytest.importorskip("jax", reason="jax is not installed")
    result, report = strict_run(sv, program, kind, *where, ESCAPE_SECONDS)
    seen = measured(result)
    if seen["busy_seconds"] >= 1.5 or (seen["busy_seconds"] >= 0.5 and result.returncode != 0):
        assert_caught(result, report, kind, seen["pid"])
    else:
        assert_held(result, report, f"{name}, measured {seen}")


# The escapes, in workers ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["spawn", "fork"])
@pytest.mark.parametrize("kind", ["lightgbm", "onnxruntime", "cpool", "openmp_main"])
def test_escape_in_a_pool_worker_is_caught_in_the_worker(sv: Isolated, kind: str, method: str) -> None:
    result, report = strict_run(sv, ESCAPE, kind, method, ESCAPE_SECONDS)
    seen = measured(result)
    assert seen["pid"] != seen["main"]
    assert_escaped(seen, f"{kind} in a {method} worker")
    assert_caught(result, report, kind, seen["pid"], others=(seen["main"],))


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_escape_in_a_process_is_caught_in_it(sv: Isolated, method: str) -> None:
    """A multiprocessing.Process leaves through os._exit after its target."""
    result, report = strict_run(sv, ESCAPE, "cpool", f"process-{method}", ESCAPE_SECONDS)
    seen = measured(result)
    assert seen["pid"] != seen["main"]
    assert_escaped(seen, f"the C pool in a {method} Process")
    assert_caught(result, report, "cpool", seen["pid"], others=(seen["main"],))


@pytest.mark.parametrize("share", ["off", "busy"])
def test_fork_pool_of_two_blas_workers_is_over_the_launch_budget(sv: Isolated, share: str) -> None:
    """Pool(2), each worker 2.5 s of matrix products on 2 BLAS threads (its
    cap of 2): 4 threads on 2 CPUs.  With sharing off the probes leave the
    pools as the program set them, and the launch budget must fail the run
    though each worker is within its own caps.  With sharing on the probes
    bring each worker down to its share of 1 (measured: within about half a
    second): then it must be silent, unless the workers still measured 2
    busy threads for seconds, and then it must fail."""
    result, report = strict_run(sv, ESCAPE, "blas", "pool2-fork", "2.5", threads="2", extra=("--share", share))
    workers = measured(result)["workers"]
    assert len({w["pid"] for w in workers}) == 2, workers
    escaped = all(w["busy_peak"] >= 2 and w["busy_seconds"] >= 1.5 for w in workers)
    # Held: no worker ran 2 threads for longer than the budget's grace in all.
    held = all(w["busy_seconds"] < report["budget"]["grace_seconds"] for w in workers)
    context = (workers, result.returncode, result.stderr, report["budget"])
    assert report["violations"] == [], context  # each worker within its own caps: the launch is what is over
    line = [line for line in tcap_lines(result.stderr) if line.startswith("tcap: launch budget: ")]
    assert len(line) == 1, context
    if share == "off" or escaped:
        assert escaped, context  # the workers really ran 2 threads each, at once
        budget = report["budget"]
        assert result.returncode == EXIT_VIOLATION, context
        assert budget["violated"] is True and budget["cpus"] == 2 and budget["peak_pool_threads"] >= 4, context
        assert "VIOLATION" in line[0], context
    elif held:
        assert result.returncode == 0 and not report["budget"]["violated"] and "(ok;" in line[0], context
    else:  # sharing took a while: either, but the verdict agrees with the exit code
        assert result.returncode in (0, EXIT_VIOLATION) and report["budget"]["violated"] == bool(result.returncode)


# The clean side -------------------------------------------------------------------------------------------------

#: (program arguments, tcap's --threads): each library within its caps, and
#: the shapes observation must not mistake for an escape.
CLEAN_RUNS = {
    "lightgbm": (["lightgbm"], "1"),
    "xgboost": (["xgboost"], "1"),
    "onnxruntime-1-thread": (["onnxruntime", CLEAN_SECONDS, "1"], "1"),
    "tokenizers": (["tokenizers"], "1"),
    "pyarrow": (["pyarrow"], "1"),
    "opencv": (["opencv"], "1"),
    "kmeans": (["openmp_main"], "1"),
    "cpool-1-thread": (["cpool", CLEAN_SECONDS, "1"], "1"),
    "faiss": (["faiss"], "1"),
    "executor-of-blas-callers": (["executor"], "1"),
    "idle-pool-threads": (["idle"], "1"),
    "io-threads": (["io"], "1"),
    "openmp-start-up": (["startup"], "1"),
    "openmp-start-up-2": (["startup"], "2"),
}


@pytest.mark.parametrize("mode", ["warn", "strict"])
@pytest.mark.parametrize("name", list(CLEAN_RUNS))
def test_clean_program_is_silent(sv: Isolated, name: str, mode: str) -> None:
    arguments, threads = CLEAN_RUNS[name]
    if arguments[0] == "faiss":
        pytest.importorskip("faiss", reason="faiss-cpu is not installed")
    if len(arguments) == 1:
        arguments = [arguments[0], CLEAN_SECONDS]
    result = sv.run("run", "--threads", threads, "--verify", mode, "--", PYTHON, CLEAN, *arguments, timeout=TIMEOUT)
    seen = measured(result)
    assert_silent(result, f"{name}, measured {seen}")

"""Observed parallelism on the supervisor's side: the report sampler counts
each process's busy threads (ran or waited to run for at least half of an
interval) from /proc (or psutil), shows them as BUSY peak/mean and
``busy_threads``/``busy_samples`` in --report-json, and the launch budget
counts them; idle processes cost no per-thread read; the probe record's
``observed`` and observed violations are checked like every other field,
shown in the verdict, and kept by ``tcap report``.

Real processes throughout: the programs in tests/programs/observed_report
(threads hashing with the GIL released, a fork pool and a thread pool of
matrix products), records written by hand (or by a program run without
its probe, ``python -I``, into the real report directory).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import PYTHON, Isolated
from tcap import procfacts, supervise
from tcap.procfacts import ProcBackend, PsutilBackend

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux's /proc")

PROGRAMS = Path(__file__).parent / "programs" / "observed_report"
HANG = 120
#: Whether the supervisor sees the time threads waited for a CPU (the /proc
#: backend; psutil's, selected by TCAP_PROCESS_FACTS, counts CPU time only,
#: so on this shared machine a busy thread kept waiting may count less).
WAITS = os.environ.get("TCAP_PROCESS_FACTS") != "psutil"
TWO_CPUS = pytest.mark.skipif(len(os.sched_getaffinity(0)) != 2, reason="the cases of a 2-CPU machine")


def supervised(iso: Isolated, program: str, *args: str, flags: tuple[str, ...] = (),
               env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """``tcap run FLAGS --report --report-json r.json -- python PROGRAM ARGS``."""
    out = iso.work / "r.json"
    result = iso.run("run", *flags, "--report", "--report-json", str(out), "--", PYTHON, str(PROGRAMS / program),
                     *args, extra_env=env, timeout=HANG)
    return result, json.loads(out.read_text())


def row(stderr: str, pid: int) -> dict[str, str]:
    """The --report table's row of ``pid``, by column (cut at the header's column starts)."""
    lines = [line[len("tcap: "):] for line in stderr.splitlines() if line.startswith("tcap: ")]
    header = next(line for line in lines if line.startswith("PID "))
    names = re.findall(r"\S+(?: \S+)*", header)
    starts = [header.index(name) for name in names]
    line = next(line for line in lines if re.match(rf"{pid}\s", line))
    cells = [line[start:end].strip() for start, end in zip(starts, [*starts[1:], None])]
    return dict(zip(names, cells))


# --- busy threads counted, shown and written ---------------------------------------------------------


@pytest.mark.parametrize("backend", ["proc", "psutil"])
def test_two_busy_threads_are_counted(iso: Isolated, backend: str) -> None:
    """Two threads hashing for 2.5 s: peak 2 busy threads, a mean near 2, the
    changes in busy_samples (ending at 0), and the BUSY cell "2/..." in the
    table. psutil counts CPU time only: on this shared machine a thread kept
    waiting may count less, never more. Without the probe (verify off),
    whose own thread, waiting for a CPU at its first check, would count
    for that sample."""
    if backend == "psutil":
        pytest.importorskip("psutil")
    result, data = supervised(iso, "hashing.py", "2", "2.5", flags=("--threads", "1", "--verify", "off"),
                              env={"TCAP_PROCESS_FACTS": backend})
    assert result.returncode == 0, result.stderr
    pid = int(result.stdout.split()[0])
    [process] = [p for p in data["processes"] if p["pid"] == pid]
    busy, samples = process["busy_threads"], process["busy_samples"]
    assert busy is not None, process
    if backend == "proc":
        assert busy["peak"] == 2 and 1.5 <= busy["mean"] <= 2, busy
    else:
        assert 1 <= busy["peak"] <= 2 and 1 <= busy["mean"] <= 2, busy
    assert samples and samples[-1][1] == 0 and max(count for _, count in samples) == busy["peak"], samples
    assert all(later[0] >= earlier[0] and later[1] != earlier[1] for earlier, later in zip(samples, samples[1:]))
    assert len(samples) <= supervise.BUSY_SAMPLES_REPORTED
    assert abs(samples[0][0] / 1000 - time.time()) < 600  # wall-clock milliseconds
    cell = row(result.stderr, pid)["BUSY"]
    assert cell == supervise.busy_text(process) and cell.startswith(f"{busy['peak']}/"), (cell, result.stderr)
    assert data["budget"]["peak_pool_threads"] <= 2 and not data["budget"]["violated"], data["budget"]


def test_a_process_never_busy_shows_a_dash(iso: Isolated) -> None:
    """A shell sleeping under the report: never counted, BUSY "-", null."""
    out = iso.work / "r.json"
    result = iso.run("run", "--report", "--report-json", str(out), "--", "sh", "-c", "sleep 0.8", timeout=HANG)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    for process in data["processes"]:
        assert process["busy_threads"] is None and process["busy_samples"] == [], process
        assert row(result.stderr, process["pid"])["BUSY"] == "-"


def test_busy_cells() -> None:
    assert supervise.busy_text({"busy_threads": {"peak": 3, "mean": 1.94}}) == "3/1.9"
    assert supervise.busy_text({"busy_threads": {"peak": 2, "mean": 2.0}}) == "2/2"
    assert supervise.busy_text({"busy_threads": None}) == "-"
    assert supervise.busy_text({}) == "-"  # a report of an earlier tcap


# --- the launch budget counts what is observed ----------------------------------------------------------


@TWO_CPUS
def test_a_fork_pool_of_two_blas_threads_each_is_over_the_budget_under_strict(iso: Isolated) -> None:
    """The case of issue 19: a fork Pool(2), each worker 2.5 s of matrix
    products on 2 BLAS threads (--blas 2, no sharing), on 2 CPUs: each
    within its caps, 4 busy threads on 2 CPUs for about 2 s: exit 86."""
    out = iso.work / "r.json"
    result = iso.run("run", "--blas", "2", "--share", "off", "--verify", "strict", "--report-json", str(out), "--",
                     PYTHON, str(PROGRAMS / "pool.py"), "2.5", timeout=HANG)
    assert result.returncode == 86, result.stderr
    data = json.loads(out.read_text())
    budget = data["budget"]
    assert budget["violated"] and budget["cpus"] == 2 and budget["peak_pool_threads"] >= 4, budget
    assert budget["longest_over_seconds"] > budget["grace_seconds"] == supervise.BUDGET_GRACE, budget
    assert data["violations"] == [], data["violations"]  # each worker within its caps
    workers = [int(pid) for pid in result.stdout.split()]
    for pid in workers if WAITS else ():
        [process] = [p for p in data["processes"] if p["pid"] == pid]
        assert process["busy_threads"]["peak"] >= 2, process  # (3 when the probe's own check waited for a CPU)
    assert re.search(r"^tcap: verdict: .*over the launch budget \(peak \d+ busy threads on 2 CPUs.*; exit 86 "
                     r"\(verify strict\)$", result.stderr, re.M), result.stderr


@TWO_CPUS
@pytest.mark.parametrize(("program", "flags"), [("pool.py", ("--blas", "1", "--share", "off")),
                                                ("threadpool.py", ("--threads", "1"))],
                         ids=["fork Pool(2) of BLAS-1 workers", "ThreadPool(2) of BLAS callers at cap 1"])
def test_clean_launches_are_within_the_budget(iso: Isolated, program: str, flags: tuple[str, ...]) -> None:
    """Two busy threads on 2 CPUs, whether two workers of one BLAS thread
    or two Python threads calling a BLAS capped at 1: within the budget,
    and strict is silent (exit 0)."""
    out = iso.work / "r.json"
    result = iso.run("run", *flags, "--verify", "strict", "--report-json", str(out), "--", PYTHON,
                     str(PROGRAMS / program), "2.5", timeout=HANG)
    data = json.loads(out.read_text())
    assert result.returncode == 0, (result.stderr, data["budget"], data["violations"])
    budget = data["budget"]
    assert not budget["violated"] and budget["peak_pool_threads"] >= (2 if WAITS else 1), budget
    assert result.stderr == "", result.stderr
    counted = [p["busy_threads"] for p in data["processes"] if p["busy_threads"] and p["busy_threads"]["peak"]]
    if program == "threadpool.py":  # one process, its two threads busy
        assert any(busy["peak"] >= 2 and busy["mean"] >= 1.5 for busy in counted) or not WAITS, counted
    else:  # the workers mostly 1 (2 for a sample when the probe's own check waits for a CPU)
        assert sum(1 for busy in counted if busy["mean"] <= 1.3 and busy["peak"] <= 2) >= 2, counted


# --- idle processes cost nothing extra; the threads read are bounded ---------------------------------


def tree_of(script: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sh", "-c", script], start_new_session=True)


def stop(tree: subprocess.Popen[bytes]) -> None:
    os.killpg(tree.pid, 9)
    tree.wait()


def sampler_on(root: int, backend: str) -> supervise.Sampler:
    sampler = supervise.Sampler(root, observe=True)
    sampler.facts = ProcBackend() if backend == "proc" else PsutilBackend()
    return sampler


def wait_for(sampler: supervise.Sampler, size: int) -> None:
    deadline = time.monotonic() + 20
    while len(sampler.facts.tree(sampler.root)) < size:
        assert time.monotonic() < deadline, "the tree did not start"
        time.sleep(0.05)


@pytest.mark.parametrize("backend", ["proc", "psutil"])
def test_a_sleeping_tree_reads_no_thread(backend: str) -> None:
    """A shell and four sleeps sampled 6 times: no thread file read after
    the first sample (which reads a process only when it used CPU at all).
    The same with a spinning process: its threads are read at each sample,
    and it counts 1 busy thread (the case can fail)."""
    if backend == "psutil":
        pytest.importorskip("psutil")
    tree = tree_of("sleep 30 & sleep 30 & sleep 30 & sleep 30 & wait")
    try:
        sampler = sampler_on(tree.pid, backend)
        wait_for(sampler, 5)
        sampler.sample()
        first = sampler.facts.thread_reads
        for _ in range(6):
            time.sleep(sampler.interval)
            sampler.sample()
        assert len(sampler.processes) == 5, sampler.processes
        assert sampler.facts.thread_reads == first, (first, sampler.facts.thread_reads)
        assert all(p.get("busy_threads") is None for p in sampler.processes.values())
    finally:
        stop(tree)
    spin = tree_of(f"exec {sys.executable} -c 'import time\nend = time.time() + 30\nwhile time.time() < end: pass'")
    try:
        sampler = sampler_on(spin.pid, backend)
        wait_for(sampler, 1)
        for _ in range(6):
            sampler.sample()
            time.sleep(sampler.interval)
        assert sampler.facts.thread_reads >= 4, sampler.facts.thread_reads
        assert sampler.processes[spin.pid]["busy_threads"]["peak"] == 1, sampler.processes
    finally:
        stop(spin)


@pytest.mark.parametrize("backend", ["proc", "psutil"])
def test_a_look_up_finds_the_processes_started_since(backend: str) -> None:
    """Look-ups after the first read the members and the new processes
    only: children started later are found, and the tree is the one a
    fresh backend finds reading every process."""
    if backend == "psutil":
        pytest.importorskip("psutil")
    tree = tree_of("sleep 0.5; sleep 30 & sleep 30 & wait")
    try:
        facts = ProcBackend() if backend == "proc" else PsutilBackend()
        first = facts.tree(tree.pid, True)
        assert tree.pid in first and len(first) <= 2, first
        deadline = time.monotonic() + 20
        time.sleep(0.7)  # the sleeps have started (look-ups past the first 7 would be full ones)
        while True:
            found = facts.tree(tree.pid, True)
            if sorted(name for *_, name in found.values()) == [b"sh", b"sleep", b"sleep"]:  # forked and exec'd
                break
            assert time.monotonic() < deadline, found
            time.sleep(0.3)
        assert facts.scans[tree.pid] < procfacts.FULL  # not found by a full look-up
        assert set(found) == set(ProcBackend().tree(tree.pid)) and len(found) == 3, found
    finally:
        stop(tree)


def test_the_threads_read_of_one_process_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process of 40 threads read with the bound at 16: 16 read (the
    first the kernel lists), with the bound above: all 41; psutil's backend
    does not read a process over the bound (it would read every thread)."""
    many = subprocess.Popen([sys.executable, "-c", "import threading, time\n"
                             "for _ in range(40):\n"
                             "    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
                             "time.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        while len(os.listdir(f"/proc/{many.pid}/task")) < 41:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        facts = ProcBackend()
        assert len(facts.threads(many.pid) or {}) == 41
        monkeypatch.setattr(procfacts, "MOST_THREADS", 16)
        found = facts.threads(many.pid)
        assert found is not None and len(found) == 16 and many.pid in found, found
        assert all(isinstance(spent, int) and spent >= 0 for spent in found.values())
        if "psutil" in sys.modules or __import__("importlib").util.find_spec("psutil"):
            assert PsutilBackend().threads(many.pid, count=41) is None
            assert len(PsutilBackend().threads(many.pid, count=0) or {}) == 16
    finally:
        many.kill()
        many.wait()
    assert facts.threads(many.pid) is None  # gone: None, no error


def test_busy_processes_take_turns_beyond_the_reads_of_a_sample() -> None:
    """Three busy processes of 16 threads each, at most 20 threads read a
    sample: one process read at each (the one read longest ago), the others
    holding their count; every process read within three samples."""
    code = ("import threading, time\n"
            "for _ in range(15):\n"
            "    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
            "end = time.time() + 30\n"
            "while time.time() < end: pass")
    tree = tree_of(" ".join([f"{sys.executable} -c '{code}' &"] * 3) + " wait")
    try:
        sampler = sampler_on(tree.pid, "proc")
        sampler.reads = 20
        deadline = time.monotonic() + 20
        while sorted(count for _, count, _, _ in sampler.facts.tree(tree.pid).values()) != [1, 16, 16, 16]:
            assert time.monotonic() < deadline, "the tree did not start"
            time.sleep(0.05)
        sampler.sample()
        workers = [pid for pid in sampler.processes if pid != tree.pid]
        read: dict[int, list[float]] = {pid: [] for pid in workers}
        for _ in range(6):
            time.sleep(sampler.interval)
            before = sampler.facts.thread_reads
            sampler.sample()
            assert sampler.facts.thread_reads - before == 16, sampler.facts.thread_reads - before
            for pid in workers:
                read[pid].append(sampler.thread_times[pid][0])
        assert all(len(set(times)) >= 2 for times in read.values()), read  # each read at least twice
        assert all(sampler.processes[pid]["busy_threads"]["peak"] == 1 for pid in workers), sampler.processes
    finally:
        stop(tree)


def test_thread_names_are_printable() -> None:
    """The OS names of a process's threads (comm), as a program set them:
    printable, at most 16 characters."""
    code = ("import ctypes, threading, time\n"
            "libc = ctypes.CDLL(None)\n"
            "def named():\n"
            "    libc.prctl(15, b'\\x1b[31mred\\x07', 0, 0, 0)\n"
            "    time.sleep(30)\n"
            "threading.Thread(target=named, daemon=True).start()\n"
            "time.sleep(30)")
    named = subprocess.Popen([sys.executable, "-c", code])
    try:
        facts = ProcBackend()
        deadline = time.monotonic() + 20
        while True:
            tids = list(facts.threads(named.pid) or {})
            names = facts.thread_names(named.pid, tids)
            if any("red" in name for name in names.values()):
                break
            assert time.monotonic() < deadline, names
            time.sleep(0.05)
        assert all(name.isprintable() and len(name) <= 16 for name in names.values()), names
        assert "?[31mred?" in names.values(), names
    finally:
        named.kill()
        named.wait()


# --- the record's observed fields: checked, shown ------------------------------------------------------


OBSERVED = {"interval": 0.25, "samples": 12, "peak": 3, "mean": 2.4, "peak_other": 2, "python_peak": 1,
            "allowed": 1}
BUSY_VIOLATION = {"internal_api": "busy threads", "user_api": "observed", "filepath": None, "threads": 3, "cap": 1,
                  "at": 1_800_000_000.5, "reason": "3 busy threads where the caps allow 1", "seconds": 1.25,
                  "names": ["python3", "OMP worker"], "libraries": ["libgomp", "lightgbm"]}


def record(pid: int = 7, **extra: Any) -> dict[str, Any]:
    return {"pid": pid, "ppid": 1, "argv": ["python", "w.py"], "pools": [], "violations": [], "enforced": [],
            "hazards": [], **extra}


def test_a_records_observed_fields_are_kept() -> None:
    checked = supervise._record(record(observed=OBSERVED, violations=[BUSY_VIOLATION]))
    assert checked["observed"] == OBSERVED
    [violation] = checked["violations"]
    assert violation["internal_api"] == "busy threads" and violation["seconds"] == 1.25
    assert violation["names"] == ["python3", "OMP worker"] and violation["libraries"] == ["libgomp", "lightgbm"]
    assert supervise._record(record())["observed"] is None  # an earlier tcap's record
    plain = supervise._record(record(violations=[{"internal_api": "openblas", "threads": 8, "cap": 1, "at": 1.0}]))
    assert set(plain["violations"][0]) == {"internal_api", "threads", "cap", "at"}  # no seconds/names/libraries


def hostile(key: str, value: Any) -> dict[str, Any]:
    """A record whose ``observed`` (``observed.KEY``) or observed violation (``violation.KEY``) holds ``value``."""
    where, _, field = key.partition(".")
    if where == "observed":
        observed: Any = value if not field else {**OBSERVED, field: value}
        if field and value == "-":
            observed = {k: v for k, v in OBSERVED.items() if k != field}
        return record(observed=observed)
    return record(violations=[{**BUSY_VIOLATION, field: value}])


BAD_RECORDS: list[tuple[str, Any, str]] = [
    ("observed", "busy", "observed: expected an object"),
    ("observed", [1, 2], "observed: expected an object"),
    ("observed.peak", "-", "observed.peak: missing"),
    ("observed.peak", -1, "observed.peak: expected an integer"),
    ("observed.peak", 2.5, "observed.peak: expected an integer"),
    ("observed.peak", True, "observed.peak: expected an integer"),
    ("observed.peak", 1 << 40, "observed.peak: expected an integer"),
    ("observed.mean", float("inf"), "observed.mean: expected a number"),
    ("observed.mean", "2", "observed.mean: expected a number"),
    ("observed.interval", -0.5, "observed.interval: expected a number"),
    ("observed.interval", 1e9, "observed.interval: expected a number"),
    ("observed.allowed", "1", "observed.allowed: expected an integer from 0 to 1073741823 or null"),
    ("observed.samples", None, "observed.samples: expected an integer"),
    ("violation.seconds", -1, "violations[0].seconds: expected a number"),
    ("violation.seconds", "1.2", "violations[0].seconds: expected a number"),
    ("violation.names", "python3", "violations[0].names: expected a list"),
    ("violation.names", ["a"] * 9, "violations[0].names: 9 items, more than the 8 tcap writes"),
    ("violation.names", ["x" * 17], "violations[0].names[0]: expected a string of at most 16 characters"),
    ("violation.names", [3], "violations[0].names[0]: expected a string"),
    ("violation.names", ["x" * 100_000] * 8, "violations[0].names[0]: expected a string of at most 16"),
    ("violation.libraries", ["lib"] * 17, "violations[0].libraries: 17 items, more than the 16"),
    ("violation.libraries", [None], "violations[0].libraries[0]: expected a string"),
    ("violation.libraries", {"a": 1}, "violations[0].libraries: expected a list"),
    ("violation.libraries", ["x" * 65], "violations[0].libraries[0]: expected a string of at most 64"),
    ("violation.threads", "3", "violations[0].threads: expected an integer"),
]


@pytest.mark.parametrize(("key", "value", "message"), BAD_RECORDS,
                         ids=[f"{key}={str(value)[:20]}" for key, value, _ in BAD_RECORDS])
def test_a_hostile_record_is_no_record(tmp_path: Path, key: str, value: Any, message: str) -> None:
    """Each bad field: the record check names it; read from a report
    directory, the record is skipped (its process unverified), no crash."""
    data = hostile(key, value)
    with pytest.raises(ValueError, match=re.escape(message)):
        supervise._record(data)
    (tmp_path / "7.json").write_text(json.dumps(data))
    assert supervise.read_records(str(tmp_path)) == {}


def test_a_huge_record_list_is_refused_quickly(tmp_path: Path) -> None:
    """A million names in an observed violation: refused on its length
    (the check does not walk it), the record skipped."""
    (tmp_path / "7.json").write_text(json.dumps(hostile("violation.names", ["n"] * 1_000_000)))
    assert supervise.read_records(str(tmp_path)) == {}


def test_an_observed_violation_in_the_verdict() -> None:
    """Shown with its libraries (else its threads' names), printable."""
    [process] = supervise.merge({7: supervise._record(record(observed=OBSERVED, violations=[BUSY_VIOLATION]))},
                                {}, 7)
    assert process["status"] == "VIOLATION" and process["busy_threads"] == {"peak": 3, "mean": 2.4}, process
    assert process["observed"] == OBSERVED
    summary = supervise.summarize([process], None, 0)
    assert "busy threads 3 > 1 in pid 7 (libgomp, lightgbm)" in summary["verdict"], summary["verdict"]
    [violation] = summary["violations"]
    assert violation["seconds"] == 1.25 and violation["names"] == ["python3", "OMP worker"], violation
    named = {**BUSY_VIOLATION, "libraries": None, "names": ["\x1b[2Jevil"]}
    [process] = supervise.merge({7: supervise._record(record(violations=[named]))}, {}, 7)
    verdict = supervise.summarize([process], None, 0)["verdict"]
    assert "busy threads 3 > 1 in pid 7 (\\x1b[2Jevil)" in verdict and "\x1b" not in verdict, verdict


#: A program's own record: a process its probe saw running 3 busy threads
#: for 1.25 s where its caps allow 1.
RECORD = json.dumps({**record(), "pid": "PID", "observed": OBSERVED, "violations": [BUSY_VIOLATION]})


def test_an_observed_violation_fails_strict_end_to_end(iso: Isolated) -> None:
    """A real supervised run whose process writes the record (python -I:
    no probe of its own): the verdict names the busy threads and the
    libraries, strict exits 86, the JSON keeps the fields; the supervisor's
    own count (2 hashing threads) is its BUSY, preferred to the record's."""
    (iso.work / "record.json").write_text(RECORD.replace('"pid": 7', '"pid": "PID"'))
    out = iso.work / "r.json"
    result = iso.run("run", "--verify", "strict", "--report", "--report-json", str(out), "--", PYTHON, "-I",
                     str(PROGRAMS / "record.py"), "record.json", "1.5", timeout=HANG)
    assert result.returncode == 86, result.stderr
    pid = int(result.stdout.split()[0])
    assert re.search(rf"^tcap: verdict: .*busy threads 3 > 1 in pid {pid} \(libgomp, lightgbm\).*; exit 86",
                     result.stderr, re.M), result.stderr
    data = json.loads(out.read_text())
    [process] = [p for p in data["processes"] if p["pid"] == pid]
    assert process["observed"] == OBSERVED and process["status"] == "VIOLATION", process
    [violation] = process["violations"]
    assert violation["libraries"] == ["libgomp", "lightgbm"] and violation["seconds"] == 1.25, violation
    peak = process["busy_threads"]["peak"]
    assert peak == 2 or (not WAITS and peak == 1), process  # the supervisor's own count, not the record's 3
    assert row(result.stderr, pid)["BUSY"].startswith(f"{peak}/"), result.stderr


def test_a_hostile_record_end_to_end_is_unverified(iso: Isolated) -> None:
    """The same run with a record whose names are 9 strings of 100 kB:
    unverified, no crash, the command's own exit code."""
    bad = json.loads(RECORD.replace('"PID"', "1"))
    bad["violations"][0]["names"] = ["x" * 100_000] * 9
    (iso.work / "record.json").write_text(json.dumps(bad).replace('"pid": 1', '"pid": "PID"'))
    out = iso.work / "r.json"
    result = iso.run("run", "--verify", "strict", "--report-json", str(out), "--", PYTHON, "-I",
                     str(PROGRAMS / "record.py"), "record.json", "0.5", timeout=HANG)
    assert result.returncode == 0, result.stderr
    pid = int(result.stdout.split()[0])
    data = json.loads(out.read_text())
    [process] = [p for p in data["processes"] if p["pid"] == pid]
    assert process["status"] == "unverified" and process["observed"] is None, process


# --- tcap report keeps them, and checks them -------------------------------------------------------------


def report_with(**process: Any) -> dict[str, Any]:
    base = {"pid": 7, "ppid": 1, "command": "python w.py", "argv": ["python", "w.py"], "status": "ok", "pools": [],
            "violations": [], "enforced": [], "peak_os_threads": 3, "unexplained_threads": 0, "hazards": [],
            "cpu_seconds": 1.5, "share": None}
    return {"processes": [{**base, **process}], "verdict": "v",
            "launch": {"host": "node01", "rank": None, "node_cpus": 2,
                       "budget_samples": supervise.pack_samples([[1_800_000_000_000, 2, 1]])}}


def test_tcap_report_keeps_busy_threads_and_observed_violations(iso: Isolated) -> None:
    """Two reports: the BUSY cells, the observed violation in the verdict,
    and every field in --json."""
    samples = [[1_800_000_000_000, 1], [1_800_000_000_250, 3], [1_800_000_001_000, 0]]
    violation = {"name": "busy threads", "threads": 3, "cap": 1, "at": 1_800_000_000.5, "seconds": 1.25,
                 "names": ["OMP worker"], "libraries": ["libgomp"]}
    (iso.work / "a.json").write_text(json.dumps(report_with(busy_threads={"peak": 3, "mean": 1.94},
                                                            busy_samples=samples, observed=OBSERVED,
                                                            status="VIOLATION", violations=[violation])))
    (iso.work / "b.json").write_text(json.dumps(report_with(pid=8)))  # an earlier tcap's: no such fields
    result = iso.run("report", "--json", "m.json", "a.json", "b.json", timeout=HANG)
    assert result.returncode == 1, result.stderr
    assert re.search(r"^a\.json\s+7\s.*\s3/1\.9\s+1\.50\s+VIOLATION$", result.stdout, re.M), result.stdout
    assert re.search(r"^b\.json\s+8\s.*\s-\s+1\.50\s+ok$", result.stdout, re.M), result.stdout
    assert "busy threads 3 > 1 in pid 7 (libgomp)" in result.stdout, result.stdout
    merged = json.loads((iso.work / "m.json").read_text())
    processes = {p["pid"]: p for p in merged["nodes"][0]["processes"]}
    assert processes[7]["busy_threads"] == {"peak": 3, "mean": 1.94} and processes[7]["busy_samples"] == samples
    assert processes[7]["observed"] == OBSERVED and processes[7]["violations"] == [violation]
    assert processes[8]["busy_threads"] is None and processes[8]["busy_samples"] == []
    assert merged["violations"][0]["libraries"] == ["libgomp"]


BAD_REPORTS: list[tuple[dict[str, Any], str]] = [
    ({"busy_threads": [3, 1]}, "processes[0].busy_threads: expected an object"),
    ({"busy_threads": {"peak": 3}}, "processes[0].busy_threads.mean: missing"),
    ({"busy_threads": {"peak": -3, "mean": 1}}, "processes[0].busy_threads.peak: expected an integer"),
    ({"busy_threads": {"peak": 3, "mean": "1"}}, "processes[0].busy_threads.mean: expected a number"),
    ({"busy_samples": {"0": 1}}, "processes[0].busy_samples: expected a list"),
    ({"busy_samples": [[1, 2]] * 257}, "processes[0].busy_samples: 257 samples, more than the 256"),
    ({"busy_samples": [[1, 2, 3]]}, "processes[0].busy_samples[0]: expected [time_ms, busy threads]"),
    ({"busy_samples": [[1.5, 2]]}, "processes[0].busy_samples[0][0]: expected an integer"),
    ({"busy_samples": [[1, -2]]}, "processes[0].busy_samples[0][1]: expected an integer"),
    ({"observed": {"interval": 0.25}}, "processes[0].observed.samples: missing"),
    ({"violations": [{"name": "busy threads", "threads": 3, "cap": 1, "at": 1.0, "names": ["n"] * 9}]},
     "processes[0].violations[0].names: 9 items"),
    ({"violations": [{"name": "busy threads", "threads": 3, "cap": 1, "at": 1.0, "seconds": -1}]},
     "processes[0].violations[0].seconds: expected a number"),
]


@pytest.mark.parametrize(("fields", "message"), BAD_REPORTS, ids=[message for _, message in BAD_REPORTS])
def test_tcap_report_names_a_bad_field(iso: Isolated, fields: dict[str, Any], message: str) -> None:
    (iso.work / "r.json").write_text(json.dumps(report_with(**fields)))
    line = iso.error_line(iso.run("report", "r.json", timeout=HANG), 2)
    assert line.startswith(f"tcap: error: r.json: {message}"), line


def test_a_real_report_merges(iso: Isolated) -> None:
    """A real run's report through tcap report: the same BUSY cell."""
    result, data = supervised(iso, "hashing.py", "2", "1.5", flags=("--threads", "1"))
    assert result.returncode == 0, result.stderr
    pid = int(result.stdout.split()[0])
    [process] = [p for p in data["processes"] if p["pid"] == pid]
    merged = iso.run("report", "r.json", timeout=HANG)
    assert merged.returncode == 0, merged.stderr
    assert re.search(rf"^r\.json\s+{pid}\s.*\s{re.escape(supervise.busy_text(process))}\s", merged.stdout, re.M), \
        merged.stdout

"""The run-time CPU sharing in reports: the probe record's ``share`` checked
like every other field, the SHARE column and the sharing line of ``tcap run
--report``, ``launch.share`` and each process's share in ``--report-json``,
kept by ``tcap report``; the launch budget counting the pool sizes the
records report (a launch that sharing kept within its CPUs is no
violation), and a real fork pool sharing the machine's 2 CPUs.

Records and reports are data files: most cases write them by hand, and the
budget cases have real busy processes (``python -I``, no probe of their own)
write them, so the real sampler reads them while they run.
"""

from __future__ import annotations

import json
import os
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

from conftest import PYTHON, Isolated
from tcap import fields, supervise

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs Linux")

HANG = 60


def share(low: int = 1, high: int = 2, changes: int = 3, busy_peak: int = 3, samples: int = 4) -> dict[str, Any]:
    """A probe record's share as tcap.probe writes it."""
    return {"cpus": 2, "now": low, "low": low, "high": high, "changes": changes, "busy_peak": busy_peak,
            "threads_peak": 1, "samples": [[1_800_000_000 + step / 4, low if step % 2 else high, 1 + step % 3]
                                           for step in range(samples)]}


def record(pid: int, **extra: Any) -> dict[str, Any]:
    return {"pid": pid, "ppid": 1, "argv": ["python", "w.py"], "pools": [
        {"internal_api": "openblas", "user_api": "blas", "num_threads": 1, "peak_threads": 2, "cap": 2,
         "filepath": "/lib/libopenblas.so"}], "violations": [], "enforced": [], "hazards": [], **extra}


# --- the record's share field ----------------------------------------------------------------------


def test_a_record_of_an_earlier_tcap_has_no_share() -> None:
    assert supervise._record(record(7))["share"] is None
    assert supervise._record(record(7, share=None))["share"] is None


def test_a_records_share_is_kept_whole() -> None:
    assert supervise._record(record(7, share=share(samples=256)))["share"] == share(samples=256)


BAD_SHARES: list[tuple[str, Any, str]] = [
    ("a string", "busy", "share: expected an object"),
    ("a list", [1, 2], "share: expected an object"),
    ("no cpus", "-cpus", "share.cpus: missing"),
    ("no samples", "-samples", "share.samples: missing"),
    ("cpus 0", {"cpus": 0}, "share.cpus: expected an integer from 1 to 1073741823"),
    ("low negative", {"low": -1}, "share.low: expected an integer from 0"),
    ("high a float", {"high": 1.5}, "share.high: expected an integer"),
    ("changes a boolean", {"changes": True}, "share.changes: expected an integer"),
    ("busy_peak huge", {"busy_peak": 10**30}, "share.busy_peak: expected an integer"),
    ("threads_peak null", {"threads_peak": None}, "share.threads_peak: expected an integer"),
    ("now a string", {"now": "1"}, "share.now: expected an integer"),
    ("samples an object", {"samples": {}}, "share.samples: expected a list"),
    ("too many samples", {"samples": [[1.0, 1, 1]] * 257}, "share.samples: 257 samples, more than the 256"),
    ("a sample short", {"samples": [[1.0, 1, 1], [2.0, 1]]}, "share.samples[1]: expected [seconds, share, busy"),
    ("a sample not a list", {"samples": ["x"]}, "share.samples[0]: expected [seconds, share, busy"),
    ("a negative time", {"samples": [[-1, 1, 1]]}, "share.samples[0][0]: expected a number from 0"),
    ("an infinite time", {"samples": [[float("inf"), 1, 1]]}, "share.samples[0][0]: expected a number"),
    ("a share of -1", {"samples": [[1.0, -1, 1]]}, "share.samples[0][1]: expected an integer"),
    ("busy a string", {"samples": [[1.0, 1, "2"]]}, "share.samples[0][2]: expected an integer"),
]


@pytest.mark.parametrize(("change", "message"), [case[1:] for case in BAD_SHARES], ids=[c[0] for c in BAD_SHARES])
def test_a_bad_share_in_a_record_is_named(change: Any, message: str) -> None:
    value: Any = share()
    if isinstance(change, dict):
        value.update(change)
    elif isinstance(change, str) and change.startswith("-"):
        del value[change[1:]]
    else:
        value = change
    with pytest.raises(fields.Bad) as caught:
        supervise._record(record(7, share=value))
    assert str(caught.value).startswith(message), caught.value


def test_a_record_with_a_bad_share_is_skipped_like_any_bad_record(tmp_path: Path) -> None:
    """read_records: a bad share makes the record count as none (its
    process unverified); the others are taken."""
    (tmp_path / "7.json").write_text(json.dumps(record(7, share=share())))
    (tmp_path / "8.json").write_text(json.dumps(record(8, share={**share(), "low": -1})))
    (tmp_path / "9.json").write_text(json.dumps(record(9)))
    records = supervise.read_records(str(tmp_path))
    assert sorted(records) == [7, 9]
    statuses = {process["pid"]: process["status"] for process in supervise.merge(records, {8: {
        "argv": ["python"], "peak_os_threads": 1, "cpu_seconds": 0.5}}, first=7)}
    assert statuses == {7: "ok", 8: "unverified", 9: "ok"}


# --- the table, the sharing line, the JSON ---------------------------------------------------------


def test_the_share_column() -> None:
    records = {7: supervise._record(record(7, share=share(1, 2, 3))),
               8: supervise._record(record(8, share=share(2, 2, 0))),
               9: supervise._record(record(9))}
    processes = supervise.merge(records, {10: {"argv": ["sh"], "peak_os_threads": 1, "cpu_seconds": 0.0}}, first=7)
    lines = supervise.table(processes).splitlines()
    header = lines[0].split("  ")
    assert [cell.strip() for cell in header if cell.strip()][2:4] == ["POOLS (threads/cap)", "SHARE"], lines[0]
    column = lines[0].index("SHARE")
    cells = {int(line.split()[1]): line[column:].split("  ")[0] for line in lines[1:]}
    assert cells == {7: "1-2 (3x)", 8: "2", 9: "-", 10: "-"}, lines


def test_a_report_holds_the_share_with_its_samples_thinned() -> None:
    """At most 32 samples per process, evenly spaced, the first and the last kept."""
    full = share(samples=256)
    [process] = supervise.merge({7: supervise._record(record(7, share=full))}, {}, first=7)
    kept = process["share"]["samples"]
    assert len(kept) == supervise.SHARE_SAMPLES_REPORTED == 32
    assert kept[0] == full["samples"][0] and kept[-1] == full["samples"][-1] and kept == sorted(kept)
    assert {key: value for key, value in process["share"].items() if key != "samples"} == \
        {key: value for key, value in full.items() if key != "samples"}
    assert supervise.thin(list(range(5)), 32) == list(range(5))
    assert supervise.thin(list(range(100)), 3) == [0, 49, 99]


@pytest.mark.parametrize(("recipe", "expected"), [
    ({"verify": "warn", "env": [["OMP_NUM_THREADS", "2"], ["TCAP_SHARE", "2"]]}, ("busy", 2)),
    ({"verify": "warn", "env": [["TCAP_SHARE", "2"]], "share": "busy"}, ("busy", 2)),
    ({"verify": "warn", "env": [], "share": "off"}, ("off", None)),
    ({"verify": "off", "env": [["TCAP_SHARE", "2"]]}, ("off", None)),
    ({"verify": "warn", "env": [["TCAP_SHARE", "x"]]}, (None, None)),
    ({"verify": "warn"}, (None, None)),
], ids=["from TCAP_SHARE", "the recipe's", "off", "verify off", "garbled", "an earlier recipe"])
def test_the_launchs_mode_and_cpus(recipe: dict[str, Any], expected: tuple[Any, Any]) -> None:
    assert supervise.recipe_share(recipe) == expected


def test_the_sharing_line() -> None:
    processes = [{"share": share(busy_peak=3)}, {"share": share(busy_peak=2)}, {"share": None}]
    launch = supervise.launch_share("busy", 2, processes)
    assert launch == {"mode": "busy", "cpus": 2, "busy_peak": 3}
    assert supervise.share_line(launch) == "sharing: busy, 2 CPUs; up to 3 busy processes at once"
    assert supervise.share_line({**launch, "busy_peak": 1}) == "sharing: busy, 2 CPUs; up to 1 busy process at once"
    assert supervise.launch_share(None, None, processes)["cpus"] == 2  # the records' CPUs
    idle = supervise.launch_share("busy", 2, [{"share": None}])
    assert supervise.share_line(idle) == "sharing: busy, 2 CPUs; no busy process seen"
    assert supervise.share_line(supervise.launch_share("busy", 2, [{"share": share(busy_peak=0)}])) == \
        "sharing: busy, 2 CPUs; no busy process seen"
    assert supervise.launch_share("off", 2, processes) == {"mode": "off", "cpus": None, "busy_peak": None}
    assert supervise.share_line({"mode": "off", "cpus": None, "busy_peak": None}) == "sharing: off"
    summary = {**supervise.summarize([], None, 0), "launch": {"share": launch}}
    assert "tcap: sharing: busy, 2 CPUs; up to 3 busy processes at once\n" in supervise.findings(summary)


# --- tcap report ---------------------------------------------------------------------------------


def report(pid: int, process_share: Any = None, launch_share: Any = "(none)", host: str = "h") -> dict[str, Any]:
    """A report as tcap run --report-json writes it (launch.share left out: as an earlier tcap wrote it)."""
    process = {"pid": pid, "ppid": 1, "command": "python w.py", "argv": ["python", "w.py"], "status": "ok",
               "pools": [{"name": "openblas", "user_api": "blas", "threads": 1, "cap": 2, "filepath": None}],
               "violations": [], "enforced": [], "peak_os_threads": 3, "unexplained_threads": 0, "hazards": [],
               "cpu_seconds": 1.5}
    if process_share is not None:
        process["share"] = process_share
    launch = {"host": host, "rank": None, "node_cpus": 2, "budget_samples": supervise.pack_samples([])}
    if launch_share != "(none)":
        launch["share"] = launch_share
    return {"processes": [process], "verdict": "v", "launch": launch}


def write(iso: Isolated, name: str, data: dict[str, Any]) -> str:
    (iso.work / name).write_text(json.dumps(data))
    return name


def test_tcap_report_keeps_the_sharing(iso: Isolated) -> None:
    """Three launches on one node (busy, busy, off) and an earlier tcap's
    report on another: the SHARE column, one sharing line per node that has
    one, and the shares in --json."""
    thinned = {**share(1, 2, 3, 3), "samples": supervise.thin(share(samples=256)["samples"], 32)}
    files = [
        write(iso, "a.json", report(11, thinned, {"mode": "busy", "cpus": 2, "busy_peak": 3})),
        write(iso, "b.json", report(12, share(2, 2, 0, 2), {"mode": "busy", "cpus": 2, "busy_peak": 2})),
        write(iso, "c.json", report(13, None, {"mode": "off", "cpus": None, "busy_peak": None})),
        write(iso, "d.json", report(14, host="old")),
    ]
    result = iso.run("report", "--json", "m.json", *files, timeout=HANG)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    out = result.stdout
    assert re.search(r"^sharing of h: busy in 2 launches, off in 1, 2 CPUs; up to 3 busy processes at once$",
                     out, re.M), out
    assert "sharing of old" not in out
    rows = {int(match[1]): match[0] for match in re.finditer(r"^\S+\s+(\d+)\s.*$", out, re.M)}
    assert re.search(r"openblas 1/2\s+1-2 \(3x\)\s+3\s", rows[11]), rows
    assert re.search(r"openblas 1/2\s+2\s+3\s", rows[12]) and re.search(r"openblas 1/2\s+-\s+3\s", rows[13]), rows
    data = json.loads((iso.work / "m.json").read_text())
    nodes = {node["host"]: node for node in data["nodes"]}
    assert nodes["h"]["share"] == {"mode": "mixed", "cpus": 2, "busy_peak": 3, "launches": {"busy": 2, "off": 1}}
    assert nodes["old"]["share"] is None
    shares = {process["pid"]: process["share"] for node in data["nodes"] for process in node["processes"]}
    assert shares == {11: thinned, 12: share(2, 2, 0, 2), 13: None, 14: None}


def test_tcap_report_of_launches_of_one_mode(iso: Isolated) -> None:
    files = [write(iso, f"{name}.json", report(20 + index, share(busy_peak=index + 1),
                                               {"mode": "busy", "cpus": 2, "busy_peak": index + 1}))
             for index, name in enumerate("ab")]
    result = iso.run("report", *files, timeout=HANG)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^sharing of h: busy, 2 CPUs; up to 2 busy processes at once$", result.stdout, re.M), \
        result.stdout
    off = write(iso, "off.json", report(30, None, {"mode": "off", "cpus": None, "busy_peak": None}))
    result = iso.run("report", off, timeout=HANG)
    assert re.search(r"^sharing of h: off$", result.stdout, re.M), result.stdout


BAD_REPORT_SHARES: list[tuple[str, Any, Any, str]] = [
    ("process share a string", "busy", "(none)", "processes[0].share: expected an object"),
    ("process share low", {**share(), "low": -1}, "(none)", "processes[0].share.low: expected an integer from 0"),
    ("process share cpus missing", {k: v for k, v in share().items() if k != "cpus"}, "(none)",
     "processes[0].share.cpus: missing"),
    ("a sample's share", {**share(), "samples": [[1.0, 1, 1], [2.0, "1e400", 1]]}, "(none)",
     "processes[0].share.samples[1][1]: expected an integer"),
    ("more samples than a report keeps", share(samples=33), "(none)",
     "processes[0].share.samples: 33 samples, more than the 32 tcap writes"),
    ("launch share a list", None, [], "launch.share: expected an object"),
    ("launch share mode", None, {"mode": "always", "cpus": 2, "busy_peak": 1},
     "launch.share.mode: expected one of busy, off"),
    ("launch share no mode", None, {"cpus": 2, "busy_peak": 1}, "launch.share.mode: missing"),
    ("launch share cpus 0", None, {"mode": "busy", "cpus": 0, "busy_peak": 1},
     "launch.share.cpus: expected an integer from 1 to 1073741823 or null"),
    ("launch share busy_peak", None, {"mode": "busy", "cpus": 2, "busy_peak": "3"},
     "launch.share.busy_peak: expected an integer"),
    ("launch share busy_peak missing", None, {"mode": "busy", "cpus": 2}, "launch.share.busy_peak: missing"),
]


@pytest.mark.parametrize(("process_share", "launch_share", "message"), [case[1:] for case in BAD_REPORT_SHARES],
                         ids=[case[0] for case in BAD_REPORT_SHARES])
def test_a_bad_share_in_a_report_is_one_line_and_exit_2(iso: Isolated, process_share: Any, launch_share: Any,
                                                        message: str) -> None:
    text = json.dumps(report(40, process_share, launch_share)).replace('"1e400"', "1e400")
    (iso.work / "r.json").write_text(text)
    line = iso.error_line(iso.run("report", "r.json", timeout=HANG), 2)
    assert line.startswith(f"tcap: error: r.json: {message}"), line


# --- the launch budget counts the pool sizes the records report ----------------------------------


def test_the_budget_counts_a_records_pool_size_not_its_cap(tmp_path: Path) -> None:
    """A pool sharing lowered to 1 under a cap of 4 (its peak 4, before):
    a busy process counts 1 thread; the affinity entry is no pool."""
    pools = [{"internal_api": "openblas", "user_api": "blas", "num_threads": 1, "peak_threads": 4, "cap": 4},
             {"internal_api": "affinity", "user_api": None, "num_threads": 8, "cap": 2}]
    (tmp_path / "7.json").write_text(json.dumps({**record(7, share=share(1, 4, 1)), "pools": pools}))
    sampler = supervise.Sampler(0, str(tmp_path), 2)
    assert sampler.budget_threads(7) == 1
    assert sampler.budget_threads(8) == 1  # no record: one thread


#: A busy child that writes its own probe record (a pool of THREADS threads,
#: cap 2, as sharing left it) and then works for about 5 s on THREADS threads
#: (hashing, which releases the GIL); its parent waits.
CHILD = """
import hashlib, json, os, sys, threading, time
threads = int(sys.argv[1])
share = {"cpus": 2, "now": threads, "low": threads, "high": 2, "changes": 2 - threads, "busy_peak": 2,
         "threads_peak": 1, "samples": [[time.time(), threads, 2]]}
record = {"pid": os.getpid(), "ppid": os.getppid(), "argv": [sys.executable, "child.py", sys.argv[1]],
          "pools": [{"internal_api": "openblas", "user_api": "blas", "num_threads": threads, "peak_threads": 2,
                     "cap": 2, "filepath": None}], "violations": [], "enforced": [], "hazards": [], "share": share}
with open(os.path.join(os.environ["TCAP_REPORT_DIR"], f"{os.getpid()}.json"), "w") as f:
    json.dump(record, f)
def work():
    data, end = b"x" * (1 << 20), time.monotonic() + 5
    while time.monotonic() < end:
        hashlib.sha256(data).digest()
workers = [threading.Thread(target=work) for _ in range(threads)]
for worker in workers:
    worker.start()
for worker in workers:
    worker.join()
"""
PARENT = """
import subprocess, sys
children = [subprocess.Popen([sys.executable, "-I", "child.py", sys.argv[1]]) for _ in range(2)]
sys.exit(max(child.wait() for child in children))
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
@pytest.mark.parametrize(("threads", "violated"), [(1, False), (2, True)],
                         ids=["shared down to 1 each: within", "2 each: over"])
def test_a_launch_sharing_kept_within_its_cpus_is_within_its_budget(iso: Isolated, threads: int,
                                                                   violated: bool) -> None:
    """Two busy processes on 2 CPUs whose records say their pools (cap 2)
    run 1 thread each, as sharing left them, and that run 1 busy thread
    each: peak 2 busy threads, within the budget. The same with 2 each: 4
    on 2 CPUs, over it (the case can fail)."""
    (iso.work / "child.py").write_text(CHILD)
    (iso.work / "parent.py").write_text(PARENT)
    result = iso.run("run", "--cpus", "first:2", "--report", "--report-json", "r.json", "--", PYTHON, "-I",
                     "parent.py", str(threads), timeout=HANG)
    assert result.returncode == 0, result.stderr
    data = json.loads((iso.work / "r.json").read_text())
    budget = data["budget"]
    assert budget["cpus"] == 2, budget
    assert budget["violated"] is violated, (budget, result.stderr)
    if violated:
        assert budget["peak_pool_threads"] == 4 and "over the launch budget" in data["verdict"], budget
    else:
        assert budget["peak_pool_threads"] == 2 and budget["longest_over_seconds"] == 0, budget
        assert "launch budget" not in data["verdict"], data["verdict"]
    children = [process for process in data["processes"] if process["argv"][-2:] == ["child.py", str(threads)]]
    assert len(children) == 2 and all(process["share"]["low"] == threads for process in children), children
    assert re.search(rf"^tcap: launch budget: peak {2 * threads} busy threads on 2 CPUs .*"
                     rf"\(({'VIOLATION' if violated else 'ok'});", result.stderr, re.M), result.stderr
    share_cell = "1-2 (1x)" if threads == 1 else "2"
    assert all(re.search(rf"\s{re.escape(share_cell)}\s", row) for row in result.stderr.splitlines()
               if "child.py" in row), result.stderr


# --- a real fork pool shares the CPUs -------------------------------------------------------------

FORK_POOL = textwrap.dedent("""
    import os, time
    import numpy as np
    from multiprocessing import get_context

    def work(_):
        a = np.ones((300, 300))
        end = time.monotonic() + 4
        while time.monotonic() < end:
            a @ a
        return os.getpid()

    if __name__ == "__main__":
        with get_context("fork").Pool(2) as pool:
            print(*sorted(set(pool.map(work, range(2), chunksize=1))), flush=True)
""")


@pytest.mark.skipif(len(os.sched_getaffinity(0)) != 2, reason="the case of a 2-CPU machine")
def test_a_fork_pool_of_blas_work_shares_the_two_cpus(iso: Isolated) -> None:
    """``tcap run --report -- python prog.py``, a fork Pool(2) of matrix
    products on 2 CPUs, no flags: each worker's share goes down to 1 (its
    SHARE cell starts at 1), the sharing line says 2 CPUs and 2 busy
    processes, --report-json has the same."""
    (iso.work / "prog.py").write_text(FORK_POOL)
    result = iso.run("run", "--report", "--report-json", "r.json", "--", PYTHON, "prog.py", timeout=120)
    assert result.returncode == 0, result.stderr
    workers = [int(pid) for pid in result.stdout.split()]
    assert len(workers) == 2, result.stdout
    data = json.loads((iso.work / "r.json").read_text())
    assert data["launch"]["share"]["mode"] == "busy" and data["launch"]["share"]["cpus"] == 2, data["launch"]
    shares = {process["pid"]: process["share"] for process in data["processes"]}
    assert all(shares[pid] is not None and shares[pid]["low"] == 1 for pid in workers), shares
    assert data["launch"]["share"]["busy_peak"] == 2, data["launch"]
    assert re.search(r"^tcap: sharing: busy, 2 CPUs; up to 2 busy processes at once$", result.stderr, re.M), \
        result.stderr
    column = next(line for line in result.stderr.splitlines() if "SHARE" in line).index("SHARE")
    for line in result.stderr.splitlines():
        if any(re.match(rf"tcap: {pid}\s", line) for pid in workers):
            assert line[column:].startswith("1"), (line, result.stderr)

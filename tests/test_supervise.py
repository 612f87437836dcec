"""Supervised runs: ``tcap run --report``/``--report-json`` and ``--verify strict``.

Real subprocesses, real numpy and OpenBLAS: a program raises its own pool
over the cap with threadpoolctl and the report, the verdict and the exit
code must say so, for the right pid.  Every test gives tcap a private
TMPDIR, so it can check the per-run report directory is gone afterwards.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import PYTHON, Isolated
from tcap.errors import EXIT_VIOLATION
from tcap.supervise import SAMPLES_ENCODING

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs Linux")

# Raises its OpenBLAS pool to 8 threads after a matmul, then lives long
# enough for the probe's timer check and the sampler to see it.
VIOLATE = """
import os, sys, time
import numpy as np, threadpoolctl
a = np.ones((200, 200)); a @ a
threadpoolctl.threadpool_limits(8)
a @ a
print(os.getpid(), flush=True)
time.sleep(1.5)
sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
"""

CLEAN = """
import os, time
import numpy as np
a = np.ones((200, 200)); a @ a
print(os.getpid(), flush=True)
time.sleep(0.7)
"""

POOL = """
import os, time
import numpy as np, threadpoolctl
from multiprocessing import get_context

def raise_limit():
    a = np.ones((200, 200)); a @ a
    threadpoolctl.threadpool_limits(8)
    a @ a
    time.sleep(1.5)
    return os.getpid()

if __name__ == "__main__":
    with get_context("spawn").Pool(2) as pool:
        worker = pool.apply(raise_limit)
    print(os.getpid(), worker, flush=True)
"""

GRANDCHILD = """
import os, subprocess, sys
code = "import os, time; print(os.getpid(), flush=True); time.sleep(1.5)"
done = subprocess.run([sys.executable, "-I", "-c", code], stdout=subprocess.PIPE, text=True)
print(os.getpid(), done.stdout.strip(), flush=True)
"""


@pytest.fixture
def sv(iso: Isolated) -> Isolated:
    """``iso`` with a private, empty TMPDIR for tcap's report directories."""
    tmp = iso.root / "tmp"
    tmp.mkdir()
    iso.env["TMPDIR"] = str(tmp)
    return iso


def script(iso: Isolated, name: str, text: str) -> str:
    path = iso.work / f"{name}.py"
    path.write_text(text)
    return str(path)


def table_rows(stderr: str) -> dict[int, str]:
    """The report table's rows by pid."""
    rows = {}
    for line in stderr.splitlines():
        match = re.match(r"tcap: (\d+)\s", line)
        if match:
            rows[int(match.group(1))] = line
    return rows


def verdict(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("tcap: verdict: ")]
    assert len(lines) == 1, stderr
    return lines[0]


def assert_no_report_dir_left(iso: Isolated) -> None:
    assert list((iso.root / "tmp").iterdir()) == []


def test_report_shows_the_violation_in_warn_mode(sv: Isolated) -> None:
    result = sv.run("run", "--threads", "1", "--report", "--", PYTHON, script(sv, "violate", VIOLATE))
    assert result.returncode == 0, result.stderr
    pid = int(result.stdout.split()[0])
    rows = table_rows(result.stderr)
    assert list(rows) == [pid], result.stderr
    assert "openblas 8/1" in rows[pid] and rows[pid].endswith("VIOLATION"), rows[pid]
    assert verdict(result.stderr) == (
        f"tcap: verdict: 1 process, 1 verified, 0 unverified, 1 violation (openblas 8 > 1 in pid {pid})"
    )
    assert f"tcap: warning: pid {pid} " in result.stderr  # the probe's own warning too
    assert_no_report_dir_left(sv)


def test_strict_turns_a_violation_into_86(sv: Isolated) -> None:
    result = sv.run("run", "--threads", "1", "--verify", "strict", "--", PYTHON, script(sv, "violate", VIOLATE))
    assert result.returncode == EXIT_VIOLATION == 86, result.stderr
    pid = int(result.stdout.split()[0])
    line = verdict(result.stderr)
    assert f"openblas 8 > 1 in pid {pid}" in line and "exit 86" in line
    assert table_rows(result.stderr) == {}  # no table without --report
    assert_no_report_dir_left(sv)


def test_strict_passes_the_childs_own_failure_through(sv: Isolated) -> None:
    result = sv.run("run", "--threads", "1", "--verify", "strict", "--", PYTHON, script(sv, "violate", VIOLATE), "3")
    assert result.returncode == 3, result.stderr


def test_strict_without_violation_is_silent_and_0(sv: Isolated) -> None:
    result = sv.run("run", "--threads", "1", "--verify", "strict", "--", PYTHON, script(sv, "clean", CLEAN))
    assert (result.returncode, result.stderr) == (0, "")
    assert_no_report_dir_left(sv)


def test_enforce_with_report_exits_with_the_childs_code(sv: Isolated) -> None:
    result = sv.run(
        "run", "--threads", "1", "--verify", "enforce", "--report", "--", PYTHON, script(sv, "violate", VIOLATE)
    )
    assert result.returncode == 0, result.stderr
    assert "1 violation (openblas 8 > 1" in verdict(result.stderr)


def test_clean_program_is_within_caps(sv: Isolated) -> None:
    result = sv.run("run", "--threads", "1", "--report", "--", PYTHON, script(sv, "clean", CLEAN))
    assert result.returncode == 0, result.stderr
    pid = int(result.stdout.split()[0])
    rows = table_rows(result.stderr)
    assert "openblas 1/1" in rows[pid] and rows[pid].endswith(" ok"), rows[pid]
    assert verdict(result.stderr).startswith("tcap: verdict: all pools within caps (1 process, 1 verified")
    assert "warning" not in result.stderr


def test_violation_in_a_spawn_pool_worker_is_attributed_to_the_worker(sv: Isolated) -> None:
    result = sv.run("run", "--threads", "1", "--report", "--", PYTHON, script(sv, "pool", POOL), timeout=180)
    assert result.returncode == 0, result.stderr
    main, worker = (int(word) for word in result.stdout.split())
    rows = table_rows(result.stderr)
    assert main in rows and worker in rows, result.stderr
    assert list(rows)[0] == main  # the child first
    assert rows[worker].endswith("VIOLATION") and "openblas 8/1" in rows[worker]
    assert rows[main].endswith(" ok"), rows[main]
    assert f"(openblas 8 > 1 in pid {worker})" in verdict(result.stderr)


def test_isolated_grandchild_is_listed_as_unverified(sv: Isolated) -> None:
    result = sv.run("run", "--threads", "1", "--report", "--", PYTHON, script(sv, "grand", GRANDCHILD))
    assert result.returncode == 0, result.stderr
    main, grandchild = (int(word) for word in result.stdout.split())
    rows = table_rows(result.stderr)
    assert rows[main].endswith(" ok"), result.stderr
    assert rows[grandchild].endswith("unverified") and "-I -c" in rows[grandchild], rows[grandchild]
    assert re.search(r"\(no probe\)\s+-\s+\d+\s", rows[grandchild]), rows[grandchild]  # no share; its OS threads
    assert verdict(result.stderr) == (
        "tcap: verdict: all pools within caps (2 processes, 1 verified, 1 unverified)"
    )


def test_report_json_has_the_same_processes(sv: Isolated) -> None:
    out = sv.root / "report.json"
    result = sv.run(
        "run", "--threads", "1", "--report", "--report-json", str(out), "--", PYTHON, script(sv, "grand", GRANDCHILD)
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert [p["pid"] for p in data["processes"]] == list(table_rows(result.stderr))
    assert {p["status"] for p in data["processes"]} == {"ok", "unverified"}
    assert verdict(result.stderr) == f"tcap: verdict: {data['verdict']}"
    assert data["totals"]["processes"] == 2 and data["totals"]["unverified"] == 1
    assert data["totals"]["peak_os_threads"] >= 2
    assert data["exit_code"] == 0


def test_report_json_alone_writes_the_file_and_prints_no_table(sv: Isolated) -> None:
    out = sv.root / "report.json"
    result = sv.run("run", "--threads", "1", f"--report-json={out}", "--", PYTHON, script(sv, "violate", VIOLATE))
    assert result.returncode == 0, result.stderr
    pid = int(result.stdout.split()[0])
    assert table_rows(result.stderr) == {} and "verdict" not in result.stderr
    data = json.loads(out.read_text())
    assert data["violations"][0]["pid"] == pid
    assert data["processes"][0]["violations"][0]["threads"] == 8


def test_sigterm_to_tcap_is_forwarded(sv: Isolated) -> None:
    process = sv.popen(
        "run", "--report", "--", PYTHON, "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(60)",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        child = int(process.stdout.readline())
        assert child != process.pid  # supervised: a child, not exec
        started = time.monotonic()
        process.terminate()
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 128 + signal.SIGTERM == 143, err
    assert time.monotonic() - started < 10
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
    assert child in table_rows(err)
    assert_no_report_dir_left(sv)


def test_sigusr1_is_forwarded_to_the_program(sv: Isolated) -> None:
    code = (
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGUSR1, lambda *a: sys.exit(5))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    process = sv.popen("run", "--verify", "strict", "--", PYTHON, "-c", code, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "ready\n"
        process.send_signal(signal.SIGUSR1)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 5


@pytest.mark.parametrize("code", [0, 1, 7, 255])
def test_exit_code_passes_through(sv: Isolated, code: int) -> None:
    result = sv.run("run", "--report", "--", "sh", "-c", f"sleep 0.8; exit {code}")
    assert result.returncode == code, result.stderr
    rows = list(table_rows(result.stderr).values())
    assert "sh -c sleep 0.8" in rows[0], result.stderr  # the child first
    assert any(" sleep 0.8 " in row for row in rows[1:]), result.stderr  # its child, seen by the sampler
    assert all(row.endswith("unverified") for row in rows), result.stderr
    assert "tcap: verdict: nothing verified (2 processes, 0 verified, 2 unverified" in result.stderr


def test_child_killed_by_a_signal_is_128_plus_n(sv: Isolated) -> None:
    result = sv.run("run", "--report", "--", "sh", "-c", "kill -KILL $$")
    assert result.returncode == 128 + signal.SIGKILL


@pytest.mark.parametrize("args", [["--report"], ["--verify", "strict"]], ids=["report", "strict"])
def test_command_not_found_is_127_and_nothing_starts(sv: Isolated, args: list[str]) -> None:
    result = sv.run("run", *args, "--", "tcap-no-such-command-xyz", "arg")
    line = sv.error_line(result, 127)
    assert "command not found: tcap-no-such-command-xyz" in line
    assert_no_report_dir_left(sv)


def test_file_without_x_bit_is_126(sv: Isolated) -> None:
    path = sv.work / "not-executable.sh"
    path.write_text("#!/bin/sh\necho hi\n")
    path.chmod(0o644)
    result = sv.run("run", "--report", "--", str(path))
    assert "permission denied" in sv.error_line(result, 126)
    assert_no_report_dir_left(sv)


def test_file_without_shebang_is_126(sv: Isolated) -> None:
    path = sv.work / "no-shebang"
    path.write_bytes(b"\x00\x01\x02 not a program\n")
    path.chmod(0o755)
    result = sv.run("run", "--report", "--", str(path))
    assert "exec format error" in sv.error_line(result, 126)
    assert_no_report_dir_left(sv)


def test_report_dir_is_private_and_removed(sv: Isolated) -> None:
    code = "import os, stat; d = os.environ['TCAP_REPORT_DIR']; print(d, oct(stat.S_IMODE(os.lstat(d).st_mode)))"
    result = sv.run("run", "--report", "--", PYTHON, "-c", code)
    assert result.returncode == 0, result.stderr
    directory, mode = result.stdout.split()
    assert Path(directory).parent == sv.root / "tmp" and mode == "0o700"
    assert not Path(directory).exists()


def test_pin_applies_to_the_supervised_child(sv: Isolated) -> None:
    first = sorted(os.sched_getaffinity(0))[0]
    code = "import os; print(sorted(os.sched_getaffinity(0)))"
    result = sv.run("run", "--cpus", "first:1", "--report", "--", PYTHON, "-c", code)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [first]


def test_plain_run_still_execs(sv: Isolated) -> None:
    result = sv.run("run", "--", PYTHON, "-c", "import os; print('TCAP_REPORT_DIR' in os.environ)")
    assert (result.returncode, result.stdout, result.stderr) == (0, "False\n", "")


def test_report_flag_takes_no_value(sv: Isolated) -> None:
    result = sv.run("run", "--report=yes", "--", "true")
    assert "--report takes no value" in sv.error_line(result, 2)


def test_report_merges_launches_of_several_nodes(sv: Isolated) -> None:
    """Two real launches' reports; the second one's host rewritten to stand
    for another node (a machine this test does not have, as data)."""
    for name in ("a", "b"):
        out = sv.run("run", "--report-json", f"{name}.json", "--", PYTHON, "-c", "import numpy, time; time.sleep(0.6)",
                     cwd=sv.work)
        assert out.returncode == 0, out.stderr
    other = json.loads((sv.work / "b.json").read_text())
    other["launch"]["host"] = "node02"
    (sv.work / "b.json").write_text(json.dumps(other))
    merged = sv.run("report", "--json", "m.json", "a.json", "b.json", cwd=sv.work)
    assert merged.returncode == 0 and merged.stderr == "", merged.stderr
    assert len(re.findall(r"^node \S+: 1 launch, 1 process$", merged.stdout, re.M)) == 2, merged.stdout
    assert re.search(r"^verdict: 2 reports from 2 nodes: all pools within caps \(2 processes", merged.stdout, re.M)
    assert json.loads((sv.work / "a.json").read_text())["launch"]["budget_samples"]["encoding"] == SAMPLES_ENCODING
    data = json.loads((sv.work / "m.json").read_text())
    assert sorted(node["host"] for node in data["nodes"])[0] == "node02"
    assert all(node["budget"]["cpus"] for node in data["nodes"])


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot read report"),
    ("{not json", "not a tcap report (JSON"),
    ('{"processes": 3}', "not a tcap report (written by tcap run --report-json)"),
    ('{"processes": [], "verdict": "v", "launch": {"host": "h", "rank": null, "node_cpus": 2, "budget_samples": '
     '[[1.5, 2, "many"]]}}', "launch.budget_samples[0][2]: expected an integer"),
    ('{"processes": [], "verdict": "v", "launch": {"host": "h", "rank": null, "node_cpus": 2, "budget_samples": '
     '{"encoding": "base64 of zlib of little-endian integers: int64 time_ms of each sample; int32 changes, threads '
     'and processes where they change", "time_ms": "eJw=", "changes": "", "threads": "", "processes": ""}}}',
     "launch.budget_samples.time_ms: not base64 of zlib data (cut short)"),
])
def test_report_of_a_bad_file_is_one_line_and_exit_2(sv: Isolated, content: str | None, message: str) -> None:
    path = sv.work / "bad.json"
    if content is not None:
        path.write_text(content)
    out = sv.run("report", str(path))
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and str(path) in out.stderr and message in out.stderr, out.stderr


def test_report_json_placeholders_outside_a_launcher(sv: Isolated) -> None:
    out = sv.run("run", "--report-json", "r-{rank}-{host}-{pid}.json", "--", PYTHON, "-c", "pass", cwd=sv.work)
    assert out.returncode == 0, out.stderr
    [path] = list(sv.work.glob("r-*.json"))
    assert re.fullmatch(r"r-0-[^-{}]+-\d+\.json", path.name), path.name

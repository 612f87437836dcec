"""Process facts through both backends, on the same live process trees:
/proc (Linux, tcap's default here) and psutil (where /proc is not). They
must agree on pids, parents, thread counts and CPU times; and the report
and sweep suites pass again with the psutil backend selected."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tcap.procfacts import ProcBackend, PsutilBackend, busy_share

pytest.importorskip("psutil")

#: A shell with three sleeps and a Python with four threads, two of them spinning.
TREE = """
sleep 30 & sleep 30 & sleep 30 &
python_bin="$1"
"$python_bin" -c '
import threading, time
def spin():
    end = time.time() + 30
    while time.time() < end:
        pass
for target in (spin, spin, lambda: time.sleep(30), lambda: time.sleep(30)):
    threading.Thread(target=target, daemon=True).start()
time.sleep(30)
' &
wait
"""


@pytest.fixture
def tree() -> subprocess.Popen[bytes]:
    root = subprocess.Popen(["sh", "-c", TREE, "sh", sys.executable])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(ProcBackend().tree(root.pid)) < 5:
        time.sleep(0.05)
    time.sleep(0.5)  # the Python has started its threads
    try:
        yield root
    finally:
        for pid in ProcBackend().tree(root.pid):
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        root.wait()


def test_both_backends_agree_on_the_same_tree(tree: subprocess.Popen[bytes]):
    proc, ps = ProcBackend(), PsutilBackend()
    a = proc.tree(tree.pid)
    b = ps.tree(tree.pid)
    assert len(a) == 5 and set(a) == set(b), (a, b)
    for pid in a:
        assert a[pid][0] == b[pid][0], "parents differ"
        assert a[pid][1] == b[pid][1], "thread counts differ"
        assert abs(a[pid][2] - b[pid][2]) < 0.1, f"CPU seconds differ: {a[pid][2]} vs {b[pid][2]}"
        assert a[pid][3] == b[pid][3], "names differ"
        assert proc.cmdline(pid) == ps.cmdline(pid)
    threads = sorted(t for _, t, _, _ in a.values())
    assert threads == [1, 1, 1, 1, 5]  # sh, 3 sleeps, python with 4 threads of its own
    spinner = max(a, key=lambda pid: a[pid][1])
    assert a[spinner][2] > 0.3  # two spinning threads for half a second


def test_start_times_and_memory(tree: subprocess.Popen[bytes]):
    for facts in (ProcBackend(), PsutilBackend()):
        start = facts.start_time(tree.pid)
        assert start is not None and facts.start_time(tree.pid) == start
        assert facts.memory(tree.pid)[0] > 0
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert ProcBackend().start_time(gone.pid) is None and PsutilBackend().start_time(gone.pid) is None


def test_zombies_count_as_gone():
    zombie = subprocess.Popen(["true"])
    time.sleep(0.3)  # exited, not yet collected
    try:
        assert ProcBackend().start_time(zombie.pid) is None
        assert PsutilBackend().start_time(zombie.pid) is None
    finally:
        zombie.wait()


def test_cpu_busy_shares_from_both_backends():
    cpus = sorted(os.sched_getaffinity(0))
    for facts in (ProcBackend(), PsutilBackend()):
        before = facts.cpu_times()
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            pass
        shares = busy_share(cpus, before, facts.cpu_times())
        assert set(shares) == set(cpus) and all(0.0 <= v <= 1.0 for v in shares.values())
        assert max(shares.values()) > 0.3, shares


def test_report_and_sweep_pass_with_the_psutil_backend():
    """The whole report and sweep suites again, with psutil selected."""
    here = Path(__file__).parent
    env = dict(os.environ, TCAP_PROCESS_FACTS="psutil")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", str(here / "test_supervise.py"),
         str(here / "test_sweep.py"), str(here / "test_launch_view.py")],
        env=env, capture_output=True, text=True, timeout=900, cwd=here.parent,
    )
    summary = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 0 and " passed" in summary and "failed" not in summary, result.stdout[-3000:]

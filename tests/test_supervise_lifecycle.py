"""A supervised run's child and tcap live and die together, and each signal
reaches the child once.

Real processes and real signals: GNU ``timeout``, a group kill, a kill of
tcap alone, Ctrl-C typed into a real pseudo-terminal, and SIGKILL of tcap
(``--report``, ``--report-json``, ``verify = strict``, with ``--cpus
auto:1``). The counting program prints its pid and process group, waits
for its first signal, gives a second one a second to arrive, and prints how
many it saw.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import shutil
import signal
import subprocess
import termios
import time
from pathlib import Path

import pytest

from conftest import PYTHON, TCAP, Isolated
from tcap import supervise

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux /proc")

COUNT = """
import os, signal, sys, time
seen = []
def handler(number, frame):
    seen.append(number)
for name in sys.argv[1:]:
    signal.signal(getattr(signal, name), handler)
print(os.getpid(), os.getpgrp(), flush=True)
deadline = time.monotonic() + 30
while time.monotonic() < deadline and not seen:
    time.sleep(0.01)
time.sleep(1.0)  # a second delivery would land here
print(len(seen), flush=True)
sys.exit(3)
"""

#: Any one step may take this long on a loaded machine before the test fails.
TIMEOUT = 60


@pytest.fixture
def sv(iso: Isolated) -> Isolated:
    """``iso`` with a private TMPDIR (tcap's report directories) and bookings directory."""
    tmp = iso.root / "tmp"
    tmp.mkdir()
    iso.env["TMPDIR"] = str(tmp)
    iso.env["TCAP_BOOKINGS_DIR"] = str(iso.root / "bookings")
    return iso


def counting(iso: Isolated, *signals: str) -> list[str]:
    path = iso.work / "count.py"
    path.write_text(COUNT)
    return [PYTHON, str(path), *signals]


def first_line(process: subprocess.Popen) -> tuple[int, int]:  # type: ignore[type-arg]
    """The child's pid and process group, from its first line."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], TIMEOUT)
    assert ready, "the child did not start"
    line = process.stdout.readline()
    assert line, process.communicate(timeout=TIMEOUT)
    pid, group = line.split()
    return int(pid), int(group)


def gone(pid: int) -> bool:
    """Dead: no /proc entry, or a zombie nobody has collected yet."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def wait_gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.02)
    return False


# --- signals ----------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs GNU timeout")
def test_gnu_timeout_sigint_reaches_the_child_once(sv: Isolated) -> None:
    """timeout sends SIGINT to tcap and to its own process group (tcap's):
    the child, in a group of its own, gets it once, from tcap."""
    process = subprocess.Popen(["timeout", "-s", "INT", "--preserve-status", "1", str(TCAP), "run", "--report",
                                "--", *counting(sv, "SIGINT")], env=sv.env, cwd=sv.work, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    pid, group = first_line(process)
    out, err = process.communicate(timeout=TIMEOUT)
    assert out == "1\n", (out, err)
    assert process.returncode == 3, err  # the child's own exit code, through tcap and timeout
    assert group == pid != process.pid  # its own group, not timeout's
    assert "tcap: verdict:" in err


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs GNU timeout")
def test_gnu_timeout_sigint_gives_one_clean_keyboard_interrupt(sv: Isolated) -> None:
    program = "import time\nprint('ready', flush=True)\ntime.sleep(30)\n"
    result = subprocess.run(["timeout", "-s", "INT", "--preserve-status", "1", str(TCAP), "run", "--report", "--",
                             PYTHON, "-c", program], env=sv.env, cwd=sv.work, capture_output=True, text=True,
                            timeout=TIMEOUT, start_new_session=True)
    assert result.returncode == 128 + signal.SIGINT, result.stderr
    assert result.stdout == "ready\n"
    assert result.stderr.count("Traceback (most recent call last)") == 1, result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("KeyboardInterrupt")] == \
        ["KeyboardInterrupt"], result.stderr


@pytest.mark.parametrize("flags", [["--report"], ["--verify", "strict"]], ids=["report", "strict"])
def test_sigterm_to_tcaps_whole_group_reaches_the_child_once(sv: Isolated, flags: list[str]) -> None:
    """``kill -TERM -- -PGID`` of a job started without a terminal."""
    process = subprocess.Popen([str(TCAP), "run", *flags, "--", *counting(sv, "SIGTERM")], env=sv.env, cwd=sv.work,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    pid, group = first_line(process)
    assert group == pid and os.getpgid(process.pid) == process.pid
    os.killpg(process.pid, signal.SIGTERM)
    out, err = process.communicate(timeout=TIMEOUT)
    assert (out, process.returncode) == ("1\n", 3), (out, process.returncode, err)


def test_sigterm_to_tcap_alone_reaches_the_child_once(sv: Isolated) -> None:
    process = subprocess.Popen([str(TCAP), "run", "--report", "--", *counting(sv, "SIGTERM")], env=sv.env,
                               cwd=sv.work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    first_line(process)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=TIMEOUT)
    assert (out, process.returncode) == ("1\n", 3), (out, process.returncode, err)


def test_two_different_signals_both_reach_the_child(sv: Isolated) -> None:
    """Only a repeat of the same signal is merged, not a different one."""
    process = subprocess.Popen([str(TCAP), "run", "--report", "--", *counting(sv, "SIGUSR1", "SIGUSR2")],
                               env=sv.env, cwd=sv.work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    first_line(process)
    os.killpg(process.pid, signal.SIGUSR1)
    os.killpg(process.pid, signal.SIGUSR2)
    out, err = process.communicate(timeout=TIMEOUT)
    assert (out, process.returncode) == ("2\n", 3), (out, process.returncode, err)


def _controlling_terminal() -> None:
    """In the child: the pty on stdin becomes the controlling terminal of
    the new session, whose (only) group is its foreground."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_in_a_terminals_foreground_ctrl_c_reaches_the_child_once(sv: Isolated) -> None:
    """Typed Ctrl-C: the kernel sends SIGINT to the whole foreground group,
    tcap and the child (which stays in tcap's group, to read the terminal);
    tcap does not send it again."""
    master, slave = pty.openpty()
    try:
        process = subprocess.Popen([str(TCAP), "run", "--report", "--", *counting(sv, "SIGINT")], env=sv.env,
                                   cwd=sv.work, stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, start_new_session=True, preexec_fn=_controlling_terminal)
        os.close(slave)
        slave = -1
        pid, group = first_line(process)
        assert group == process.pid != pid  # in tcap's group, the terminal's foreground
        os.write(master, b"\x03")
        out, err = process.communicate(timeout=TIMEOUT)
        assert (out, process.returncode) == ("1\n", 3), (out, process.returncode, err)
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)


# --- SIGKILL of tcap ----------------------------------------------------------------


def report_dirs(iso: Isolated) -> list[str]:
    return sorted(name for name in os.listdir(iso.root / "tmp") if name.startswith("tcap-report-"))


@pytest.mark.parametrize("flags", [["--report"], ["--report-json", "{pid}.json"], ["--verify", "strict"]],
                         ids=["report", "report-json", "strict"])
def test_sigkill_of_a_supervised_tcap_takes_its_child_and_leaves_nothing(sv: Isolated, flags: list[str]) -> None:
    (sv.site / "policy.toml").write_text('on_full = "error"\n')
    process = subprocess.Popen([str(TCAP), "run", "--cpus", "auto:1", *flags, "--", *counting(sv)], env=sv.env,
                               cwd=sv.work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        child, _ = first_line(process)
        # While it runs, the booking names tcap and the child.
        listed = json.loads(sv.run("bookings", "--json").stdout)["bookings"]
        assert [item["pids"] for item in listed] == [[process.pid, child]]
        (mine,) = report_dirs(sv)
        assert mine.startswith(f"tcap-report-{process.pid}-")
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=TIMEOUT) == -signal.SIGKILL
        assert wait_gone(child), "the child kept running after tcap was killed"
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
        if not gone(child):
            os.kill(child, signal.SIGKILL)
    # Nothing is booked any more: both CPUs are free for an on_full = "error" launch.
    assert json.loads(sv.run("bookings", "--json").stdout)["bookings"] == []
    assert report_dirs(sv) == [mine]  # nobody could remove it yet
    result = sv.run("run", "--report", "--", "true")
    assert result.returncode == 0, result.stderr
    assert report_dirs(sv) == []  # the next supervised launch of this user swept it


def test_the_sweep_spares_live_runs_and_other_users(sv: Isolated) -> None:
    tmp = sv.root / "tmp"
    me = os.getpid()
    start = supervise._start_time(me)  # as supervised tcaps name their directories (/proc wherever there is one)
    assert start is not None
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = tmp / f"tcap-report-{me}-{start}-abc123"  # this test's own process: running
    stale = tmp / f"tcap-report-{dead.pid}-1-abc123"
    not_ours = tmp / f"tcap-report-{dead.pid}-2-abc123"
    lookalike = tmp / "tcap-report-elsewhere"
    planted = tmp / f"tcap-report-{dead.pid}-3-abc123"
    victim = sv.root / "victim"
    victim.mkdir()
    (victim / "keep").write_text("keep")
    for path in (live, stale, not_ours, lookalike):
        path.mkdir()
        (path / "1.json").write_text("{}")
    planted.symlink_to(victim)
    if os.geteuid() == 0:
        os.chown(not_ours, 65534, 65534)
    result = sv.run("run", "--report", "--", "true")
    assert result.returncode == 0, result.stderr
    assert not stale.exists()
    assert live.exists() and lookalike.exists() and planted.is_symlink() and (victim / "keep").exists()
    assert not_ours.exists() == (os.geteuid() == 0)


def test_a_supervised_run_books_for_its_child_too(sv: Isolated) -> None:
    """The booking lasts while the child runs, not only while tcap does."""
    bookings = Path(sv.env["TCAP_BOOKINGS_DIR"])
    process = subprocess.Popen([str(TCAP), "run", "--cpus", "auto:1", "--report", "--", *counting(sv)], env=sv.env,
                               cwd=sv.work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        child, _ = first_line(process)
        (name,) = [name for name in os.listdir(bookings) if not name.startswith(".")]
        assert name.startswith(f"{os.getuid()}-{process.pid}-")
        content = json.loads((bookings / name).read_text())
        assert [pid for pid, _start in content["pids"]] == [child]
    finally:
        process.kill()
        process.communicate()
        wait_gone(child)

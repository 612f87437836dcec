"""Cooperative CPU placement (``cpus = "auto:N"``) with real launches and bookings.

Every launch is the installed ``tcap`` in an isolated environment (see
conftest.py) booking CPUs in a directory of the test (``TCAP_BOOKINGS_DIR``).
The launches run on two CPUs of this machine (their affinity is narrowed
before tcap starts when there are more), so "every CPU is held" takes two
holders. A holder is ``tcap run --cpus auto:1 -- python HOLD``: it prints its
pid and affinity as one JSON line, then blocks reading stdin until the test
closes it, so every wait here is a pipe handshake, not a sleep.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import PYTHON, TCAP, Isolated
from tcap.cpuset import format_cpu_list, parse_cpu_list
from tcap.placement import choose

AFFINITY = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
pytestmark = pytest.mark.skipif(len(AFFINITY) < 2, reason="needs Linux CPU affinity and at least 2 usable CPUs")
#: The two CPUs every launch here may use.
PAIR = AFFINITY[:2]
PAIR_TEXT = format_cpu_list(PAIR)

HOLD = (
    "import json, os, sys\n"
    "print(json.dumps({'pid': os.getpid(), 'cpus': sorted(os.sched_getaffinity(0))}), flush=True)\n"
    "sys.stdin.read()\n"
)

#: How long any one handshake may take before the test fails (a loaded CI machine).
TIMEOUT = 60.0


def _on_pair() -> None:
    os.sched_setaffinity(0, PAIR)


def tcap_popen(iso: Isolated, *args: str, **kwargs: object) -> subprocess.Popen:  # type: ignore[type-arg]
    """``tcap ARGS`` started on the two CPUs of PAIR."""
    if len(AFFINITY) > 2:
        kwargs["preexec_fn"] = _on_pair
    return subprocess.Popen([str(TCAP), *args], env=dict(iso.env), cwd=str(iso.work), **kwargs)  # type: ignore[call-overload]


def tcap_run(iso: Isolated, *args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    process = tcap_popen(iso, *args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def read_line(stream, timeout: float = TIMEOUT) -> str:  # type: ignore[no-untyped-def]
    """The next line of a child's pipe ("" at EOF); fail after ``timeout``."""
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, f"no line within {timeout} s"
    return stream.readline()  # type: ignore[no-any-return]


class Holder:
    """A ``tcap run [ARGS] -- python HOLD`` that keeps its booking until released."""

    def __init__(self, iso: Isolated, *tcap_args: str) -> None:
        self.process = tcap_popen(
            iso, "run", *tcap_args, "--", PYTHON, "-c", HOLD,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.pid = self.process.pid
        self.cpus: list[int] | None = None
        self.stderr = ""

    def started(self) -> list[int]:
        """Wait until the held command runs; its CPUs."""
        line = read_line(self.process.stdout)
        if not line:
            self.process.wait(timeout=TIMEOUT)
            raise AssertionError(f"tcap exited {self.process.returncode}: {self.process.stderr.read()}")
        report = json.loads(line)
        assert report["pid"] == self.pid, "tcap must exec the command: the booking is the command's pid"
        self.cpus = report["cpus"]
        return report["cpus"]  # type: ignore[no-any-return]

    def release(self) -> int:
        """Let the command end; its exit code (stderr kept in ``self.stderr``)."""
        if self.process.stdin and not self.process.stdin.closed:
            self.process.stdin.close()
        self.stderr = self.process.stderr.read()
        return self.process.wait(timeout=TIMEOUT)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def bookings_dir(iso: Isolated) -> Path:
    """This test's bookings directory (not created: tcap makes it)."""
    path = iso.root / "bookings"
    iso.env["TCAP_BOOKINGS_DIR"] = str(path)
    return path


@pytest.fixture
def hold(iso: Isolated, bookings_dir: Path) -> Iterator[Callable[..., Holder]]:
    """Start holders; every one still running at the end is killed."""
    started: list[Holder] = []

    def start(*tcap_args: str) -> Holder:
        holder = Holder(iso, *(tcap_args or ("--cpus", "auto:1")))
        started.append(holder)
        return holder

    yield start
    for holder in started:
        holder.stop()


def write_policy(iso: Isolated, text: str) -> Path:
    path = iso.site / "policy.toml"
    path.write_text(text)
    return path


def live_bookings(iso: Isolated) -> list[dict]:
    result = iso.run("bookings", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["directory"] == iso.env["TCAP_BOOKINGS_DIR"]
    return data["bookings"]  # type: ignore[no-any-return]


def booked(iso: Isolated) -> dict[int, list[int]]:
    """pid -> CPUs of every live booking, as ``tcap bookings --json`` says."""
    return {item["pid"]: item["cpus"] for item in live_bookings(iso)}


def start_time(pid: int) -> int:
    """As tcap's process facts tell it (/proc, or psutil under TCAP_PROCESS_FACTS=psutil)."""
    from tcap.placement import start_time as facts_start_time

    found = facts_start_time(pid)
    assert found is not None, pid
    return found


def booking_files(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if not name.startswith("."))


def booking_name(pid: int, start: int | None = None, uid: int | None = None, token: str = "0123456789abcdef") -> str:
    """A booking's file name: ``<uid>-<pid>-<start time>-<16 hex digits>``."""
    return f"{os.getuid() if uid is None else uid}-{pid}-{start_time(pid) if start is None else start}-{token}"


def booking_of(directory: Path, pid: int) -> str:
    """The one booking file of ``pid`` (its random part unknown to the test)."""
    prefix = f"{os.getuid()}-{pid}-{start_time(pid)}-"
    (name,) = [name for name in booking_files(directory) if name.startswith(prefix)]
    assert re.fullmatch(r"[0-9a-f]{16}", name[len(prefix):]), name
    return name


def sharing_notice(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("tcap: notice: ") and "sharing CPU" in line]


# --- booking free CPUs ---------------------------------------------------------------


def test_two_concurrent_launches_get_different_cpus(iso: Isolated, hold: Callable[..., Holder],
                                                    bookings_dir: Path) -> None:
    first, second = hold(), hold()  # both started before either is waited for
    cpus = [first.started(), second.started()]
    assert sorted(c for pair in cpus for c in pair) == PAIR
    assert all(len(c) == 1 for c in cpus)

    assert booked(iso) == {first.pid: first.cpus, second.pid: second.cpus}
    assert {item["uid"] for item in live_bookings(iso)} == {os.getuid()}
    # One file per booking, named <uid>-<pid>-<start time>-<random>, holding the CPUs, readable by all.
    names = sorted(booking_of(bookings_dir, h.pid) for h in (first, second))
    assert booking_files(bookings_dir) == names
    for holder in (first, second):
        path = bookings_dir / booking_of(bookings_dir, holder.pid)
        assert json.loads(path.read_text())["cpus"] == holder.cpus
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [name for name in os.listdir(bookings_dir) if name.startswith(".")] == []  # no temporary file left
    text = iso.run("bookings")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].split() == ["PID", "USER", "CPUS"]
    assert sorted(int(line.split()[0]) for line in lines[1:]) == sorted([first.pid, second.pid])

    assert first.release() == 0 and second.release() == 0
    assert first.stderr == "" and second.stderr == ""  # free CPUs: nothing to say
    assert booked(iso) == {}
    assert iso.run("bookings").stdout == f"no live CPU bookings in {bookings_dir}\n"


def test_auto_takes_every_free_cpu_it_asks_for(iso: Isolated, hold: Callable[..., Holder]) -> None:
    both = hold("--cpus", "auto:2")
    assert both.started() == PAIR
    assert booked(iso) == {both.pid: PAIR}


def test_a_profile_asks_for_auto_placement(iso: Isolated, hold: Callable[..., Holder]) -> None:
    iso.write_profile("placed", 'cpus = "auto:1"\nthreads = "cpus"\n')
    holder = hold("-p", "placed")
    assert len(holder.started()) == 1
    assert booked(iso) == {holder.pid: holder.cpus}


def test_auto_larger_than_the_usable_set_is_a_usage_error(iso: Isolated, bookings_dir: Path) -> None:
    marker = iso.work / "marker"
    result = tcap_run(iso, "run", "--cpus", "auto:3", "--", "touch", str(marker))
    line = iso.error_line(result, 2)
    assert f"auto:3 asks for more than the 2 CPUs tcap may use ({PAIR_TEXT})" in line, line
    profile = iso.write_profile("greedy", '# too many\ncpus = "auto:3"\n')
    line = iso.error_line(tcap_run(iso, "run", "-p", "greedy", "--", "touch", str(marker)), 2)
    assert line.startswith(f"tcap: error: {profile}:2: cpus: auto:3 asks for more"), line
    assert not marker.exists()
    assert not bookings_dir.exists()  # nothing was booked


def test_a_sigkilled_holder_frees_its_cpu(iso: Isolated, hold: Callable[..., Holder], bookings_dir: Path) -> None:
    doomed, keeper = hold(), hold()
    doomed_cpus, keeper_cpus = doomed.started(), keeper.started()
    doomed_file = booking_of(bookings_dir, doomed.pid)
    doomed.process.send_signal(signal.SIGKILL)
    assert doomed.process.wait(timeout=TIMEOUT) == -signal.SIGKILL
    # Its file is still there (nobody ran to remove it), but it holds nothing.
    assert doomed_file in booking_files(bookings_dir)
    assert booked(iso) == {keeper.pid: keeper_cpus}

    # The other CPU is held by a live process: the new launch must get the freed one, unshared.
    newcomer = hold()
    assert newcomer.started() == doomed_cpus
    assert doomed_file not in booking_files(bookings_dir)  # this user's stale file, removed by the next launch
    assert booked(iso) == {keeper.pid: keeper_cpus, newcomer.pid: doomed_cpus}
    assert newcomer.release() == 0
    assert sharing_notice(newcomer.stderr) == [] and newcomer.stderr == ""


def test_a_killed_holder_not_yet_reaped_holds_nothing(iso: Isolated, hold: Callable[..., Holder]) -> None:
    """A zombie (dead, but its parent has not collected it) runs nowhere."""
    doomed, keeper = hold(), hold()
    doomed_cpus, keeper_cpus = doomed.started(), keeper.started()
    doomed.process.send_signal(signal.SIGKILL)
    # Wait until it is dead, leaving it unreaped (WNOWAIT): a zombie child of this test.
    os.waitid(os.P_PID, doomed.pid, os.WEXITED | os.WNOWAIT)
    with open(f"/proc/{doomed.pid}/stat") as f:
        assert f.read().rpartition(")")[2].split()[0] == "Z"
    assert booked(iso) == {keeper.pid: keeper_cpus}
    newcomer = hold()
    assert newcomer.started() == doomed_cpus
    assert newcomer.release() == 0 and newcomer.stderr == ""
    assert doomed.process.wait(timeout=TIMEOUT) == -signal.SIGKILL


def test_a_booking_whose_pid_was_reused_counts_as_dead(iso: Isolated, bookings_dir: Path) -> None:
    write_policy(iso, 'on_full = "error"\n')
    me = os.getpid()
    bookings_dir.mkdir(mode=0o1777)
    bookings_dir.chmod(0o1777)
    reused = bookings_dir / booking_name(me, start_time(me) + 1)  # a live pid, another process's start time
    reused.write_text(json.dumps({"cpus": PAIR}))
    assert booked(iso) == {}
    result = tcap_run(iso, "run", "--cpus", "auto:2", "--", "true")
    assert (result.returncode, result.stderr) == (0, "")
    assert not reused.exists()  # a stale file of this user, cleaned up under the lock

    # The same booking with the right start time holds both CPUs.
    (bookings_dir / booking_name(me)).write_text(json.dumps({"cpus": PAIR}))
    assert booked(iso) == {me: PAIR}
    marker = iso.work / "marker"
    assert "only 0 of the CPUs" in iso.error_line(tcap_run(iso, "run", "--cpus", "auto:1", "--", "touch",
                                                           str(marker)), 75)
    assert not marker.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a file owned by another user")
def test_stale_bookings_of_other_users_are_ignored_not_removed(iso: Isolated, bookings_dir: Path) -> None:
    bookings_dir.mkdir()
    bookings_dir.chmod(0o1777)
    dead = subprocess.Popen(["true"])
    dead.wait()
    theirs = bookings_dir / booking_name(dead.pid, 1, uid=65534)
    theirs.write_text(json.dumps({"cpus": PAIR}))
    os.chown(theirs, 65534, 65534)
    result = tcap_run(iso, "run", "--cpus", "auto:2", "--", "true")
    assert (result.returncode, result.stderr) == (0, "")
    assert theirs.exists()
    assert booked(iso) == {}


@pytest.mark.parametrize(
    "content",
    ["not json", '{"cpus": 0}', '{"cpu": [0]}', '["cpus"]', '{"cpus": [0, "x"]}', "", '{"cpus": [1e400]}',
     '{"cpus": [true]}', '{"cpus": [-1]}', '{"cpus": [8192]}', '{"cpus": [0.5]}', '{"cpus": [NaN]}',
     '{"cpus": []}', '{"cpus": [0], "pids": [[1]]}', '{"cpus": [0], "pids": 7}', "[" * 100_000, "[" * 60_000,
     '{"cpus": [' + "1" * 5000 + "]}"],
    ids=["garbage", "number", "no-cpus", "list", "bad-cpu", "empty", "1e400", "bool", "negative", "huge",
         "fraction", "nan", "no-cpu", "bad-pids", "pids-number", "deep-large", "deep", "digits"],
)
def test_malformed_booking_files_hold_nothing(iso: Isolated, bookings_dir: Path, content: str) -> None:
    write_policy(iso, 'on_full = "error"\n')
    bookings_dir.mkdir()
    bookings_dir.chmod(0o1777)
    me = os.getpid()
    (bookings_dir / booking_name(me)).write_text(content)
    assert booked(iso) == {}
    result = tcap_run(iso, "run", "--cpus", "auto:2", "--", "true")
    assert (result.returncode, result.stderr) == (0, "")
    assert (bookings_dir / booking_name(me)).read_text() == content  # a live process's: left alone


# --- a full machine: on_full ----------------------------------------------------------


def test_share_is_the_default_and_picks_the_least_booked_cpu(iso: Isolated, hold: Callable[..., Holder]) -> None:
    first, second = hold(), hold()
    first.started(), second.started()

    third = hold()
    (shared,) = third.started()  # started although every CPU is held
    fourth = hold()
    (other,) = fourth.started()
    # The third made one CPU booked twice: the fourth must take the other one.
    assert {shared, other} == set(PAIR)
    counts = {cpu: 0 for cpu in PAIR}
    for cpus in booked(iso).values():
        for cpu in cpus:
            counts[cpu] += 1
    assert counts == {cpu: 2 for cpu in PAIR}

    for holder, cpu in ((third, shared), (fourth, other)):
        assert holder.release() == 0
        assert holder.stderr.splitlines() == [
            f"tcap: notice: cpus auto:1: 0 free among {PAIR_TEXT}; sharing CPU {cpu} with other tcap launches"
        ]


def test_share_names_only_the_cpus_it_shares(iso: Isolated, hold: Callable[..., Holder]) -> None:
    first = hold()
    (taken,) = first.started()
    both = hold("--cpus", "auto:2")
    assert both.started() == PAIR
    assert booked(iso) == {first.pid: [taken], both.pid: PAIR}
    assert both.release() == 0
    assert both.stderr.splitlines() == [
        f"tcap: notice: cpus auto:2: 1 free among {PAIR_TEXT}; sharing CPU {taken} with other tcap launches"
    ]


def test_on_full_error_refuses_and_never_starts_the_command(iso: Isolated, hold: Callable[..., Holder],
                                                            bookings_dir: Path) -> None:
    write_policy(iso, 'on_full = "error"\n')
    first, second = hold(), hold()
    first.started(), second.started()
    marker = iso.work / "marker"
    result = tcap_run(iso, "run", "--cpus", "auto:1", "--", "touch", str(marker))
    line = iso.error_line(result, 75)
    assert line == f'tcap: error: cpus auto:1: only 0 of the CPUs {PAIR_TEXT} are free (policy on_full = "error")'
    assert not marker.exists()
    assert booked(iso) == {first.pid: first.cpus, second.pid: second.cpus}
    assert len(booking_files(bookings_dir)) == 2  # the refused launch left no booking behind
    # A free CPU is still booked as usual.
    assert first.release() == 0
    assert tcap_run(iso, "run", "--cpus", "auto:1", "--", "touch", str(marker)).returncode == 0
    assert marker.exists()


def test_on_full_wait_times_out(iso: Isolated, hold: Callable[..., Holder]) -> None:
    write_policy(iso, 'on_full = "wait"\nwait_timeout = 1\n')
    first, second = hold(), hold()
    first.started(), second.started()
    marker = iso.work / "marker"
    began = time.monotonic()
    result = tcap_run(iso, "run", "--cpus", "auto:1", "--", "touch", str(marker))
    elapsed = time.monotonic() - began
    assert result.returncode == 75, result.stderr
    assert result.stderr.splitlines() == [
        f"tcap: waiting for 1 free CPU among {PAIR_TEXT}...",
        f"tcap: error: cpus auto:1: only 0 of the CPUs {PAIR_TEXT} are free after waiting 1 s",
    ]
    assert 1.0 <= elapsed < 1.0 + 20, elapsed
    assert not marker.exists()


def test_on_full_wait_starts_once_a_cpu_is_free(iso: Isolated, hold: Callable[..., Holder]) -> None:
    write_policy(iso, 'on_full = "wait"\nwait_timeout = 60\n')
    first, second = hold(), hold()
    first.started(), second.started()
    waiter = hold()
    assert read_line(waiter.process.stderr) == f"tcap: waiting for 1 free CPU among {PAIR_TEXT}...\n"
    assert waiter.process.poll() is None
    assert first.release() == 0
    assert waiter.started() == first.cpus
    assert booked(iso) == {second.pid: second.cpus, waiter.pid: first.cpus}
    assert waiter.release() == 0
    assert waiter.stderr == ""  # the waiting line was read above; no sharing notice


def test_on_full_reaches_the_cached_recipe(iso: Isolated, hold: Callable[..., Holder]) -> None:
    first, second = hold(), hold()
    first.started(), second.started()
    marker = iso.work / "marker"
    assert tcap_run(iso, "run", "--cpus", "auto:1", "--", "true").returncode == 0  # share, and cached
    write_policy(iso, 'on_full = "error"\n')
    iso.error_line(tcap_run(iso, "run", "--cpus", "auto:1", "--", "touch", str(marker)), 75)
    write_policy(iso, 'on_full = "wait"\nwait_timeout = 0\n')
    result = tcap_run(iso, "run", "--cpus", "auto:1", "--", "touch", str(marker))
    assert result.returncode == 75 and "after waiting 0 s" in result.stderr, result.stderr
    (iso.site / "policy.toml").unlink()
    assert tcap_run(iso, "run", "--cpus", "auto:1", "--", "touch", str(marker)).returncode == 0
    assert marker.exists()


# --- many launches at once ------------------------------------------------------------

#: Each launched command: its pid and affinity on one line, then it keeps its
#: booking until stdin (shared by all) reaches end of file.
MANY_CHILD = 'echo "$$ $(grep Cpus_allowed_list /proc/$$/status | cut -f2)"; read -r _ || :'
MANY = 200


def test_many_concurrent_launches_balance_their_bookings(iso: Isolated, bookings_dir: Path) -> None:
    """200 launches at once, all alive until released.

    Every choice is made under the lock among the live bookings, and no
    holder ends before the release, so the k-th booking (in the order of
    the lock) sees exactly the k-1 before it. Choosing a least-booked CPU
    each time then means: at every prefix of that order the counts per CPU
    differ by at most 1, the launches beyond the free CPUs say they share,
    and in the end each CPU is booked MANY / 2 times.
    """
    release_read, release_write = os.pipe()
    report_read, report_write = os.pipe()
    errors = iso.root / "stderr"
    errors.mkdir()
    processes: dict[int, subprocess.Popen] = {}  # type: ignore[type-arg]
    reports: dict[int, list[int]] = {}
    index_of: dict[int, int] = {}
    try:
        for index in range(MANY):
            with open(errors / str(index), "w") as err:
                process = tcap_popen(iso, "run", "--cpus", "auto:1", "--", "sh", "-c", MANY_CHILD,
                                     stdin=release_read, stdout=report_write, stderr=err)
            processes[process.pid] = process
            index_of[process.pid] = index
        os.close(release_read)
        os.close(report_write)
        release_read = report_write = -1

        buffer = b""
        deadline = time.monotonic() + TIMEOUT
        while len(reports) < MANY:
            early = [p for p in processes.values() if p.poll() is not None]
            assert not early, [(p.pid, p.returncode, (errors / str(index_of[p.pid])).read_text()) for p in early]
            assert time.monotonic() < deadline, f"only {len(reports)} of {MANY} launches started"
            ready, _, _ = select.select([report_read], [], [], 0.5)
            if ready:
                chunk = os.read(report_read, 65536)
                assert chunk, "every launch closed its stdout before reporting"
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    pid, cpus = line.decode().split()
                    reports[int(pid)] = sorted(parse_cpu_list(cpus))

        # Every launch ran as the very process tcap booked for, on one CPU of the pair.
        assert set(reports) == set(processes)
        assert all(len(cpus) == 1 and cpus[0] in PAIR for cpus in reports.values())
        live = booked(iso)
        assert live == reports

        order = sorted(
            (json.loads((bookings_dir / booking_of(bookings_dir, pid)).read_text())["at"], pid) for pid in live
        )
        counts = dict.fromkeys(PAIR, 0)
        for position, (_at, pid) in enumerate(order):
            (cpu,) = live[pid]
            assert counts[cpu] == min(counts.values()), (position, counts, cpu)
            counts[cpu] += 1
            assert max(counts.values()) - min(counts.values()) <= 1
            stderr = (errors / str(index_of[pid])).read_text()
            if position < len(PAIR):
                assert stderr == "", (position, stderr)
            else:
                assert stderr == (f"tcap: notice: cpus auto:1: 0 free among {PAIR_TEXT}; sharing CPU {cpu} "
                                  "with other tcap launches\n"), (position, stderr)
        assert counts == dict.fromkeys(PAIR, MANY // 2)

        os.close(release_write)
        release_write = -1
        for process in processes.values():
            assert process.wait(timeout=TIMEOUT) == 0
    finally:
        for fd in (release_read, release_write, report_write):
            if fd >= 0:
                os.close(fd)
        os.close(report_read)
        for process in processes.values():
            if process.poll() is None:
                process.kill()
            process.wait()

    # All gone: nothing is booked, though their files remain until a launch cleans them.
    assert booked(iso) == {}
    assert len(booking_files(bookings_dir)) == MANY
    result = tcap_run(iso, "run", "--cpus", "auto:1", "--", "true")
    assert (result.returncode, result.stderr) == (0, "")
    assert len(booking_files(bookings_dir)) == 1  # only that last launch's own, now stale, file


#: A command that ends on its own: its pid, its affinity and its booking as it runs.
CHURN_CHILD = ('echo "$$ $(grep Cpus_allowed_list /proc/$$/status | cut -f2) '
               '$(cat "$TCAP_BOOKINGS_DIR/$(id -u)-$$-"*)"')


def test_many_launches_that_come_and_go_all_run_on_their_booking(iso: Isolated, bookings_dir: Path) -> None:
    """200 launches at once that end on their own: bookings come and go
    (and dead ones are cleaned up) while others choose. Each command runs on
    exactly the CPU its own live booking names, and nothing stays booked."""
    report_read, report_write = os.pipe()
    processes: list[subprocess.Popen] = []  # type: ignore[type-arg]
    try:
        for _ in range(MANY):
            processes.append(tcap_popen(iso, "run", "--cpus", "auto:1", "--", "sh", "-c", CHURN_CHILD,
                                        stdin=subprocess.DEVNULL, stdout=report_write, stderr=subprocess.PIPE))
        os.close(report_write)
        report_write = -1
        output = b""
        deadline = time.monotonic() + TIMEOUT
        while True:  # until every launch and command has closed the pipe
            assert time.monotonic() < deadline, "launches still running"
            ready, _, _ = select.select([report_read], [], [], 1.0)
            if ready:
                chunk = os.read(report_read, 65536)
                if not chunk:
                    break
                output += chunk
        for process in processes:
            _, err = process.communicate(timeout=TIMEOUT)
            assert process.returncode == 0, err
            assert err.decode() in ("", *(f"tcap: notice: cpus auto:1: 0 free among {PAIR_TEXT}; sharing CPU "
                                          f"{cpu} with other tcap launches\n" for cpu in PAIR)), err
    finally:
        if report_write >= 0:
            os.close(report_write)
        os.close(report_read)
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.communicate()

    seen = {}
    for line in output.decode().splitlines():
        pid, cpus, booking = line.split(" ", 2)
        seen[int(pid)] = (sorted(parse_cpu_list(cpus)), json.loads(booking)["cpus"])
    assert set(seen) == {p.pid for p in processes}
    for pid, (cpus, booking) in seen.items():
        assert len(cpus) == 1 and cpus[0] in PAIR, pid
        assert booking == cpus, pid
    assert booked(iso) == {}


# --- the bookings directory -----------------------------------------------------------


def test_the_directory_is_created_sticky_and_world_writable(iso: Isolated, bookings_dir: Path) -> None:
    old = os.umask(0o077)  # tcap must not depend on the caller's umask
    try:
        result = tcap_run(iso, "run", "--cpus", "auto:1", "--", "true")
    finally:
        os.umask(old)
    assert (result.returncode, result.stderr) == (0, "")
    info = os.lstat(bookings_dir)
    assert stat.S_ISDIR(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o1777


def test_listing_bookings_creates_nothing(iso: Isolated, bookings_dir: Path) -> None:
    result = iso.run("bookings")
    assert (result.returncode, result.stdout) == (0, f"no live CPU bookings in {bookings_dir}\n")
    assert live_bookings(iso) == []
    assert not bookings_dir.exists()


def test_a_symlinked_directory_is_refused(iso: Isolated, bookings_dir: Path) -> None:
    real = iso.root / "elsewhere"
    real.mkdir()
    real.chmod(0o1777)
    bookings_dir.symlink_to(real)
    marker = iso.work / "marker"
    line = iso.error_line(tcap_run(iso, "run", "--cpus", "auto:1", "--", "touch", str(marker)), 2)
    assert line == f"tcap: error: {bookings_dir}: unusable CPU bookings directory (a symlink)"
    assert iso.error_line(iso.run("bookings"), 2) == line
    assert not marker.exists()
    assert os.listdir(real) == []


def test_a_dangling_symlink_is_refused(iso: Isolated, bookings_dir: Path) -> None:
    target = iso.root / "not-yet"
    bookings_dir.symlink_to(target)
    line = iso.error_line(tcap_run(iso, "run", "--cpus", "auto:1", "--", "true"), 2)
    assert line == f"tcap: error: {bookings_dir}: unusable CPU bookings directory (a symlink)"
    assert not target.exists()  # not created through the link


def test_a_world_writable_directory_without_sticky_bit_is_refused(iso: Isolated, bookings_dir: Path) -> None:
    bookings_dir.mkdir()
    bookings_dir.chmod(0o777)
    marker = iso.work / "marker"
    line = iso.error_line(tcap_run(iso, "run", "--cpus", "auto:1", "--", "touch", str(marker)), 2)
    assert line == (f"tcap: error: {bookings_dir}: CPU bookings directory is world-writable without the sticky bit; "
                    "refusing it")
    assert not marker.exists()
    assert os.listdir(bookings_dir) == []
    assert stat.S_IMODE(os.stat(bookings_dir).st_mode) == 0o777  # left as it was


def test_a_file_in_place_of_the_directory_is_refused(iso: Isolated, bookings_dir: Path) -> None:
    bookings_dir.write_text("")
    line = iso.error_line(tcap_run(iso, "run", "--cpus", "auto:1", "--", "true"), 2)
    assert line == f"tcap: error: {bookings_dir}: unusable CPU bookings directory (Not a directory)"


def test_a_private_directory_is_accepted(iso: Isolated, bookings_dir: Path) -> None:
    bookings_dir.mkdir(mode=0o700)
    result = tcap_run(iso, "run", "--cpus", "auto:1", "--", "true")
    assert (result.returncode, result.stderr) == (0, "")
    assert stat.S_IMODE(os.stat(bookings_dir).st_mode) == 0o700  # an existing directory is not chmod-ed


def test_a_symlink_with_a_booking_name_is_not_followed(iso: Isolated, bookings_dir: Path) -> None:
    write_policy(iso, 'on_full = "error"\n')
    bookings_dir.mkdir()
    bookings_dir.chmod(0o1777)
    target = iso.root / "planted.json"
    target.write_text(json.dumps({"cpus": PAIR}))
    me = os.getpid()
    planted = bookings_dir / booking_name(me)  # a live process's name: would count if followed
    planted.symlink_to(target)
    assert booked(iso) == {}
    result = tcap_run(iso, "run", "--cpus", "auto:2", "--", "true")
    assert (result.returncode, result.stderr) == (0, "")
    assert planted.is_symlink() and json.loads(target.read_text()) == {"cpus": PAIR}


@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory"])
def test_a_planted_lock_file_is_not_used(iso: Isolated, bookings_dir: Path, kind: str) -> None:
    """The lock is the directory itself: a ``.lock`` of any kind (the lock
    file of older versions) is never opened, followed nor waited for."""
    bookings_dir.mkdir()
    bookings_dir.chmod(0o1777)
    victim = iso.root / "victim"
    lock = bookings_dir / ".lock"
    if kind == "symlink":
        lock.symlink_to(victim)
    elif kind == "fifo":
        os.mkfifo(lock)
    else:
        lock.mkdir()
    marker = iso.work / "marker"
    result = tcap_run(iso, "run", "--cpus", "auto:1", "--", "touch", str(marker), timeout=20)
    assert (result.returncode, result.stderr) == (0, "")
    assert not victim.exists() and marker.exists()
    assert os.path.lexists(lock)


def test_a_booking_lives_while_any_process_it_names_runs(iso: Isolated, bookings_dir: Path) -> None:
    """A supervised run books for tcap and its child: the booking holds while
    either lives (tcap killed, its child still running)."""
    write_policy(iso, 'on_full = "error"\n')
    bookings_dir.mkdir()
    bookings_dir.chmod(0o1777)
    dead = subprocess.Popen(["true"])
    dead.wait()
    me = os.getpid()
    (bookings_dir / booking_name(dead.pid, 1)).write_text(json.dumps({"cpus": PAIR, "pids": [[me, start_time(me)]]}))
    assert booked(iso) == {dead.pid: PAIR}
    assert live_bookings(iso)[0]["pids"] == [me]
    marker = iso.work / "marker"
    iso.error_line(tcap_run(iso, "run", "--cpus", "auto:1", "--", "touch", str(marker)), 75)
    assert not marker.exists()


def test_the_booking_is_readable_by_all_whatever_the_umask(iso: Isolated, hold: Callable[..., Holder],
                                                           bookings_dir: Path) -> None:
    old = os.umask(0o077)
    try:
        holder = hold()
    finally:
        os.umask(old)
    holder.started()
    path = bookings_dir / booking_of(bookings_dir, holder.pid)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


HOLD_LOCK = (
    "import fcntl, os, sys\n"
    "fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)\n"
    "fcntl.flock(fd, fcntl.LOCK_EX)\n"
    "print(os.getpid(), flush=True)\n"
    "sys.stdin.read()\n"
)


def test_a_lock_held_forever_delays_a_launch_by_two_seconds_at_most(iso: Isolated, bookings_dir: Path) -> None:
    """Somebody holding the lock (a stopped launch, or on purpose) costs every
    launch the patience of 2 s, then it books without the lock, with one note."""
    bookings_dir.mkdir()
    bookings_dir.chmod(0o1777)
    holder = subprocess.Popen([PYTHON, "-c", HOLD_LOCK, str(bookings_dir)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        pid = int(read_line(holder.stdout))
        marker = iso.work / "marker"
        began = time.monotonic()
        result = tcap_run(iso, "run", "--cpus", "auto:1", "--", "touch", str(marker), timeout=30)
        elapsed = time.monotonic() - began
        assert result.returncode == 0, result.stderr
        assert result.stderr.splitlines() == [
            f"tcap: note: the CPU bookings lock of {bookings_dir} has been held by pid {pid} for 2 s; "
            "booking without it"
        ]
        assert marker.exists()
        assert elapsed < 15, elapsed  # generous: the patience is 2 s
        assert len(booking_files(bookings_dir)) == 1  # it still booked, for the others to see
    finally:
        holder.kill()
        holder.wait()
        for stream in (holder.stdin, holder.stdout):
            if stream is not None:
                stream.close()


# --- choose(): the placement policy, pure -------------------------------------------


@pytest.mark.parametrize(
    ("count", "allowed", "held", "busy", "expected"),
    [
        # Fewest bookings first, whatever the load.
        (1, [0, 1, 2], {0: 1, 2: 1}, {}, [1]),
        (1, [0, 1], {0: 1}, {0: 0.0, 1: 1.0}, [1]),
        (1, [0, 1, 2], {0: 3, 1: 2, 2: 5}, {}, [1]),
        (2, [0, 1, 2, 3], {0: 2, 1: 1, 2: 1, 3: 0}, {}, [1, 3]),
        # The idlest among equally booked CPUs.
        (1, [0, 1], {}, {0: 0.9, 1: 0.1}, [1]),
        (2, [0, 1, 2], {0: 1, 1: 1, 2: 1}, {0: 0.5, 1: 0.9, 2: 0.0}, [0, 2]),
        # Load is compared in tenths: a little noise is a tie, broken by the lowest number.
        (1, [0, 1], {}, {0: 0.12, 1: 0.08}, [0]),
        (1, [4, 7, 5], {}, {}, [4]),
        (2, [9, 3, 6], {}, {}, [3, 6]),
        # Bookings of CPUs outside the allowed set do not matter; unknown CPUs are idle and unbooked.
        (1, [2, 3], {0: 0, 1: 0, 2: 1}, {7: 0.0}, [3]),
        # Every CPU, sorted, whatever the order of allowed.
        (3, [2, 0, 1], {0: 4}, {1: 0.7}, [0, 1, 2]),
    ],
)
def test_choose(count: int, allowed: list[int], held: dict[int, int], busy: dict[int, float],
                expected: list[int]) -> None:
    assert choose(count, allowed, held, busy) == expected


def test_choose_accepts_any_iterable_and_is_pure() -> None:
    held, busy = {0: 1}, {1: 0.5}
    assert choose(1, iter([1, 0]), held, busy) == [1]
    assert choose(1, frozenset({0, 1}), held, busy) == [1]
    assert held == {0: 1} and busy == {1: 0.5}

# ruff: noqa: F811  (the users and shared_tmp fixtures are imported, then taken as arguments)
"""A hostile co-user and the shared CPU bookings directory, with real Unix users.

``ben`` plants what he likes in the bookings directory (it is world-writable
by design): FIFOs, devices, directories and symlinks named like bookings, the
lock of older versions as a FIFO, poisoned and huge booking files, bookings
claiming ``ana``'s processes or root's, thousands of junk files; he makes the
directory himself, or holds its lock forever. ``ana``'s launches must each
finish within a bound (a subprocess timeout: a hang fails, it does not hang
the suite), with the exact exit code and at most one line on stderr, placed
as if the junk were not there; and nothing of ben's changes.

Then 40 launches at once by three users, with the junk present, under each
``on_full``.

Runs as root (tests/users.py creates the users); skipped otherwise.
"""

from __future__ import annotations

import json
import os
import re
import select
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from users import User, shared_tmp, users  # noqa: F401

AFFINITY = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
pytestmark = pytest.mark.skipif(len(AFFINITY) < 2, reason="needs Linux CPU affinity and at least 2 usable CPUs")
PAIR = AFFINITY[:2]
PAIR_TEXT = f"{PAIR[0]}-{PAIR[1]}" if len(PAIR) == 2 and PAIR[1] == PAIR[0] + 1 else ",".join(map(str, PAIR))
#: Seconds one launch may take before the test calls it a hang (it takes well under one).
HANG = 20
TOKEN = "0123456789abcdef"


def _on_pair() -> None:
    os.sched_setaffinity(0, PAIR)


def start_time(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return int(data[data.rindex(b")") + 2:].split()[19])


@dataclass
class Shared:
    bookings: Path
    site: Path

    def env(self, user: User, **extra: str) -> dict[str, str]:
        return user.env(TCAP_BOOKINGS_DIR=str(self.bookings), TCAP_SITE_DIR=str(self.site), **extra)

    def policy(self, text: str) -> None:
        path = self.site / "policy.toml"
        path.write_text(text)
        path.chmod(0o644)

    def tcap(self, user: User, *args: str, timeout: float = HANG) -> subprocess.CompletedProcess[str]:
        """``tcap ARGS`` as ``user``, on the CPUs of PAIR."""
        return subprocess.run(user.argv(*args), env=self.env(user), capture_output=True, text=True, timeout=timeout,
                              cwd=str(user.home), preexec_fn=_on_pair)

    def popen(self, user: User, *args: str, **kwargs: object) -> subprocess.Popen:  # type: ignore[type-arg]
        return subprocess.Popen(user.argv(*args), env=self.env(user), cwd=str(user.home),  # type: ignore[call-overload]
                                preexec_fn=_on_pair, **kwargs)

    def as_user(self, user: User, script: str) -> None:
        """Run ``sh -c SCRIPT`` as ``user`` in the bookings directory."""
        subprocess.run(user.as_user("sh", "-c", script), env=user.env(), cwd=str(self.bookings), check=True,
                       timeout=HANG, capture_output=True)

    def files(self) -> list[str]:
        return sorted(os.listdir(self.bookings))


@pytest.fixture
def shared(users: tuple[User, User, User], shared_tmp: Path) -> Shared:
    """A root-owned sticky bookings directory, as an administrator makes it,
    and a site directory for the policy."""
    bookings = shared_tmp / "bookings"
    bookings.mkdir()
    bookings.chmod(0o1777)
    site = shared_tmp / "site"
    site.mkdir()
    site.chmod(0o755)
    return Shared(bookings, site)


@pytest.fixture
def sleeper(users: tuple[User, User, User]) -> Iterator[tuple[int, int]]:
    """A long-lived process of ben's: (pid, start time). A booking naming it
    would be live, so whatever ben plants under its name is tested for real."""
    _, ben, _ = users
    process = subprocess.Popen(ben.as_user("sleep", "600"), env=ben.env())
    try:
        time.sleep(0.05)
        yield process.pid, start_time(process.pid)
    finally:
        process.kill()
        process.wait()


def snapshot(paths: list[Path]) -> dict[str, tuple[object, ...]]:
    """What a file is (kind, owner, mode, size, inode, mtime, and content if a small regular file)."""
    seen: dict[str, tuple[object, ...]] = {}
    for path in paths:
        info = os.lstat(path)
        content = path.read_bytes() if stat.S_ISREG(info.st_mode) and info.st_size < 1 << 20 else None
        seen[str(path)] = (stat.S_IFMT(info.st_mode), info.st_uid, stat.S_IMODE(info.st_mode), info.st_size,
                           info.st_ino, info.st_mtime_ns, content)
    return seen


def assert_placed_freely(shared: Shared, ana: User) -> None:
    """ana's ``auto:2`` launch under ``on_full = "error"`` runs at once on
    both CPUs, silently: nothing planted counted as a booking."""
    shared.policy('on_full = "error"\n')
    marker = ana.home / "marker"
    if marker.exists():
        marker.unlink()
    began = time.monotonic()
    result = shared.tcap(ana, "run", "--cpus", "auto:2", "--", "touch", str(marker))
    elapsed = time.monotonic() - began
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert marker.exists()
    assert elapsed < HANG
    listed = shared.tcap(ana, "bookings", "--json")
    assert listed.returncode == 0 and listed.stderr == "", listed.stderr
    assert json.loads(listed.stdout)["bookings"] == []


# --- planted files -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink", "device", "sparse-3G", "deep-nesting",
                                  "deep-small", "1e400", "bool", "negative", "huge-cpu", "fraction", "string",
                                  "too-many-pids", "nan"])
def test_a_planted_booking_holds_nothing_and_never_hangs(users: tuple[User, User, User], shared: Shared,
                                                         sleeper: tuple[int, int], kind: str) -> None:
    ana, ben, _ = users
    pid, start = sleeper
    name = f"{ben.uid}-{pid}-{start}-{TOKEN}"  # ben's live process: would hold CPUs if it counted
    old_name = f"{pid}-{start}"  # the name format of older versions
    contents = {
        "deep-nesting": "[" * 100_000, "deep-small": "[" * 60_000, "1e400": '{"cpus": [1e400]}',
        "bool": '{"cpus": [true, false]}', "negative": '{"cpus": [-1, 0]}', "huge-cpu": '{"cpus": [0, 99999999]}',
        "fraction": '{"cpus": [0.0, 1.0]}', "string": '{"cpus": ["0", "1"]}', "nan": '{"cpus": [NaN]}',
        "too-many-pids": json.dumps({"cpus": PAIR, "pids": [[pid, start]] * 5}),
    }
    if kind == "fifo":
        shared.as_user(ben, f"mkfifo {name} {old_name}")
    elif kind == "directory":
        shared.as_user(ben, f"mkdir {name}")
    elif kind == "symlink":
        target = ben.home / "target.json"
        shared.as_user(ben, f"printf '%s' '{json.dumps({'cpus': PAIR})}' > {target} && ln -s {target} {name}")
    elif kind == "device":  # users cannot make devices; root plants one in ben's name
        os.mknod(shared.bookings / name, stat.S_IFCHR | 0o644, os.makedev(1, 5))  # /dev/zero
        os.lchown(shared.bookings / name, ben.uid, ben.gid)
    elif kind == "sparse-3G":
        shared.as_user(ben, f"truncate -s 3G {name}")
    else:
        (ben.home / "content").write_text(contents[kind])
        shared.as_user(ben, f"cp {ben.home / 'content'} {name}")
    planted = [shared.bookings / entry for entry in shared.files()]
    before = snapshot(planted)
    assert_placed_freely(shared, ana)
    assert snapshot(planted) == before  # ben's files, untouched


@pytest.mark.parametrize("kind", ["fifo", "symlink", "directory", "file"])
def test_a_planted_lock_is_never_opened(users: tuple[User, User, User], shared: Shared, kind: str) -> None:
    """``.lock`` was the lock of older versions: the lock is now the
    directory itself, so a FIFO (which hung every launch at open) or a
    symlink there is never touched."""
    ana, ben, _ = users
    victim = ana.home / "victim"
    script = {"fifo": "mkfifo .lock", "symlink": f"ln -s {victim} .lock", "directory": "mkdir .lock",
              "file": "touch .lock && chmod 600 .lock"}[kind]
    shared.as_user(ben, script)
    before = snapshot([shared.bookings / ".lock"])
    assert_placed_freely(shared, ana)
    assert not victim.exists()
    assert snapshot([shared.bookings / ".lock"]) == before


def test_a_booking_in_the_victims_name_is_ignored(users: tuple[User, User, User], shared: Shared) -> None:
    """ben creates files claiming ana's uid and her running process (the old
    name format too: ``PID-STARTTIME`` made 5 of 5 of her launches fail):
    they are his files, not hers, so they hold nothing, and her launches
    never collide with them nor leave a temporary file."""
    ana, ben, _ = users
    process = subprocess.Popen(ana.as_user("sleep", "600"), env=ana.env())
    try:
        time.sleep(0.05)
        pid, start = process.pid, start_time(process.pid)
        shared.as_user(ben, f"printf '%s' '{json.dumps({'cpus': PAIR})}' > {ana.uid}-{pid}-{start}-{TOKEN} && "
                            f"printf '%s' '{json.dumps({'cpus': PAIR})}' > {pid}-{start}")
        planted = [shared.bookings / name for name in shared.files()]
        before = snapshot(planted)
        for _ in range(5):
            assert_placed_freely(shared, ana)
        assert snapshot(planted) == before
        leftovers = [name for name in shared.files() if name not in {p.name for p in planted}]
        assert all(re.fullmatch(rf"{ana.uid}-[0-9]+-[0-9]+-[0-9a-f]{{16}}", name) for name in leftovers), leftovers
        assert len(leftovers) <= 1  # her last launch's own (dead) booking; no .tmp file, ever
    finally:
        process.kill()
        process.wait()


def test_a_booking_on_a_process_of_another_user_holds_nothing(users: tuple[User, User, User],
                                                               shared: Shared) -> None:
    """A booking lives as long as processes of its user: ben cannot make one
    that lives forever on pid 1 (root's) or on one of ana's processes."""
    ana, ben, _ = users
    victim = subprocess.Popen(ana.as_user("sleep", "600"), env=ana.env())
    try:
        time.sleep(0.05)
        for pid in (1, victim.pid):
            name = f"{ben.uid}-{pid}-{start_time(pid)}-{TOKEN[:-1]}{pid % 10}"
            shared.as_user(ben, f"printf '%s' '{json.dumps({'cpus': PAIR})}' > {name}")
        assert_placed_freely(shared, ana)
    finally:
        victim.kill()
        victim.wait()


def test_a_real_claim_of_another_user_is_honoured(users: tuple[User, User, User], shared: Shared,
                                                  sleeper: tuple[int, int]) -> None:
    """Cooperation, not a boundary: ben may always book CPUs for a process
    of his, and ana's ``on_full = "error"`` launch then finds none free."""
    ana, ben, _ = users
    pid, start = sleeper
    shared.as_user(ben, f"printf '%s' '{json.dumps({'cpus': PAIR})}' > {ben.uid}-{pid}-{start}-{TOKEN}")
    shared.policy('on_full = "error"\n')
    result = shared.tcap(ana, "run", "--cpus", "auto:1", "--", "true")
    assert result.returncode == 75, result.stderr
    assert result.stderr.splitlines() == [
        f'tcap: error: cpus auto:1: only 0 of the CPUs {PAIR_TEXT} are free (policy on_full = "error")']
    listed = shared.tcap(ana, "bookings")
    assert listed.returncode == 0 and f"{pid:<8} {ben.name:<12} {PAIR_TEXT}" in listed.stdout, listed.stdout


def test_thousands_of_junk_files_slow_nobody_much(users: tuple[User, User, User], shared: Shared,
                                                  sleeper: tuple[int, int]) -> None:
    ana, ben, _ = users
    pid, start = sleeper
    code = (f"import json\nfor i in range(20000):\n"
            f"    open('{ben.uid}-{pid}-{start}-%016x' % i, 'w').write(json.dumps({{'cpus': [-1]}}))\n")
    subprocess.run(ben.as_user("/usr/bin/python3", "-c", code), env=ben.env(), cwd=str(shared.bookings), check=True,
                   timeout=120)
    assert_placed_freely(shared, ana)


def test_ben_cannot_remove_or_rewrite_anas_booking(users: tuple[User, User, User], shared: Shared) -> None:
    ana, ben, _ = users
    holder = shared.popen(ana, "run", "--cpus", "auto:1", "--", "sh", "-c", "echo ready; read -r _ || :",
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        (name,) = [n for n in shared.files() if n.startswith(f"{ana.uid}-{holder.pid}-")]
        before = snapshot([shared.bookings / name])
        for script in (f"rm -f {name}", f"echo '{{}}' > {name}", f"mv {name} x", f"ln -sf /etc/passwd {name}"):
            attempt = subprocess.run(ben.as_user("sh", "-c", script), env=ben.env(), cwd=str(shared.bookings),
                                     capture_output=True, timeout=HANG)
            assert attempt.returncode != 0, script
        assert snapshot([shared.bookings / name]) == before
    finally:
        holder.communicate(input="", timeout=HANG)
    assert holder.returncode == 0


# --- the directory and its lock ------------------------------------------------------


def test_a_directory_made_by_another_user_is_not_trusted(users: tuple[User, User, User],
                                                         shared_tmp: Path) -> None:
    """ben made the bookings directory first (no administrator did): its
    owner could delete everyone's bookings, so ana places herself without
    it, with one note, and writes nothing into it."""
    ana, ben, _ = users
    site = shared_tmp / "site"
    site.mkdir()
    site.chmod(0o755)
    shared = Shared(shared_tmp / "bookings", site)
    subprocess.run(ben.as_user("sh", "-c", f"mkdir -m 1777 {shared.bookings} && mkfifo {shared.bookings}/1-1"),
                   env=ben.env(), check=True, timeout=HANG)
    shared.policy('on_full = "error"\n')
    note = (f"tcap: note: CPU bookings directory {shared.bookings} belongs to uid {ben.uid} ({ben.name}), not to "
            "root or you: placing without bookings (an administrator should create it root-owned, mode 1777)")
    marker = ana.home / "marker"
    result = shared.tcap(ana, "run", "--cpus", "auto:2", "--", "touch", str(marker))
    assert (result.returncode, result.stderr.splitlines()) == (0, [note]), result.stderr
    assert marker.exists()
    assert shared.files() == ["1-1"]  # nothing of ana's in ben's directory
    listed = shared.tcap(ana, "bookings")
    assert (listed.returncode, listed.stderr.splitlines()) == (0, [note])
    assert listed.stdout == f"no live CPU bookings in {shared.bookings}\n"
    # ben's own launches use it as before.
    own = shared.tcap(ben, "run", "--cpus", "auto:1", "--", "true")
    assert (own.returncode, own.stderr) == (0, "")


def test_a_symlink_planted_as_the_directory_is_not_followed(users: tuple[User, User, User],
                                                            shared_tmp: Path) -> None:
    ana, ben, _ = users
    site = shared_tmp / "site"
    site.mkdir()
    site.chmod(0o755)
    shared = Shared(shared_tmp / "bookings", site)
    target = shared_tmp / "elsewhere"
    subprocess.run(ben.as_user("sh", "-c", f"mkdir -m 1777 {target} && ln -s {target} {shared.bookings}"),
                   env=ben.env(), check=True, timeout=HANG)
    result = shared.tcap(ana, "run", "--cpus", "auto:1", "--", "true")
    assert result.returncode == 0, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert f"is a symlink, made by uid {ben.uid} ({ben.name})" in result.stderr, result.stderr
    assert os.listdir(target) == []


HOLD_LOCK = (
    "import fcntl, os, sys\n"
    "fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)\n"
    "fcntl.flock(fd, fcntl.LOCK_EX)\n"
    "print(os.getpid(), flush=True)\n"
    "sys.stdin.read()\n"
)


def test_a_lock_held_forever_by_another_user_costs_two_seconds(users: tuple[User, User, User],
                                                              shared: Shared) -> None:
    ana, ben, _ = users
    holder = subprocess.Popen(ben.as_user("/usr/bin/python3", "-c", HOLD_LOCK, str(shared.bookings)), env=ben.env(),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        ready, _, _ = select.select([holder.stdout], [], [], HANG)
        assert ready
        pid = int(holder.stdout.readline())
        for _ in range(2):
            began = time.monotonic()
            result = shared.tcap(ana, "run", "--cpus", "auto:1", "--", "true")
            elapsed = time.monotonic() - began
            assert result.returncode == 0, result.stderr
            assert result.stderr.splitlines() == [
                f"tcap: note: the CPU bookings lock of {shared.bookings} has been held by pid {pid} for 2 s; "
                "booking without it"]
            assert 2 <= elapsed < HANG
        listed = shared.tcap(ana, "bookings")  # listing takes no lock
        assert listed.returncode == 0 and listed.stderr == ""
    finally:
        holder.kill()
        holder.wait()


def test_an_unwritable_directory_is_an_io_error(users: tuple[User, User, User], shared: Shared) -> None:
    """A root-owned directory ana cannot write: exit 74 (an I/O error, not
    a usage error), one line, nothing started."""
    ana, _, _ = users
    shared.bookings.chmod(0o755)
    marker = ana.home / "marker"
    if marker.exists():
        marker.unlink()
    result = shared.tcap(ana, "run", "--cpus", "auto:1", "--", "touch", str(marker))
    assert result.returncode == 74, result.stderr
    assert result.stderr.splitlines() == [
        f"tcap: error: {shared.bookings}: CPU booking failed: Permission denied"]
    assert not marker.exists()


# --- 40 launches by three users at once, with the junk present ------------------------

LAUNCHES = 40
HOLD_CHILD = 'echo "$$ $(grep Cpus_allowed_list /proc/$$/status | cut -f2)"; read -r _ || :'
TIMED_CHILD = ('c=$(grep Cpus_allowed_list /proc/$$/status | cut -f2); s=$(date +%s.%N); sleep 0.2; '
               'e=$(date +%s.%N); echo "$$ $c $s $e"')


def plant_junk(shared: Shared, ben: User, pid: int, start: int) -> list[Path]:
    """The hostile files of the corpus, in ben's name on ben's live process."""
    stem = f"{ben.uid}-{pid}-{start}"
    script = " && ".join([
        f"mkfifo {stem}-{'f' * 16} {pid}-{start} .lock",
        f"printf '%s' '{{\"cpus\": [1e400]}}' > {stem}-{'e' * 16}",
        f"truncate -s 3G {stem}-{'d' * 16}",
        f"python3 -c 'print(\"[\" * 100000)' > {stem}-{'c' * 16}",
        f"mkdir {stem}-{'b' * 16}",
    ])
    shared.as_user(ben, script)
    return [shared.bookings / name for name in shared.files()]


def launch_all(shared: Shared, people: tuple[User, User, User], child: str, stdin: int | None, stdout: int,
               errors: Path) -> dict[int, tuple[User, subprocess.Popen]]:  # type: ignore[type-arg]
    launched = {}
    for index in range(LAUNCHES):
        user = people[index % 3]
        with open(errors / str(index), "w") as err:
            process = shared.popen(user, "run", "--cpus", "auto:1", "--", "sh", "-c", child, stdin=stdin,
                                   stdout=stdout, stderr=err)
        launched[process.pid] = (user, process, index)
    return launched  # type: ignore[return-value]


def read_reports(fd: int, count: int, timeout: float) -> dict[int, str]:
    buffer = b""
    reports: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    while len(reports) < count:
        assert time.monotonic() < deadline, f"only {len(reports)} of {count} launches ran"
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                pid, rest = line.decode().split(" ", 1)
                reports[int(pid)] = rest
    return reports


def check_ownership(shared: Shared, launched: dict, junk: dict[str, tuple[object, ...]]) -> None:  # type: ignore[type-arg]
    """Every booking file is its claimed user's, names a launch of that user,
    and ben's junk is as he left it."""
    pids = {pid: user for pid, (user, _, _) in launched.items()}
    for name in shared.files():
        if str(shared.bookings / name) in junk:
            continue
        match = re.fullmatch(r"([0-9]+)-([0-9]+)-[0-9]+-[0-9a-f]{16}", name)
        assert match, name  # no temporary file left behind
        uid, pid = int(match[1]), int(match[2])
        assert os.lstat(shared.bookings / name).st_uid == uid
        assert pids[pid].uid == uid
    assert snapshot([Path(path) for path in junk]) == junk


@pytest.mark.parametrize("on_full", ["share", "error", "wait"])
def test_forty_launches_by_three_users_at_once(users: tuple[User, User, User], shared: Shared,
                                               sleeper: tuple[int, int], tmp_path: Path, on_full: str) -> None:
    _, ben, _ = users
    junk = snapshot(plant_junk(shared, ben, *sleeper))
    shared.policy(f'on_full = "{on_full}"\nwait_timeout = 300\n')
    errors = tmp_path / "stderr"
    errors.mkdir()
    report_read, report_write = os.pipe()
    release_read, release_write = os.pipe()
    launched: dict = {}  # type: ignore[type-arg]
    began = time.monotonic()
    try:
        child = TIMED_CHILD if on_full == "wait" else HOLD_CHILD
        launched = launch_all(shared, users, child, release_read, report_write, errors)
        os.close(report_write)
        report_write = -1
        expected = 2 if on_full == "error" else LAUNCHES
        reports = read_reports(report_read, expected, timeout=300)
        if on_full == "error":  # the 38 others are refused meanwhile
            for pid, (_, process, _) in launched.items():
                if pid not in reports:
                    assert process.wait(timeout=120) == 75
        placed = time.monotonic() - began
        if on_full != "wait":
            listed = json.loads(shared.tcap(users[0], "bookings", "--json").stdout)["bookings"]
            assert sorted(item["pid"] for item in listed) == sorted(reports)
            counts = {cpu: sum(item["cpus"] == [cpu] for item in listed) for cpu in PAIR}
            assert counts == dict.fromkeys(PAIR, expected // 2), counts  # balanced
        os.close(release_write)
        release_write = -1
        for pid, (_, process, index) in launched.items():
            code = process.wait(timeout=300)
            err = (errors / str(index)).read_text()
            if pid in reports:
                assert code == 0, err
                (cpu,) = [int(reports[pid].split()[0])]
                assert cpu in PAIR
                allowed = {"share": ("", f"tcap: notice: cpus auto:1: 0 free among {PAIR_TEXT}; sharing CPU {cpu} "
                                         "with other tcap launches\n"),
                           "error": ("",),
                           "wait": ("", f"tcap: waiting for 1 free CPU among {PAIR_TEXT}...\n")}[on_full]
                assert err in allowed, err
            else:
                assert code == 75 and err == (f'tcap: error: cpus auto:1: only 0 of the CPUs {PAIR_TEXT} are free '
                                              '(policy on_full = "error")\n'), (code, err)
        finished = time.monotonic() - began
    finally:
        for fd in (report_write, release_write, release_read, report_read):
            if fd >= 0:
                os.close(fd)
        for _, process, _ in launched.values():
            if process.poll() is None:
                process.kill()
            process.wait()
    if on_full == "share":
        quiet = sum((errors / str(index)).read_text() == "" for _, _, index in launched.values())
        assert quiet == len(PAIR)  # the first two found free CPUs, the others said they share
    if on_full == "wait":  # no two launches ever ran on one CPU at the same time
        spans: dict[int, list[tuple[float, float]]] = {}
        for rest in reports.values():
            cpu, began_at, ended_at = rest.split()
            spans.setdefault(int(cpu), []).append((float(began_at), float(ended_at)))
        for cpu, runs in spans.items():
            runs.sort()
            for (_, end), (next_start, _) in zip(runs, runs[1:]):
                assert next_start >= end, (cpu, end, next_start)
    check_ownership(shared, launched, junk)
    print(f"\n40 launches by 3 users, on_full = {on_full}: placed in {placed:.1f} s, all done in {finished:.1f} s")

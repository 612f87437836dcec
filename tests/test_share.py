"""tcap._share, unit by unit: the rule (divide, split), the launch's table
(real files in tmp directories: open_table, sweep, Table.claim/write/
release/busy_others), the lowering at a child's start (lower_at_start), the
pools' bookkeeping (Pools.adjust) and one process's sharing state (Sharer).

Where a pid must be alive, dead or a zombie it is a real process: this one,
a child that ran and was reaped, or a child that exited unreaped.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tcap import _share

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux's /proc")

ME = os.getpid()
MY_START = _share.process_start(ME)[0] if os.path.exists("/proc/self/stat") else 0  # type: ignore[index]


def dead_pid() -> int:
    """The pid of a process that ran and was reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)
    assert _share.process_start(child.pid) is None
    return child.pid


@pytest.fixture
def zombie() -> Iterator[int]:
    """A child that exited and is not reaped yet (state Z)."""
    child = subprocess.Popen(["/bin/sh", "-c", "exit 0"])
    deadline = time.monotonic() + 10
    while (_share.process_start(child.pid) or (0, "?"))[1] != "Z":
        assert time.monotonic() < deadline, "the child never became a zombie"
        time.sleep(0.01)
    yield child.pid
    child.wait(timeout=10)


@pytest.fixture
def table(tmp_path: Path) -> Iterator[_share.Table]:
    """A fresh launch table of 2 CPUs in a private directory."""
    directory = tmp_path / "tcap"
    path = str(directory / f"share-{ME}-{MY_START}")
    fd = _share.open_table(path, create=True)
    yield _share.Table(2, path, fd)
    os.close(fd)


def put(table: _share.Table, slot: int, pid: int, *, ppid: int = 1, start: int = 0, beat: float | None = None,
        flags: int = _share.BUSY_FLAG, share: int = 1, threads: int = 1) -> None:
    """Write one record of the table by hand (as another process would)."""
    record = _share.RECORD.pack(pid, ppid, start, time.monotonic() if beat is None else beat, flags, share, threads)
    os.pwrite(table.fd, record, slot * _share.RECORD.size)


# --- the rule ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cpus", "busy", "me", "expected"), [
    (2, [], 10, (2, 1)),  # alone: every CPU
    (2, [10], 10, (2, 1)),  # me among the busy counts once
    (2, [11], 10, (1, 2)),
    (2, [11, 11, 11], 10, (1, 2)),  # duplicates count once
    (2, [11, 12], 10, (1, 3)),  # more busy than CPUs: never below 1
    (3, [11], 10, (2, 2)),  # the first cpus % n by pid get one more
    (3, [9], 10, (1, 2)),
    (8, [1, 2, 3], 4, (2, 4)),
    (7, [1, 2], 3, (2, 3)),  # 7 = 3 + 2 + 2: pid 3 is third
    (7, [5, 6], 3, (3, 3)),  # pid 3 is first
    (1, [2, 3, 4], 1, (1, 4)),
])
def test_divide(cpus: int, busy: list[int], me: int, expected: tuple[int, int]) -> None:
    assert _share.divide(cpus, busy, me) == expected


@pytest.mark.parametrize("cpus", [1, 2, 3, 7, 16])
@pytest.mark.parametrize("n", [1, 2, 3, 5, 20])
def test_the_shares_of_all_busy_processes_add_up_to_the_cpus(cpus: int, n: int) -> None:
    pids = list(range(100, 100 + n))
    shares = [_share.divide(cpus, pids, pid)[0] for pid in pids]
    assert sum(shares) == max(cpus, n)  # each >= 1: more only when there are more busy than CPUs
    assert max(shares) - min(shares) <= 1
    assert shares == sorted(shares, reverse=True)  # the extra ones go to the lowest pids


@pytest.mark.parametrize(("share", "threads", "expected"), [
    (2, 0, 2), (2, 1, 2), (2, 2, 1), (2, 3, 1), (5, 2, 2), (8, 3, 2), (1, 0, 1), (1, 4, 1),
])
def test_split(share: int, threads: int, expected: int) -> None:
    assert _share.split(share, threads) == expected


@pytest.mark.parametrize(("environ", "expected"), [
    ({"TCAP_SHARE": "2", "TCAP_SHARE_LAUNCH": "123:/run/x"}, (2, 123, "/run/x")),
    ({"TCAP_SHARE": "2", "TCAP_SHARE_LAUNCH": "123", "XDG_RUNTIME_DIR": "/run/u"}, (2, 123, "/run/u/tcap")),
    ({"TCAP_SHARE": "0", "TCAP_SHARE_LAUNCH": "123:/run/x"}, None),
    ({"TCAP_SHARE": "65537", "TCAP_SHARE_LAUNCH": "123:/run/x"}, None),
    ({"TCAP_SHARE": "-2", "TCAP_SHARE_LAUNCH": "123:/run/x"}, None),
    ({"TCAP_SHARE": "two", "TCAP_SHARE_LAUNCH": "123:/run/x"}, None),
    ({"TCAP_SHARE": "2", "TCAP_SHARE_LAUNCH": "x:/run/x"}, None),
    ({"TCAP_SHARE": "2", "TCAP_SHARE_LAUNCH": "123:relative"}, None),
    ({"TCAP_SHARE": "2", "TCAP_SHARE_LAUNCH": "12345678901:/run/x"}, None),
    ({"TCAP_SHARE_LAUNCH": "123:/run/x"}, None),
    ({"TCAP_SHARE": "2"}, None),
])
def test_settings(environ: dict[str, str], expected: Any) -> None:
    assert _share.settings(environ) == expected


def test_path_for_names_the_root_and_its_start(tmp_path: Path) -> None:
    assert _share.path_for(ME, str(tmp_path)) == str(tmp_path / f"share-{ME}-{MY_START}")
    assert _share.path_for(dead_pid(), str(tmp_path)) is None


# --- the table file --------------------------------------------------------------------------------------


def test_open_table_creates_a_private_file_in_a_private_directory(tmp_path: Path) -> None:
    path = tmp_path / "a" / "tcap" / "share-1-2"
    fd = _share.open_table(str(path), create=True)
    try:
        info = os.fstat(fd)
        assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
        assert info.st_size == 0
        again = _share.open_table(str(path), create=False)  # the next process of the launch opens it
        assert os.fstat(again).st_ino == info.st_ino
        os.close(again)
    finally:
        os.close(fd)


def test_open_table_without_create_does_not_create(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        _share.open_table(str(tmp_path / "tcap" / "share-1-2"), create=False)
    assert not (tmp_path / "tcap").exists()


def refused(path: Path, create: bool = True) -> None:
    with pytest.raises(OSError):
        fd = _share.open_table(str(path), create=create)
        os.close(fd)


def test_open_table_refuses_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    target.chmod(0o600)
    (tmp_path / "share-1-2").symlink_to(target)
    refused(tmp_path / "share-1-2")
    assert target.read_bytes() == b""


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
def test_open_table_refuses_a_file_others_can_write(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "share-1-2"
    path.write_bytes(b"")
    path.chmod(mode)
    refused(path)


def test_open_table_refuses_a_file_bigger_than_the_table(tmp_path: Path) -> None:
    path = tmp_path / "share-1-2"
    path.write_bytes(bytes(_share.SIZE + 1))
    path.chmod(0o600)
    refused(path)
    path.write_bytes(bytes(_share.SIZE))  # the full table is fine
    os.close(_share.open_table(str(path), create=False))


def test_open_table_refuses_a_hard_link(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.write_bytes(b"")
    other.chmod(0o600)
    os.link(other, tmp_path / "share-1-2")
    refused(tmp_path / "share-1-2")


def test_open_table_refuses_a_fifo_and_a_directory_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "share-1-2", 0o600)
    refused(tmp_path / "share-1-2")
    (tmp_path / "share-3-4").mkdir(mode=0o700)
    refused(tmp_path / "share-3-4")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_open_table_refuses_another_users_file(tmp_path: Path) -> None:
    path = tmp_path / "share-1-2"
    path.write_bytes(b"")
    path.chmod(0o600)
    os.chown(path, 65534, 65534)
    refused(path)


def test_open_table_refuses_a_directory_others_can_write(tmp_path: Path) -> None:
    directory = tmp_path / "tcap"
    directory.mkdir()
    directory.chmod(0o777)
    refused(directory / "share-1-2")
    assert list(directory.iterdir()) == []


def test_creating_a_table_sweeps_the_tables_of_launches_that_are_gone(tmp_path: Path) -> None:
    directory = tmp_path / "tcap"
    directory.mkdir(mode=0o700)
    gone = dead_pid()
    names = {
        f"share-{gone}-123": False,  # its root is gone
        f"share-{ME}-{MY_START + 1}": False,  # the pid lives, but started at another time: reused
        f"share-{ME}-{MY_START}": True,  # a live launch
        "share-x-1": True, "share-1-2-3": True, "notes": True, f"other-{gone}-1": True,  # not tables
    }
    for name in names:
        (directory / name).write_bytes(b"")
    mine = str(directory / f"share-{os.getppid()}-999")  # the new table (its own name is never swept)
    os.close(_share.open_table(mine, create=True))
    kept = {name for name, keep in names.items() if keep} | {os.path.basename(mine)}
    assert set(os.listdir(directory)) == kept


def test_sweep_keeps_the_name_it_is_told_to(tmp_path: Path) -> None:
    gone = dead_pid()
    (tmp_path / f"share-{gone}-5").write_bytes(b"")
    (tmp_path / f"share-{gone}-6").write_bytes(b"")
    _share.sweep(str(tmp_path), f"share-{gone}-5")
    assert os.listdir(tmp_path) == [f"share-{gone}-5"]
    _share.sweep(str(tmp_path / "missing"), "x")  # no directory: nothing to do, no error


def test_read_table_ignores_a_partial_record(table: _share.Table) -> None:
    put(table, 0, 7)
    os.pwrite(table.fd, b"\x01\x02\x03", _share.RECORD.size)
    records = _share.read_table(table.fd)
    assert [record[0] for record in records] == [7]


# --- claim, write, release -------------------------------------------------------------------------------


def test_claim_takes_free_slots_in_order_and_keeps_a_process_in_its_own(table: _share.Table) -> None:
    assert table.claim(ME, MY_START) == 0
    other = _share.Table(2, table.path, table.fd)
    assert other.claim(ME + 1, 5, _share.STARTING_FLAG) == 1
    pid, ppid, start, beat, flags, share, threads = _share.read_table(table.fd)[1]
    assert (pid, ppid, start, flags, share, threads) == (ME + 1, os.getppid(), 5, _share.STARTING_FLAG, 0, 0)
    assert abs(beat - time.monotonic()) < 5
    assert table.claim(ME, MY_START) == 0  # claiming again: the same slot
    assert len(_share.read_table(table.fd)) == 2


def test_claim_reuses_a_released_slot(table: _share.Table) -> None:
    first = _share.Table(2, table.path, table.fd)
    assert first.claim(ME + 1, 5) == 0
    assert table.claim(ME, MY_START) == 1
    first.release()
    assert first.slot is None
    assert _share.read_table(table.fd)[0] == (0, 0, 0, 0.0, 0, 0, 0)
    assert _share.Table(2, table.path, table.fd).claim(ME + 2, 7) == 0


def test_claim_reuses_the_stale_slot_of_a_dead_process_only(table: _share.Table, zombie: int) -> None:
    old = time.monotonic() - 10 * _share.STALE
    put(table, 0, ME, start=MY_START, beat=old)  # stale, but alive: kept
    put(table, 1, zombie, start=_share.process_start(zombie)[0], beat=old)
    put(table, 2, dead_pid(), beat=old)
    put(table, 3, ME, start=MY_START + 1, beat=old)  # a reused pid: that process is gone
    assert _share.Table(2, table.path, table.fd).claim(ME + 100, 1) == 1
    assert _share.Table(2, table.path, table.fd).claim(ME + 101, 1) == 2
    assert _share.Table(2, table.path, table.fd).claim(ME + 102, 1) == 3
    assert _share.Table(2, table.path, table.fd).claim(ME + 103, 1) == 4


def test_claim_fails_on_a_full_table(table: _share.Table) -> None:
    for slot in range(_share.SLOTS):
        put(table, slot, 1_000_000 + slot)  # fresh heartbeats: none can be taken
    assert os.fstat(table.fd).st_size == _share.SIZE
    assert table.claim(ME, MY_START) is None
    assert table.slot is None
    table.write(ME, MY_START, True, 1, 1)  # without a slot: writes nothing
    assert os.fstat(table.fd).st_size == _share.SIZE
    assert ME not in [record[0] for record in _share.read_table(table.fd)]


def test_claim_gives_up_while_another_process_holds_the_lock(table: _share.Table) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys\n"
         "fd = os.open(sys.argv[1], os.O_RDWR)\nfcntl.lockf(fd, fcntl.LOCK_EX)\n"
         "print('locked', flush=True)\nsys.stdin.read()\n", table.path],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        began = time.monotonic()
        assert table.claim(ME, MY_START) is None
        assert time.monotonic() - began < 10  # tried for a while, never waited on
        assert _share.read_table(table.fd) == []
    finally:
        holder.communicate(timeout=30)
    assert table.claim(ME, MY_START) == 0  # the lock is free again


def test_write_publishes_the_state_and_release_clears_it(table: _share.Table) -> None:
    assert table.claim(ME, MY_START) == 0
    table.write(ME, MY_START, True, 70000, 3)
    pid, ppid, start, beat, flags, share, threads = _share.read_table(table.fd)[0]
    assert (pid, ppid, start, flags, share, threads) == (ME, os.getppid(), MY_START, _share.BUSY_FLAG, 65535, 3)
    table.write(ME, MY_START, False, 1, 0, starting=True)
    assert _share.read_table(table.fd)[0][4] == _share.STARTING_FLAG
    table.release()
    assert _share.read_table(table.fd) == [(0, 0, 0, 0.0, 0, 0, 0)]
    table.release()  # twice: nothing more


# --- busy_others -------------------------------------------------------------------------------------------


def test_busy_others_counts_busy_processes_but_not_me_nor_the_idle(table: _share.Table) -> None:
    now = time.monotonic()
    assert table.busy_others(ME, now) == []  # an empty table
    put(table, 0, ME, flags=_share.BUSY_FLAG)  # me
    put(table, 1, 101, flags=_share.BUSY_FLAG)
    put(table, 2, 102, flags=0)  # idle
    put(table, 3, 0, flags=_share.BUSY_FLAG)  # a free slot
    put(table, 4, 104, flags=_share.BUSY_FLAG | _share.STARTING_FLAG)
    assert table.busy_others(ME, time.monotonic()) == [101, 104]


def test_a_starting_sibling_counts_for_its_siblings_only_and_not_for_long(table: _share.Table) -> None:
    now = time.monotonic()
    put(table, 0, 201, ppid=50, flags=_share.STARTING_FLAG, beat=now)
    put(table, 1, 202, ppid=60, flags=_share.STARTING_FLAG, beat=now)  # another parent's child
    put(table, 2, 203, ppid=50, flags=_share.STARTING_FLAG, beat=now - _share.STARTING - 0.1)  # started long ago
    assert table.busy_others(ME, now, parent=50) == [201]
    assert table.busy_others(ME, now, parent=60) == [202]
    assert table.busy_others(ME, now) == []


def test_a_stale_busy_process_counts_only_while_it_lives(table: _share.Table, zombie: int) -> None:
    old = time.monotonic() - 10 * _share.STALE
    gone = dead_pid()
    put(table, 0, ME, start=MY_START, beat=old)  # silent, but alive: still busy
    put(table, 1, gone, start=1, beat=old)  # died without a word
    put(table, 2, zombie, start=_share.process_start(zombie)[0], beat=old)
    put(table, 3, ME, start=MY_START + 1, beat=old)  # this pid, another process: gone
    put(table, 4, gone, start=1)  # fresh: not asked (a heartbeat is proof enough)
    assert table.busy_others(ME + 1, time.monotonic()) == [ME, gone]
    assert {(gone, 1), (zombie, _share.process_start(zombie)[0]), (ME, MY_START + 1)} <= table.dead
    assert (ME, MY_START) not in table.dead


# --- lower_at_start ------------------------------------------------------------------------------------------


def child_env(**variables: str) -> dict[str, str]:
    return {"PATH": "/usr/bin", **variables}


def test_a_child_starting_while_a_sibling_is_busy_gets_its_share(table: _share.Table) -> None:
    put(table, 0, ME + 1)
    environ = child_env()
    done = _share.lower_at_start(table, environ, {}, ME)
    names = [name for name, _ in _share.START_VARIABLES]
    assert done == {name: ("1", None) for name in names}
    assert {name: environ[name] for name in names} == {name: "1" for name in names}
    assert environ["TCAP_SHARED"] == ",".join(f"{name}=1/" for name in names)


def test_a_child_starting_alone_changes_nothing(table: _share.Table) -> None:
    put(table, 0, ME + 1, flags=0)  # idle
    environ = child_env(OMP_NUM_THREADS="2")
    assert _share.lower_at_start(table, environ, {}, ME) == {}
    assert environ == child_env(OMP_NUM_THREADS="2")


def test_the_programs_own_values_are_ceilings_and_never_raised(tmp_path: Path, table: _share.Table) -> None:
    big = _share.Table(8, table.path, table.fd)  # 8 CPUs, one busy sibling: a share of 4
    put(table, 0, ME + 1)
    environ = child_env(OMP_NUM_THREADS="6,2", OPENBLAS_NUM_THREADS="3", NUMBA_NUM_THREADS="auto",
                        POLARS_MAX_THREADS="0")
    done = _share.lower_at_start(big, environ, {}, ME)
    assert done == {"OMP_NUM_THREADS": ("4", "6,2")}  # the first level of a nested list is a count
    assert environ["OMP_NUM_THREADS"] == "4"
    assert environ["OPENBLAS_NUM_THREADS"] == "3"  # below the share: the program's choice stays
    assert environ["NUMBA_NUM_THREADS"] == "auto" and environ["POLARS_MAX_THREADS"] == "0"  # not counts


def test_the_caps_are_ceilings(table: _share.Table) -> None:
    big = _share.Table(8, table.path, table.fd)
    put(table, 0, ME + 1)
    environ = child_env()
    done = _share.lower_at_start(big, environ, {"blas": 2, "openmp": 8, "numba": 3}, ME)
    # share 4: OpenMP (cap 8) lowered to 4; OpenBLAS and Polars take the blas cap of 2; Numba its 3
    assert done == {"OMP_NUM_THREADS": ("4", None)}


def test_a_lowering_by_an_ancestor_is_not_taken_for_the_programs_choice(table: _share.Table) -> None:
    """A grandchild inherits the variables its parent got lowered at start:
    TCAP_SHARED tells tcap's value (and the one before it) from the program's."""
    put(table, 0, ME + 1)
    parent = child_env(OPENBLAS_NUM_THREADS="2")
    big = _share.Table(4, table.path, table.fd)
    put(table, 1, ME + 2)  # two busy siblings on 4 CPUs: a share of 1 (the highest pid of three)
    _share.lower_at_start(big, parent, {}, ME + 3)
    assert parent["OPENBLAS_NUM_THREADS"] == "1"
    assert "OPENBLAS_NUM_THREADS=1/2" in parent["TCAP_SHARED"].split(",")
    # Later one sibling is idle: the grandchild's share is 2 and its ceiling the 2 from before the lowering.
    put(table, 1, ME + 2, flags=0)
    grandchild = dict(parent)
    done = _share.lower_at_start(big, grandchild, {}, ME + 3)
    assert grandchild["OPENBLAS_NUM_THREADS"] == "2"
    assert "OPENBLAS_NUM_THREADS" not in done
    # OpenMP was unset before the lowering: its ceiling is the 4 CPUs, its share 2.
    assert grandchild["OMP_NUM_THREADS"] == "2" and done["OMP_NUM_THREADS"] == ("2", None)


def test_a_lowering_still_due_keeps_the_value_from_before_it(table: _share.Table) -> None:
    put(table, 0, ME + 1)
    environ = child_env(OPENBLAS_NUM_THREADS="1", TCAP_SHARED="OPENBLAS_NUM_THREADS=1/2")
    done = _share.lower_at_start(table, environ, {}, ME)
    assert done["OPENBLAS_NUM_THREADS"] == ("1", "2")
    assert "OPENBLAS_NUM_THREADS=1/2" in environ["TCAP_SHARED"].split(",")


def test_a_value_the_program_changed_after_tcaps_lowering_is_its_own(table: _share.Table) -> None:
    environ = child_env(OPENBLAS_NUM_THREADS="3", TCAP_SHARED="OPENBLAS_NUM_THREADS=1/2")
    big = _share.Table(8, table.path, table.fd)
    assert _share.lower_at_start(big, environ, {}, ME) == {}
    assert environ["OPENBLAS_NUM_THREADS"] == "3"


def test_a_restored_variable_is_no_longer_claimed_as_tcaps(table: _share.Table) -> None:
    """A child started when its siblings are idle again gets the value from
    before tcap's lowering back (here: unset).  TCAP_SHARED must then stop
    naming that lowering, else a value the program itself sets later, equal
    to tcap's old one, is taken for tcap's in the next child and undone
    (raising a pool the program lowered)."""
    environ = child_env(OPENBLAS_NUM_THREADS="1", TCAP_SHARED="OPENBLAS_NUM_THREADS=1/")
    assert _share.lower_at_start(table, environ, {}, ME) == {}
    assert "OPENBLAS_NUM_THREADS" not in environ  # restored
    environ["OPENBLAS_NUM_THREADS"] = "1"  # the program's own choice for its next child
    grandchild = dict(environ)
    _share.lower_at_start(table, grandchild, {}, ME)
    assert grandchild.get("OPENBLAS_NUM_THREADS") == "1"


# --- Pools.adjust ------------------------------------------------------------------------------------------


class Pool:
    """A run-time pool with a real setter (the way threadpoolctl's are called)."""

    def __init__(self, size: Any, fail: bool = False) -> None:
        self.size = size
        self.fail = fail
        self.calls: list[int] = []

    def set(self, size: int) -> None:
        self.calls.append(size)
        if self.fail:
            raise RuntimeError("refused")
        self.size = size

    def row(self, key: str = "openblas", cap: int | None = 2) -> tuple[Any, str, Any, int | None, Any]:
        return (("/lib/libopenblas.so", key), key, self.size, cap, self.set)


def test_adjust_lowers_to_the_target_and_restores_the_ceiling_never_above() -> None:
    pools = _share.Pools()
    blas = Pool(2)
    assert pools.adjust([blas.row()], 1) == [(("/lib/libopenblas.so", "openblas"), 2, 1)]
    assert blas.size == 1 and pools.lowered()
    assert pools.adjust([blas.row()], 1) == []  # already there
    assert pools.adjust([blas.row()], 4) == [(("/lib/libopenblas.so", "openblas"), 1, 2)]
    assert blas.size == 2 and not pools.lowered()  # back at its ceiling, not at the target of 4
    assert blas.calls == [1, 2]


def test_adjust_never_raises_a_pool_the_program_lowered() -> None:
    pools = _share.Pools()
    blas = Pool(2)
    pools.adjust([blas.row()], 2)
    blas.size = 1  # the program's own threadpool_limits(1)
    assert pools.adjust([blas.row()], 2) == []
    assert pools.adjust([blas.row()], 1) == []
    assert pools.adjust([blas.row()], 2) == [] and blas.size == 1
    assert not pools.lowered()


def test_adjust_takes_a_pool_the_program_raised_as_the_new_ceiling() -> None:
    pools = _share.Pools()
    blas = Pool(2)
    pools.adjust([blas.row(cap=None)], 1)
    blas.size = 4  # the program raised it (no cap)
    assert pools.adjust([blas.row(cap=None)], 1) == [(("/lib/libopenblas.so", "openblas"), 4, 1)]
    assert pools.adjust([blas.row(cap=None)], 8) == [(("/lib/libopenblas.so", "openblas"), 1, 4)]


def test_adjust_holds_pools_to_a_build_limit_but_leaves_an_escape_over_the_cap_to_the_verdict() -> None:
    pools = _share.Pools()
    blas, omp = Pool(4), Pool(4)
    changed = pools.adjust([blas.row(cap=2), omp.row("openmp", cap=None)], None, {"openmp": 3})
    # The BLAS pool over its cap of 2 is the program's escape: warned (or enforced), not shared away.
    assert (blas.size, omp.size) == (4, 3)
    assert len(changed) == 1
    # A share below it lowers it, as any pool.
    assert pools.adjust([blas.row(cap=2)], 1) == [(blas.row()[0], 4, 1)] and blas.size == 1


def test_adjust_skips_what_is_no_pool_size_and_survives_a_failing_setter() -> None:
    pools = _share.Pools()
    rows = [(("a", "x"), "blas", value, 2, Pool(0).set) for value in (None, True, 0, -1, "2", 1.5)]
    assert pools.adjust(rows, 1) == []
    assert pools.owned == {}
    failing = Pool(2, fail=True)
    assert pools.adjust([failing.row()], 1) == []
    assert failing.calls == [1] and failing.size == 2
    unsettable = (("b", "y"), "blas", 2, 2, None)
    assert pools.adjust([unsettable], 1) == []


def test_adjust_undoes_a_lowering_done_at_start() -> None:
    """A pool at the value lower_at_start set: its ceiling is the value
    before it (or the cap, when the variable was unset), so sharing can
    give back what the start took."""
    blas, omp, numba = Pool(1), Pool(1), Pool(1)
    pools = _share.Pools({"openblas": ("1", "3"), "openmp": ("1", None), "numba": ("1", "auto")})
    rows = [blas.row(cap=4), omp.row("openmp", cap=2), numba.row("numba", cap=None)]
    assert pools.adjust(rows, 1) == []
    pools.adjust([blas.row(cap=4), omp.row("openmp", cap=2), numba.row("numba", cap=None)], 8)
    assert (blas.size, omp.size, numba.size) == (3, 2, 1)


def test_a_start_base_does_not_apply_to_a_pool_at_another_size() -> None:
    blas = Pool(2)  # not the 1 set at start: the program's own
    pools = _share.Pools({"openblas": ("1", "4")})
    pools.adjust([blas.row(cap=None)], 8)
    assert blas.size == 2


# --- Sharer ---------------------------------------------------------------------------------------------------


def test_thread_busy_tells_a_working_thread_from_a_sleeping_one() -> None:
    stop = threading.Event()
    worker = threading.Thread(target=hashing, args=(stop,))
    sleeper = threading.Thread(target=stop.wait)
    worker.start()
    sleeper.start()
    try:
        states = {}
        for thread in (worker, sleeper):
            assert thread.ident is not None and thread.native_id is not None
            busy, counters = _share.thread_busy(thread.ident, thread.native_id, 1.0, None)
            assert busy is False  # no baseline yet
            states[thread] = counters
        began = time.monotonic()
        time.sleep(0.5)
        elapsed = time.monotonic() - began
        seen = {thread: _share.thread_busy(thread.ident, thread.native_id, elapsed, states[thread])
                for thread in (worker, sleeper)}
        assert seen[sleeper] is not None and seen[sleeper][0] is False
        assert seen[worker] is not None and seen[worker][0] is True
    finally:
        stop.set()
        worker.join(timeout=10)
        sleeper.join(timeout=10)


def test_a_sharer_alone_keeps_every_cpu_and_publishes_itself(table: _share.Table) -> None:
    assert table.claim(ME, MY_START) == 0
    sharer = _share.Sharer(table, ME, MY_START)
    sharer.measure(len(sys.modules))
    time.sleep(0.1)
    assert sharer.tick(len(sys.modules), []) == 2
    assert _share.read_table(table.fd)[0][5] == 2
    record = sharer.record()
    assert set(record) == {"cpus", "now", "low", "high", "changes", "busy_peak", "threads_peak", "samples"}
    assert (record["cpus"], record["now"], record["low"], record["high"], record["changes"]) == (2, 2, 2, 2, 0)


def test_a_sharer_takes_its_share_when_a_sibling_is_busy_and_all_back_after(table: _share.Table) -> None:
    assert table.claim(ME, MY_START) == 0
    sibling = ME + 1
    sharer = _share.Sharer(table, ME, MY_START, busy=True)
    sharer.measure(len(sys.modules))
    put(table, 1, sibling)
    time.sleep(0.06)
    assert sharer.tick(len(sys.modules), []) == 1
    put(table, 1, sibling, flags=0)
    time.sleep(0.06)
    assert sharer.tick(len(sys.modules), []) == 2
    record = sharer.record()
    assert (record["low"], record["high"], record["changes"], record["busy_peak"]) == (1, 2, 1, 2)
    assert [sample[1:] for sample in record["samples"]] == [[1, 2], [2, 1]]


def test_a_busy_process_counts_as_idle_only_after_a_hold(table: _share.Table) -> None:
    """A process that was busy and now sleeps stays busy for a while (a
    task's gap hands no CPUs around), then turns idle for good."""
    assert table.claim(ME, MY_START) == 0
    sharer = _share.Sharer(table, ME, MY_START, busy=True)
    sharer.measure(len(sys.modules))
    flags: list[int] = []
    deadline = time.monotonic() + 10
    while not flags or flags[-1]:
        assert time.monotonic() < deadline, flags
        time.sleep(0.06)  # this process sleeps: idle
        sharer.tick(len(sys.modules), [])
        flags.append(_share.read_table(table.fd)[0][4] & _share.BUSY_FLAG)
    assert flags[0] == 1 and flags[-1] == 0, flags
    for _ in range(3):
        time.sleep(0.06)
        sharer.tick(len(sys.modules), [])
        assert not _share.read_table(table.fd)[0][4] & _share.BUSY_FLAG


def hashing(stop: threading.Event) -> None:
    """Work that leaves the GIL (hashlib does, on large buffers): a thread
    of it is busy whatever the other Python threads do."""
    import hashlib

    data = bytes(1 << 20)
    while not stop.is_set():
        hashlib.sha256(data).digest()


def test_busy_python_threads_split_the_processs_share(table: _share.Table) -> None:
    assert table.claim(ME, MY_START) == 0
    stop = threading.Event()
    workers = [threading.Thread(target=hashing, args=(stop,)) for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        ids = [(w.ident, w.native_id) for w in workers]
        sharer = _share.Sharer(table, ME, MY_START)
        sharer.measure(len(sys.modules))
        shares = []
        for _ in range(3):  # the first measures the threads' baseline
            time.sleep(0.3)
            shares.append(sharer.tick(len(sys.modules), ids))
        assert shares[-1] == 1, shares  # 2 CPUs, 2 busy threads
        assert sharer.record()["threads_peak"] == 2
        assert _share.read_table(table.fd)[0][6] == 2
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=10)


def test_the_samples_stay_bounded_and_thinned() -> None:
    class Fake:
        cpus = 4

    sharer = _share.Sharer(Fake(), ME, MY_START)
    for step in range(5000):
        sharer.note(1 + step % 2, 2)
    record = sharer.record()
    assert len(record["samples"]) < _share.MAX_SAMPLES
    assert record["changes"] == 4999 and (record["low"], record["high"]) == (1, 2)
    times = [sample[0] for sample in record["samples"]]
    assert times == sorted(times)

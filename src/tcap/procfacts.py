"""Process facts: the tree of processes under one, and per process its
parent, thread count, CPU time, name, command line, start time and memory;
and how busy each CPU is.

Two backends behind one interface, chosen once per process: ``/proc`` on
Linux (standard library only, one read of ``/proc/PID/stat`` per process:
it is on the launch path of ``cpus = "auto:N"`` and ~3x cheaper than psutil
for the report sampler, see docs/benchmarks.md), and psutil wherever
``/proc`` is not (macOS, the BSDs, Windows).  ``TCAP_PROCESS_FACTS=proc``
or ``psutil`` selects one (the tests run both on the same trees).

Per thread (:meth:`ProcBackend.threads`, for the report sampler's busy
threads): on Linux how long each thread ran or waited to run
(``/proc/PID/task/TID/schedstat``), elsewhere psutil's threads' CPU times
(no waiting: a documented blind spot on a loaded machine); at most
MOST_THREADS threads of one process are read at a sample.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

    #: pid -> (ppid, threads, CPU seconds, name)
    Tree = dict[int, tuple[int, int, float, bytes]]


#: Every FULL-th look-up of a tree reads every process of the machine; the
#: others read only the tree's members and the processes new since the last
#: look-up (a process outside the tree stays outside: only a new one can
#: join it; the full look-up catches a pid reused meanwhile).
FULL = 8

#: The most threads of one process read at a sample (the first the kernel
#: lists, in the order they were created): a process with more is counted
#: from these, so that one with a huge number of threads cannot make a
#: sample slow.
MOST_THREADS = 4096


def _read(path: str, size: int = 4096) -> bytes:
    """The start of a /proc file (one read: the kernel makes these at once;
    os.open is twice as fast as open() here); OSError."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


def proc_stat(pid: int) -> tuple[bytes, list[bytes]] | None:
    """(command name, the fields after it) of ``/proc/PID/stat``, or None if
    the process is gone. The name is in parentheses and may hold anything, so
    the fields start after the last ``)``: state is ``fields[0]``, ppid
    ``fields[1]``, utime/stime ``fields[11:13]``, threads ``fields[17]``,
    start time ``fields[19]``."""
    try:
        data = _read(f"/proc/{pid}/stat")
        end = data.rindex(b")")
        return data[data.index(b"(") + 1 : end], data[end + 2 :].split()
    except (OSError, ValueError):
        return None


def proc_start_time(pid: int) -> int | None:
    """When ``pid`` started, from ``/proc/PID/stat`` (clock ticks since
    boot); None when it is gone or a zombie."""
    found = proc_stat(pid)
    if found is None:
        return None
    fields = found[1]
    try:
        return None if fields[0] in (b"Z", b"X") else int(fields[19])
    except (ValueError, IndexError):
        return None


class ProcBackend:
    """Linux's /proc, read directly."""

    name = "proc"

    def __init__(self) -> None:
        self.tick = os.sysconf("SC_CLK_TCK")
        #: root -> {pid: start time} of its tree at the last look-up.
        self.members: dict[int, dict[int, int]] = {}
        #: root -> the pids outside its tree at the last look-up, and how many look-ups.
        self.outside: dict[int, set[int]] = {}
        self.scans: dict[int, int] = {}
        #: How many thread files :meth:`threads` read (the tests see that
        #: an idle process costs none).
        self.thread_reads = 0
        #: Whether the kernel has schedstat (CONFIG_SCHED_INFO); else each
        #: thread's stat, without the time it waited.
        self.schedstat = True

    def tree(self, root: int, rescan: bool = True) -> Tree:
        """``root`` and its descendants: pid -> (ppid, threads, CPU seconds,
        name). ``rescan``: look them up among the processes of the machine (a
        read of the stat of each member and each process new since, of
        every one at every FULL-th); else read again the members the last
        look-up found (those still there and not a new process under a
        reused pid), without the processes started since."""
        known = self.members.get(root)
        everything: list[int] = []
        if not rescan and known is not None:
            pids: list[int] = list(known)
        else:
            try:
                everything = [int(name) for name in os.listdir("/proc") if name.isdigit()]
            except OSError:
                return {}
            count = self.scans[root] = self.scans.get(root, 0) + 1
            outside = self.outside.get(root) if known is not None and count % FULL else None
            pids = everything if outside is None else [pid for pid in everything if pid not in outside]
            known = None
        stats: Tree = {}
        starts: dict[int, int] = {}
        for pid in pids:
            found = proc_stat(pid)
            if found is None:
                continue
            comm, fields = found
            try:
                start = int(fields[19])
                if known is not None and known[pid] != start:
                    continue  # another process under the pid since
                stats[pid] = (int(fields[1]), int(fields[17]), (int(fields[11]) + int(fields[12])) / self.tick, comm)
                starts[pid] = start
            except (ValueError, IndexError):
                continue
        if known is not None:
            return stats
        tree = _descendants(stats, root)
        if tree:
            self.members[root] = {pid: starts[pid] for pid in tree}
            self.outside[root] = set(everything).difference(tree)
        else:
            for table in (self.members, self.outside, self.scans):
                table.pop(root, None)
        return tree

    def threads(self, pid: int, count: int = 0) -> dict[int, int] | None:
        """tid -> nanoseconds each thread of ``pid`` has run or waited to run
        (``/proc/PID/task/TID/schedstat``: the first two fields), for at
        most MOST_THREADS of them; a thread gone meanwhile is left out. None
        when its threads cannot be read (it is gone, or /proc hides it).
        ``count``: its thread count, if known (psutil's backend uses it)."""
        task = f"/proc/{pid}/task"
        flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
        try:
            directory = os.open(task, flags | getattr(os, "O_DIRECTORY", 0))
        except OSError:
            return None
        out: dict[int, int] = {}
        try:
            tids = os.listdir(directory)[:MOST_THREADS]
            for name in tids:
                self.thread_reads += 1
                try:  # relative to the directory's descriptor: the kernel looks up the thread only
                    fd = os.open(f"{name}/schedstat" if self.schedstat else f"{name}/stat", flags, dir_fd=directory)
                except FileNotFoundError:
                    if self.schedstat and os.path.isdir(f"{task}/{name}"):  # a kernel without schedstat
                        self.schedstat = False
                        return self.threads(pid, count)
                    continue
                except OSError:
                    continue
                try:
                    data = os.read(fd, 128 if self.schedstat else 4096)
                except OSError:  # the thread ended meanwhile
                    continue
                finally:
                    os.close(fd)
                try:
                    if self.schedstat:
                        fields = data.split()
                        out[int(name)] = int(fields[0]) + int(fields[1])
                    else:
                        fields = data[data.rindex(b")") + 2 :].split()
                        out[int(name)] = (int(fields[11]) + int(fields[12])) * 1_000_000_000 // self.tick
                except (ValueError, IndexError):
                    continue
        except OSError:
            return None
        finally:
            os.close(directory)
        return out

    def age(self, pid: int) -> float | None:
        """Seconds since ``pid`` started (None: gone)."""
        start = self.start_time(pid)
        try:
            uptime = float(_read("/proc/uptime", 64).split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return None if start is None else max(0.0, uptime - start / self.tick)

    def thread_names(self, pid: int, tids: Iterable[int]) -> dict[int, str]:
        """tid -> the OS name of each of ``tids`` (``comm``, printable, at most
        16 characters) still there."""
        out = {}
        for tid in tids:
            try:
                raw = _read(f"/proc/{pid}/task/{tid}/comm", 64)
            except OSError:
                continue
            out[tid] = "".join(c if c.isprintable() else "?" for c in raw.decode(errors="replace").strip())[:16]
        return out

    def cmdline(self, pid: int) -> list[str]:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                data = f.read()
            if data:
                return [part.decode(errors="replace") for part in data.rstrip(b"\0").split(b"\0")]
            with open(f"/proc/{pid}/comm", "rb") as f:  # a zombie's command line is empty
                return [f"[{f.read().strip().decode(errors='replace')}]"]
        except OSError:
            return []

    def start_time(self, pid: int) -> int | None:
        """When ``pid`` started (clock ticks since boot); None when it is gone
        or a zombie (dead, not yet collected by its parent)."""
        return proc_start_time(pid)

    def is_zombie(self, pid: int) -> bool:
        """Whether ``pid``, whose start time cannot be read, is a zombie (its
        /proc entry is there); a process /proc hides (hidepid) is not."""
        return os.path.exists(f"/proc/{pid}")

    def memory(self, pid: int) -> tuple[int, int]:
        """(resident bytes now, peak resident bytes) of ``pid``; 0 when unknown."""
        rss = peak = 0
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmRSS:"):
                        rss = int(line.split()[1]) * 1024
                    elif line.startswith(b"VmHWM:"):
                        peak = int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        return rss, peak

    def cpu_times(self) -> dict[int, tuple[float, float]]:
        """Per CPU: (total, idle) time since boot, in ticks."""
        out = {}
        try:
            with open("/proc/stat") as f:
                for line in f:
                    if line.startswith("cpu") and line[3].isdigit():
                        name, *fields = line.split()
                        values = [int(v) for v in fields]
                        idle = values[3] + (values[4] if len(values) > 4 else 0)
                        out[int(name[3:])] = (float(sum(values)), float(idle))
        except (OSError, ValueError, IndexError):
            pass
        return out


class PsutilBackend:
    """psutil, where there is no /proc to read (imported only here)."""

    name = "psutil"

    #: The tree's members are looked up (a scan of every process's parent)
    #: at every REFRESH-th call; in between, the known members are read again,
    #: their parents as found, and the thread count only of those whose CPU
    #: time moved (else the count they had: on Linux reading it is half of a
    #: process's cost).
    REFRESH = 2

    def __init__(self) -> None:
        import psutil

        self.psutil = psutil
        self.members: dict[int, list[Any]] = {}
        #: As ProcBackend's: the pids outside each tree, and the look-ups.
        self.outside: dict[int, set[int]] = {}
        self.scans: dict[int, int] = {}
        #: pid -> its psutil.Process, as the last look-up found it.
        self.processes: dict[int, Any] = {}
        self.calls = 0
        self.thread_reads = 0
        #: pid -> (CPU seconds, threads, parent) at its last read.
        self.counts: dict[int, tuple[float, int, int]] = {}

    def tree(self, root: int, rescan: bool | None = None) -> Tree:
        """As :meth:`ProcBackend.tree`; ``rescan`` None: at every REFRESH-th call."""
        psutil = self.psutil
        self.calls += 1
        members = self.members.get(root)
        scan = members is None or (self.calls % self.REFRESH == 0 if rescan is None else rescan)
        parents: dict[int, int] = {}
        if scan:
            found = self._look_up(root, members is not None)
            if found is None:
                for table in (self.members, self.outside, self.scans):
                    table.pop(root, None)
                return {}
            members, parents = found
        stats = {}
        counts = self.counts
        for process in members or ():
            try:
                with process.oneshot():
                    times = process.cpu_times()
                    cpu = times.user + times.system
                    last = counts.get(process.pid)
                    threads = last[1] if not scan and last is not None and last[0] == cpu else process.num_threads()
                    # ppid() reads its stat again (psutil checks the pid was not reused): at look-ups only.
                    ppid = parents.get(process.pid) if scan or last is None else last[2]
                    if ppid is None:
                        ppid = process.ppid()
                    stats[process.pid] = (ppid, threads, cpu, process.name().encode(errors="replace")[:15])
                    counts[process.pid] = (cpu, threads, ppid)
            except (psutil.Error, OSError):
                continue
        if scan and len(counts) > 2 * len(stats) + 1024:
            self.counts = {pid: counts[pid] for pid in stats}
        return stats

    def _look_up(self, root: int, again: bool) -> tuple[list[Any], dict[int, int]] | None:
        """The processes of ``root``'s tree and their parents, found among
        the machine's (each member and each process new since the last
        look-up; every one at every FULL-th); None when ``root`` is gone."""
        psutil = self.psutil
        try:
            everything = psutil.pids()
        except (psutil.Error, OSError):
            return None
        count = self.scans[root] = self.scans.get(root, 0) + 1
        outside = self.outside.get(root) if again and count % FULL else None
        parents: dict[int, int] = {}
        if outside is None:  # every process: psutil's own look-up (one read each), parents read with the members
            try:
                top = psutil.Process(root)
                members = [top, *top.children(recursive=True)]
            except (psutil.Error, OSError):
                return None
            self.processes = {process.pid: process for process in members}
            self.members[root] = members
            self.outside[root] = set(everything).difference(self.processes)
            return members, parents
        found: dict[int, Any] = {}
        for pid in everything:
            if pid in outside:
                continue
            process = self.processes.get(pid)
            last = self.counts.get(pid)
            if process is not None and last is not None:  # a member: its parent as last read (FULL reads it again)
                parents[pid] = last[2]
                found[pid] = process
                continue
            try:
                process = process or psutil.Process(pid)
                parents[pid] = process.ppid()
            except (psutil.Error, OSError):
                continue
            found[pid] = process
        if root not in found:
            return None
        children: dict[int, list[int]] = {}
        for pid, ppid in parents.items():
            if pid != ppid:
                children.setdefault(ppid, []).append(pid)
        tree, todo = [], [root]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo.extend(children.get(pid, ()))
        self.members[root] = members = [found[pid] for pid in tree]
        self.processes = {process.pid: process for process in members}
        self.outside[root] = set(everything).difference(tree)
        return members, parents

    def threads(self, pid: int, count: int = 0) -> dict[int, int] | None:
        """tid -> nanoseconds of CPU time (user and system) of each thread of
        ``pid``: psutil has no time waited for a CPU. None when they cannot be
        read, or when ``count`` (its thread count) is over MOST_THREADS
        (psutil reads them all)."""
        psutil = self.psutil
        if count > MOST_THREADS:
            return None
        process = self.processes.get(pid)
        try:
            if process is None:
                process = self.processes[pid] = psutil.Process(pid)
            found = process.threads()
        except (psutil.Error, OSError):
            return None
        self.thread_reads += len(found)
        return {thread.id: round((thread.user_time + thread.system_time) * 1e9) for thread in found[:MOST_THREADS]}

    def thread_names(self, pid: int, tids: Iterable[int]) -> dict[int, str]:
        """None known: psutil does not name threads."""
        return {}

    def age(self, pid: int) -> float | None:
        """Seconds since ``pid`` started (None: gone)."""
        import time

        psutil = self.psutil
        process = self.processes.get(pid)
        try:
            return max(0.0, time.time() - float((process or psutil.Process(pid)).create_time()))
        except (psutil.Error, OSError):
            return None

    def cmdline(self, pid: int) -> list[str]:
        psutil = self.psutil
        try:
            process = psutil.Process(pid)
            return list(process.cmdline()) or [f"[{process.name()}]"]
        except (psutil.Error, OSError):
            return []

    def start_time(self, pid: int) -> int | None:
        psutil = self.psutil
        try:
            process = psutil.Process(pid)
            if process.status() == psutil.STATUS_ZOMBIE:
                return None
            return int(process.create_time() * 100)
        except (psutil.Error, OSError):
            return None

    def is_zombie(self, pid: int) -> bool:
        psutil = self.psutil
        try:
            return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
        except (psutil.Error, OSError):
            return False

    def memory(self, pid: int) -> tuple[int, int]:
        psutil = self.psutil
        try:
            info = psutil.Process(pid).memory_info()
        except (psutil.Error, OSError):
            return 0, 0
        return info.rss, int(getattr(info, "peak_wset", 0) or 0)  # a peak only where the OS keeps one (Windows)

    def cpu_times(self) -> dict[int, tuple[float, float]]:
        try:
            times = self.psutil.cpu_times(percpu=True)
        except (self.psutil.Error, OSError):
            return {}
        out = {}
        for cpu, t in enumerate(times):
            idle = t.idle + getattr(t, "iowait", 0.0)
            out[cpu] = (float(sum(t)), float(idle))
        return out


def _descendants(stats: Tree, root: int) -> Tree:
    children: dict[int, list[int]] = {}
    for pid, (ppid, *_) in stats.items():
        children.setdefault(ppid, []).append(pid)
    if root not in stats:
        return {}
    out = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        out[pid] = stats[pid]
        todo.extend(children.get(pid, ()))
    return out


_chosen: list[ProcBackend | PsutilBackend] = []


def backend() -> ProcBackend | PsutilBackend:
    """The backend for this process, chosen once."""
    if not _chosen:
        wanted = os.environ.get("TCAP_PROCESS_FACTS", "")
        if wanted == "psutil" or (wanted != "proc" and not os.path.exists("/proc/self/stat")):
            _chosen.append(PsutilBackend())
        else:
            _chosen.append(ProcBackend())
    return _chosen[0]


def busy_share(cpus: Iterable[int], before: dict[int, tuple[float, float]],
               after: dict[int, tuple[float, float]]) -> dict[int, float]:
    """Share of the time between two ``cpu_times()`` each CPU was busy (0 when unknown)."""
    busy = {}
    for cpu in cpus:
        if cpu in before and cpu in after:
            total = after[cpu][0] - before[cpu][0]
            idle = after[cpu][1] - before[cpu][1]
            # Clamped: the kernel's per-CPU iowait counter can run backwards.
            busy[cpu] = min(1.0, max(0.0, (total - idle) / total)) if total > 0 else 0.0
        else:
            busy[cpu] = 0.0
    return busy

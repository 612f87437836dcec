"""Process facts: the tree of processes under one, and per process its
parent, thread count, CPU time, name, command line, start time and memory;
and how busy each CPU is.

Two backends behind one interface, chosen once per process: ``/proc`` on
Linux (standard library only, one read of ``/proc/PID/stat`` per process:
it is on the launch path of ``cpus = "auto:N"`` and ~3x cheaper than psutil
for the report sampler, see docs/benchmarks.md), and psutil wherever
``/proc`` is not (macOS, the BSDs, Windows).  ``TCAP_PROCESS_FACTS=proc``
or ``psutil`` selects one (the tests run both on the same trees).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

    #: pid -> (ppid, threads, CPU seconds, name)
    Tree = dict[int, tuple[int, int, float, bytes]]


def proc_stat(pid: int) -> tuple[bytes, list[bytes]] | None:
    """(command name, the fields after it) of ``/proc/PID/stat``, or None if
    the process is gone. The name is in parentheses and may hold anything, so
    the fields start after the last ``)``: state is ``fields[0]``, ppid
    ``fields[1]``, utime/stime ``fields[11:13]``, threads ``fields[17]``,
    start time ``fields[19]``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        end = data.rindex(b")")
        return data[data.index(b"(") + 1 : end], data[end + 2 :].split()
    except (OSError, ValueError):
        return None


class ProcBackend:
    """Linux's /proc, read directly."""

    name = "proc"

    def __init__(self) -> None:
        self.tick = os.sysconf("SC_CLK_TCK")

    def tree(self, root: int) -> Tree:
        """``root`` and its descendants: pid -> (ppid, threads, CPU seconds, name)."""
        stats: Tree = {}
        try:
            names = os.listdir("/proc")
        except OSError:
            return {}
        for name in names:
            if not name.isdigit():
                continue
            found = proc_stat(int(name))
            if found is None:
                continue
            comm, fields = found
            try:
                stats[int(name)] = (int(fields[1]), int(fields[17]), (int(fields[11]) + int(fields[12])) / self.tick,
                                    comm)
            except (ValueError, IndexError):
                continue
        return _descendants(stats, root)

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
        found = proc_stat(pid)
        if found is None:
            return None
        fields = found[1]
        try:
            return None if fields[0] in (b"Z", b"X") else int(fields[19])
        except (ValueError, IndexError):
            return None

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
    #: at every REFRESH-th call; in between, the known members are read again.
    REFRESH = 2

    def __init__(self) -> None:
        import psutil

        self.psutil = psutil
        self.members: dict[int, list[Any]] = {}
        self.calls = 0

    def tree(self, root: int) -> Tree:
        psutil = self.psutil
        self.calls += 1
        members = self.members.get(root)
        if members is None or self.calls % self.REFRESH == 0:
            try:
                top = psutil.Process(root)
                members = self.members[root] = [top, *top.children(recursive=True)]
            except (psutil.Error, OSError):
                self.members.pop(root, None)
                return {}
        stats = {}
        for process in members:
            try:
                with process.oneshot():
                    times = process.cpu_times()
                    stats[process.pid] = (process.ppid(), process.num_threads(), times.user + times.system,
                                          process.name().encode(errors="replace")[:15])
            except (psutil.Error, OSError):
                continue
        return stats

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

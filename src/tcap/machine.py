"""Machine facts: which CPUs this process may use, and how many it may keep busy.

Read from the kernel's own files (``/proc``, ``/sys``) and Slurm's
environment, never through psutil, because this runs in front of every
launch.  Every reader takes a ``root`` so tests can point it at a fake
filesystem.  A fact that cannot be read is ``None``, not a guess.
"""

from __future__ import annotations

import os

from tcap.cpuset import Keyed, format_cpu_list, parse_cpu_list

# This module is on the launch path: no dataclasses/typing at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from tcap.ranks import Ranks


class Machine(Keyed):
    """What the launcher knows about the CPUs it runs on.

    ``allowed`` is the affinity mask (``None`` where the OS has none);
    ``quota`` the CPU bandwidth limit from cgroups in CPUs (1.5 means
    150 ms per 100 ms), with ``quota_source`` naming the file it came from;
    ``slurm`` the CPUs Slurm allocated to this task; ``cores`` maps each
    allowed CPU to its physical core (package, core id) when sysfs says.
    """

    __slots__ = ("allowed", "quota", "quota_source", "slurm", "slurm_source", "cores", "online", "ranks",
                 "launcher_cpus")

    def __init__(
        self,
        allowed: frozenset[int] | None,
        quota: float | None = None,
        quota_source: str | None = None,
        slurm: int | None = None,
        slurm_source: str | None = None,
        cores: Mapping[int, tuple[int, int]] | None = None,
        online: int | None = None,
        ranks: Ranks | None = None,
        launcher_cpus: frozenset[int] | None = None,
    ) -> None:
        self.allowed = allowed
        self.quota = quota
        self.quota_source = quota_source
        self.slurm = slurm
        self.slurm_source = slurm_source
        self.cores = cores
        #: ``os.cpu_count()``: the count where there is no affinity mask, and
        #: what libraries that ignore the mask start.
        self.online = online
        #: The ranks of a launcher (Slurm, MPI, torchrun) this process is one of.
        self.ranks = ranks
        #: The CPUs of the process that started the ranks: what they share.
        self.launcher_cpus = launcher_cpus

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"Machine({fields})"

    def key(self) -> tuple[object, ...]:
        """A hashable, marshal-able summary (the plan cache keys on it)."""
        cores = None if self.cores is None else tuple(sorted(self.cores.items()))
        allowed = None if self.allowed is None else tuple(sorted(self.allowed))
        ranks = None if self.ranks is None else self.ranks.key()
        launcher = None if self.launcher_cpus is None else tuple(sorted(self.launcher_cpus))
        return (allowed, self.quota, self.slurm, cores, self.online, ranks, launcher)


def read_machine(
    *,
    topology: bool = False,
    environ: Mapping[str, str] | None = None,
    root: str = "/",
) -> Machine:
    """Read this process's machine facts; ``topology`` also reads core ids."""
    environ = os.environ if environ is None else environ
    if root == "/":
        # A machine described as data (a fixture /proc and /sys tree), for
        # `tcap show` and `tcap doctor` about a machine one does not have.
        root = environ.get("TCAP_SYSROOT") or "/"
    allowed = read_affinity(root)
    quota, quota_source = read_cgroup_quota(root)
    slurm, slurm_source = read_slurm(environ)
    cores = read_cores(allowed, root) if topology and allowed is not None else None
    ranks = launcher_cpus = None
    if any(name in environ for name in ("SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID",
                                        "LOCAL_RANK")):
        from tcap.ranks import read_ranks

        ranks = read_ranks(environ, hostname())
    if ranks is not None and root == "/":
        launcher_cpus = read_launcher_cpus()
    return Machine(allowed, quota, quota_source, slurm, slurm_source, cores, read_online(root), ranks, launcher_cpus)


#: Process names (``comm``) of the processes that start ranks on a node.
LAUNCHER_NAMES = frozenset((b"orted", b"prted", b"mpirun", b"mpiexec", b"orterun", b"prterun", b"hydra_pmi_proxy",
                            b"mpiexec.hydra", b"slurmstepd", b"torchrun"))


def hostname() -> str:
    """This machine's name (os.uname, which Windows lacks, else its variable)."""
    return os.uname().nodename if hasattr(os, "uname") else os.environ.get("COMPUTERNAME", "")


def read_launcher_cpus(depth: int = 16) -> frozenset[int] | None:
    """The CPUs of the process that started this rank: the nearest ancestor
    named like a launcher (a shell between it and tcap may have inherited a
    rank's binding), else the parent."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    from tcap.procfacts import proc_stat

    parent = pid = os.getppid()
    for _ in range(depth):
        found = proc_stat(pid)
        if found is None:
            break
        if found[0] in LAUNCHER_NAMES:
            parent = pid
            break
        try:
            pid = int(found[1][1])
        except (ValueError, IndexError):
            break
        if pid <= 1:
            break
    try:
        return frozenset(os.sched_getaffinity(parent))
    except OSError:
        return None


def read_online(root: str = "/") -> int | None:
    """The online CPU count (``os.cpu_count()``), whatever the affinity mask:
    what libraries that ignore the mask (numexpr, Blosc) count."""
    if root == "/":
        return os.cpu_count()
    text = _read(root, "sys/devices/system/cpu/online")
    try:
        return len(parse_cpu_list(text)) if text else None
    except ValueError:
        return None


def read_numa(root: str = "/") -> list[frozenset[int]] | None:
    """The CPUs of each NUMA node, from sysfs; None where sysfs lacks them."""
    base = os.path.join(root, "sys/devices/system/node")
    try:
        names = [n for n in os.listdir(base) if n.startswith("node") and n[4:].isdigit()]
        names.sort(key=lambda n: int(n[4:]))
    except OSError:
        return None
    nodes = []
    for name in names:
        text = _read(os.path.join(base, name), "cpulist")
        try:
            nodes.append(parse_cpu_list(text) if text else frozenset())
        except ValueError:
            return None
    return nodes or None


def read_affinity(root: str = "/") -> frozenset[int] | None:
    """The CPUs this process may run on.

    With the real root this is ``sched_getaffinity``; under a fake root it is
    the ``Cpus_allowed_list`` line of ``proc/self/status``.
    """
    if root == "/":
        if hasattr(os, "sched_getaffinity"):
            return frozenset(os.sched_getaffinity(0))
        from tcap.procfacts import backend

        if backend().name != "proc":  # macOS, the BSDs, Windows: no mask to read or set
            return None
        # Linux, from an interpreter without the call (PyPy): the kernel's own line.
    text = _read(root, "proc/self/status")
    for line in (text or "").splitlines():
        if line.startswith("Cpus_allowed_list:"):
            try:
                return parse_cpu_list(line.split(":", 1)[1])
            except ValueError:
                return None
    return None


def read_cgroup_quota(root: str = "/") -> tuple[float | None, str | None]:
    """The tightest CPU quota over this process's cgroup and its ancestors.

    cgroup v2 ``cpu.max`` ("max 100000" or "150000 100000") and v1
    ``cpu.cfs_quota_us``/``cpu.cfs_period_us`` (-1 means none).  The
    process's cgroup comes from ``/proc/self/cgroup``; a limit set on any
    ancestor applies too, so every level up to the mount is read.  Returns
    (CPUs, file) or (None, None) when no quota applies or none is readable.
    """
    text = _read(root, "proc/self/cgroup")
    if text is None:
        return None, None
    best: tuple[float | None, str | None] = (None, None)
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            mounts = ["sys/fs/cgroup", "sys/fs/cgroup/unified"]
            reader = _read_v2
        elif "cpu" in controllers.split(","):
            mounts = ["sys/fs/cgroup/" + controllers, "sys/fs/cgroup/cpu", "sys/fs/cgroup/cpu,cpuacct"]
            reader = _read_v1
        else:
            continue
        for mount in dict.fromkeys(mounts):
            for directory in _ancestors(path):
                full = os.path.join(root, mount, directory)
                found = reader(full)
                if found is not None and (best[0] is None or found < best[0]):
                    best = (found, os.path.join("/", mount, directory))
    return best


def _ancestors(path: str) -> list[str]:
    """``/a/b`` -> ``["a/b", "a", ""]``: the cgroup and each level above it."""
    parts = [p for p in path.strip().split("/") if p]
    return ["/".join(parts[:n]) for n in range(len(parts), -1, -1)]


def _read_v2(directory: str) -> float | None:
    text = _read(directory, "cpu.max")
    if text is None:
        return None
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _read_v1(directory: str) -> float | None:
    quota_text = _read(directory, "cpu.cfs_quota_us")
    period_text = _read(directory, "cpu.cfs_period_us")
    if quota_text is None or period_text is None:
        return None
    try:
        quota, period = int(quota_text), int(period_text)
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def read_slurm(environ: Mapping[str, str]) -> tuple[int | None, str | None]:
    """CPUs Slurm allocated to this task, from its environment, or None."""
    if "SLURM_JOB_ID" not in environ:
        return None, None
    for name in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"):
        value = environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value), name
    return None, None


def read_cores(allowed: frozenset[int], root: str = "/") -> dict[int, tuple[int, int]] | None:
    """Map each allowed CPU to its (package, core); None if sysfs lacks it."""
    cores: dict[int, tuple[int, int]] = {}
    for cpu in sorted(allowed):
        base = os.path.join(root, f"sys/devices/system/cpu/cpu{cpu}/topology")
        core = _read(base, "core_id")
        package = _read(base, "physical_package_id")
        if core is None or package is None:
            return None
        try:
            cores[cpu] = (int(package), int(core))
        except ValueError:
            return None
    return cores


def _read(directory: str, name: str) -> str | None:
    """A small kernel file (/proc, /sys, or a described machine's copy):
    opened without blocking and read no further than 64 KiB, so a FIFO or a
    huge file under TCAP_SYSROOT cannot hang or bloat a launch."""
    try:
        fd = os.open(os.path.join(directory, name), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        return os.read(fd, 1 << 16).decode("ascii", "replace").strip()
    except OSError:
        return None
    finally:
        os.close(fd)


def usable(machine: Machine, cpus: frozenset[int] | None) -> tuple[int, str]:
    """How many CPUs a process pinned to ``cpus`` can keep busy, and why.

    The smallest of: the CPU set, the cgroup quota (rounded up: a quota of
    1.5 CPUs keeps 2 threads busy 75% of the time), Slurm's allocation.
    """
    from tcap.plural import counted  # here: read_machine is on the launch path, this (the plan's why) is not

    reasons = []
    if cpus is not None:
        count = len(cpus)
        reasons.append(f"{counted(count, 'CPU')} in the set {format_cpu_list(cpus)}")
    else:
        count = machine.online or 1
        reasons.append(f"{counted(count, 'CPU')} reported by the OS (no affinity mask)")
    if machine.quota is not None:
        limit = max(1, -int(-machine.quota // 1))  # ceil, without importing math
        reasons.append(f"cgroup quota {counted(machine.quota, 'CPU')} ({machine.quota_source}) -> {limit}")
        count = min(count, limit)
    if machine.slurm is not None:
        reasons.append(f"Slurm {machine.slurm_source}={machine.slurm}")
        count = min(count, machine.slurm)
    return count, "; ".join(reasons)

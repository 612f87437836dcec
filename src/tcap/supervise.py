"""Supervised runs: ``tcap run --report``/``--report-json`` and ``verify = strict``.

Instead of exec-ing, tcap starts the command as its child with a private
report directory in ``TCAP_REPORT_DIR`` (where the probe of every Python
process of the run writes ``<pid>.json``), forwards signals to it, waits,
and then reads the records: strict turns a violation into exit code 86,
``--report`` prints a per-process table and a verdict, ``--report-json``
writes the same as JSON.  With a report, the process tree is also sampled
from /proc, so processes the probe cannot see
(``python -I``, ``sh``, any non-Python program) are listed as unverified.
``tcap report`` reads and merges the reports of many launches: tcap.reports.

Signals: tcap blocks the forwarded signals and SIGCHLD and waits for them
with ``sigtimedwait``, which tells who sent each one.  A signal sent with
kill(2) (``kill PID``, a batch system, a supervisor) is forwarded to the
child; one the kernel sent (Ctrl-C, Ctrl-\\, a window resize from the
terminal) already reached the child too, since it shares tcap's foreground
process group, and is not sent a second time.
"""

from __future__ import annotations

import json
import math
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from array import array

from tcap import fields, safefile
from tcap.errors import EXIT_IO, EXIT_VIOLATION, one_line, printable
from tcap.plural import counted

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any

    from tcap.ranks import Ranks

FORWARDED = tuple(
    getattr(signal, name)  # Windows has only SIGINT and SIGTERM of these
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGWINCH")
    if hasattr(signal, name)
)
#: si_code of a signal the kernel generated (terminal keys, SIGWINCH).
SI_KERNEL = 0x80
#: The same signal from the same sender within this many seconds is passed
#: on once (GNU timeout sends it to tcap and to tcap's process group, back to
#: back: the kernel merges the two for an exec'ed command).
REPEAT = 0.2
#: prctl(2) option: the signal the kernel sends a process when its parent dies.
PR_SET_PDEATHSIG = 1
#: The report directories: tcap-report-<pid>-<start time>-<random>.
REPORT_PREFIX = "tcap-report-"
#: Seconds between two samples of the process tree (psutil's backend, whose
#: reads cost about three times as much: PSUTIL_INTERVAL); its members are
#: looked up among every process of the machine every RESCAN seconds
#: (psutil's: PSUTIL_RESCAN; in between, the members found are read again:
#: a process started since is seen at the next look-up).
INTERVAL = 0.25
PSUTIL_INTERVAL = 0.5
RESCAN = 0.5
PSUTIL_RESCAN = 1.0
#: Width of the command column.
COMMAND_WIDTH = 40
#: A process counts toward the launch budget at a sample when it used at
#: least this share of one CPU since the previous sample.
BUSY = 0.2
#: A thread is busy over the interval between two samples when it ran or
#: waited to run (psutil's backend: ran) for at least this share of it.
BUSY_THREAD = 0.5
#: The launch is over its budget when the busy threads of its tree stay
#: above its CPUs for longer than this many seconds (a pool starting up, a
#: parent collecting results while its workers finish, or sharing lowering
#: the pools of workers that became busy together, takes less).
BUDGET_GRACE = 0.7
#: A process that started a program of its own (exec: its command line is
#: not its parent's) counts one busy thread less toward the budget until
#: this many seconds after it started and it has used this many seconds of
#: CPU time: interpreters started together import their modules at once (a
#: pool's workers and its helpers, such as a resource tracker starved by the
#: workers for seconds), one thread each, and that start-up is no pool's
#: doing (threads beyond the one are). A fork of its parent (a fork pool's
#: worker) has nothing to start and counts in full at once.
BUDGET_START = 1.0
BUDGET_START_CPU = 0.5
#: The most threads read at one sample (psutil's backend: its own): beyond,
#: the busy processes take turns, those read longest ago first, and the
#: others hold their last count (a tree of 64 busy processes of 4 threads
#: each has each process read every third sample).
THREAD_READS = 96
PSUTIL_THREAD_READS = 16
#: The changes of a process's busy threads kept while it runs (beyond this,
#: every other one is dropped) and in a report (thinned: :func:`thin`).
BUSY_SAMPLES_KEPT = 1024
BUSY_SAMPLES_REPORTED = 256


def needed(recipe: Mapping[str, Any], options: Mapping[str, Any]) -> bool:
    """Whether ``tcap run`` supervises rather than execs."""
    return recipe.get("verify") == "strict" or bool(options.get("report")) or bool(options.get("report_json")) \
        or bool(options.get("plot"))


def supervise(
    recipe: Mapping[str, Any],
    argv: Sequence[str],
    environ: Mapping[str, str],
    *,
    report: bool = False,
    report_json: str | None = None,
    after: Callable[[dict[str, Any], int], int] | None = None,
) -> int:
    """Run ``argv`` as a child under ``recipe``; return the exit code for tcap
    (``after``, given the report's data and that code once the report is
    written, returns the one to use: ``tcap run --plot``, tcap.plot)."""
    from tcap import launch
    from tcap.machine import hostname
    from tcap.ranks import read_ranks

    host = hostname()
    ranks = read_ranks(environ, host)
    destination = None
    if report_json:  # before anything starts: a report that cannot be written, and the command never runs
        destination = expand(report_json, ranks, host)
        check_destination(destination, "--report-json")
    env = launch.child_environ(recipe, environ)
    found = launch.find_command(argv[0], env)  # 127/126 before anything starts
    launch.pin(recipe, environ, env)  # on tcap itself (and booked for it): the child inherits it
    cpus = recipe.get("cpus") or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None)
    report_dir = _report_dir()  # mode 0700, a new directory named after this tcap; dead ones swept
    try:
        env["TCAP_REPORT_DIR"] = report_dir
        code, sampler = _run_child(found, argv, env, Sampler(0, report_dir, cpus, observe=True))
        sampler.finish()
        records = read_records(report_dir)
    finally:
        import shutil

        shutil.rmtree(report_dir, ignore_errors=True)  # never follows symlinks
        _remove_share_table(env)
    processes = merge(records, sampler.processes, first=sampler.root)
    summary = summarize(processes, sampler.peak_total, code, sampler.budget.result())
    violated = bool(summary["violations"]) or summary["budget"]["violated"]
    strict = recipe.get("verify") == "strict"
    result = EXIT_VIOLATION if strict and violated and code == 0 else code
    summary["exit_code"] = result
    summary["launch"] = launch_facts(recipe, ranks, host, cpus, sampler.budget.samples)
    summary["launch"]["share"] = launch_share(*recipe_share(recipe), processes)
    if report:
        sys.stderr.write(table(processes) + findings(summary))
    if report or (strict and violated):
        suffix = f"; exit {EXIT_VIOLATION} (verify strict)" if result == EXIT_VIOLATION else ""
        sys.stderr.write(f"tcap: verdict: {summary['verdict']}{suffix}\n")
    sys.stderr.flush()
    if destination is not None:
        try:
            write_json(destination, {"processes": processes, **summary})
        except OSError as failure:  # checked before the start: a full disk, a directory made read-only since
            sys.stderr.write(f"tcap: error: {one_line(destination)}: cannot write --report-json: "
                             f"{one_line(failure.strerror or str(failure))}\n")
            if result == 0:
                result = EXIT_IO
    if after is not None:
        result = after({"processes": processes, **summary}, result)
    return result


def _remove_share_table(env: Mapping[str, str]) -> None:
    """The launch's share table (tcap._share), named after this supervisor:
    the launch has ended."""
    if not env.get("TCAP_SHARE_LAUNCH"):
        return
    from tcap import _share

    found = _share.settings(env)
    path = None if found is None else _share.path_for(found[1], found[2])
    if path is not None:
        try:
            os.unlink(path)
        except OSError:
            pass


def launch_facts(
    recipe: Mapping[str, Any], ranks: Ranks | None, host: str, cpus: int | None, samples: Sequence[Sequence[int]],
) -> dict[str, Any]:
    """Where this launch ran, for ``tcap report`` to merge launches: host,
    rank, the CPUs of the node the ranks share, the budget samples
    (Budget.samples, packed: :func:`pack_samples`)."""
    node_cpus = cpus
    if ranks is not None:
        from tcap.machine import read_launcher_cpus

        shared = read_launcher_cpus()  # what the launcher's ranks draw from
        if shared is not None:
            node_cpus = len(shared | os.sched_getaffinity(0))
    return {
        "host": host,
        "rank": recipe.get("rank") or (ranks.label() if ranks is not None else None),
        "launcher": None if ranks is None else ranks.launcher,
        "local_rank": None if ranks is None else ranks.local_rank,
        "local_size": None if ranks is None else ranks.local_size,
        "cpus": cpus,
        "node_cpus": node_cpus,
        "budget_samples": pack_samples(samples),
    }


def expand(path: str, ranks: Ranks | None, host: str) -> str:
    """``--report-json`` with {rank}, {host} and {pid} filled in, so every
    rank of a job writes its own file on a shared filesystem ({rank} is the
    launcher's global rank, else its local rank, else 0; {host} the short
    host name)."""
    rank = 0 if ranks is None else ranks.rank if ranks.rank is not None else ranks.local_rank
    return path.replace("{rank}", str(rank)).replace("{host}", host.split(".")[0]).replace("{pid}", str(os.getpid()))


def _report_dir() -> str:
    """A new private directory for the probe records, named after this tcap
    (pid and start time), after removing this user's report directories
    whose tcap is gone (one killed with SIGKILL cannot remove its own)."""
    parent = tempfile.gettempdir()
    _sweep_reports(parent)
    me = os.getpid()
    return tempfile.mkdtemp(prefix=f"{REPORT_PREFIX}{me}-{_start_time(me) or 0}-", dir=parent)


def _start_time(pid: int) -> int | None:
    """When ``pid`` started, the same whichever process-facts backend this
    tcap uses: the kernel's clock ticks since boot wherever there is /proc
    (tcaps of both backends share /tmp: one with psutil named its directory
    in psutil's unit, and one reading /proc swept it as its tcap's gone), else
    psutil's (tcap.placement.start_time); None when gone."""
    if os.path.exists("/proc/self/stat"):
        from tcap.procfacts import proc_start_time

        return proc_start_time(pid)
    from tcap.placement import start_time

    return start_time(pid)


def _sweep_reports(parent: str) -> None:
    """Remove this user's ``tcap-report-PID-START-*`` directories in
    ``parent`` whose tcap no longer runs (never another user's, never
    through a symlink)."""
    import re
    import shutil
    import stat

    try:
        names = os.listdir(parent)
    except OSError:
        return
    pattern = re.compile(re.escape(REPORT_PREFIX) + r"([0-9]{1,7})-([0-9]{1,20})-[a-z0-9_]+")
    for name in names:
        match = pattern.fullmatch(name)
        if match is None:
            continue
        pid, start = int(match[1]), int(match[2])
        path = os.path.join(parent, name)
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            continue
        found = _start_time(pid)
        if found == start or (found is not None and not start):
            continue  # its tcap runs (start 0: unknown when it was made; the pid lives)
        shutil.rmtree(path, ignore_errors=True)  # never follows symlinks


def _own_group() -> bool:
    """Whether the child gets a process group of its own: when tcap's group
    is not the foreground group of a controlling terminal (no terminal, or
    in the background: a batch job, GNU timeout). Signals sent to tcap's
    group then reach tcap alone, which passes each on once. In the
    terminal's foreground the child stays in tcap's group, so that it can
    read the terminal and Ctrl-C or Ctrl-Z reach it from the kernel."""
    if not (hasattr(os, "setpgid") and hasattr(os, "tcgetpgrp")):
        return False
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return True  # no controlling terminal
    try:
        return os.tcgetpgrp(fd) != os.getpgrp()
    except OSError:
        return True
    finally:
        os.close(fd)


def _tie_to_parent() -> Callable[[], None] | None:
    """Linux: a function for the child to call before exec, which has the
    kernel kill it (SIGKILL) when tcap dies, as if tcap had exec'ed it: a
    supervised tcap killed with SIGKILL leaves no command running unobserved.
    None elsewhere. prctl is looked up here, in the parent: nothing is loaded
    after fork."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()

    def tie() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # tcap died before the call: do not run at all
            os.kill(os.getpid(), signal.SIGKILL)

    return tie


def _child_setup(mask: set[int] | None, own_group: bool) -> Callable[[], None] | None:
    """The function the child runs between fork and exec: the signal mask
    back to tcap's (the mask survives exec), its own process group, tied to
    tcap's life."""
    tie = _tie_to_parent()
    if mask is None and not own_group and tie is None:
        return None

    def setup() -> None:
        if tie is not None:
            tie()
        if own_group:
            os.setpgid(0, 0)
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    return setup


class _Forward:
    """Passes signals on to the child: to its process group when it has one
    of its own (what was sent to tcap's group would have reached all of it),
    else to the child; the same signal from the same sender within REPEAT
    seconds once."""

    def __init__(self, pid: int, group: bool) -> None:
        self.pid = pid
        self.group = group
        self.last: dict[int, tuple[int | None, float]] = {}

    def __call__(self, number: int, sender: int | None = None) -> None:
        now = time.monotonic()
        last = self.last.get(number)
        if last is not None and last[0] == sender and now - last[1] < REPEAT:
            return
        self.last[number] = (sender, now)
        try:
            if self.group:
                try:
                    os.killpg(self.pid, number)
                    return
                except ProcessLookupError:  # the child left its group
                    pass
            os.kill(self.pid, number)
        except OSError:
            pass


def _hold_booking(pid: int) -> None:
    """The child holds tcap's CPU booking too (auto placement), so the
    booking lasts while either runs."""
    from tcap import placement

    placement.hold_for(pid)


def _run_child(found: str, argv: Sequence[str], env: dict[str, str], sampler: Sampler) -> tuple[int, Sampler]:
    """Start the child with forwarded signals, sampling its tree; wait; (exit code, sampler)."""
    from tcap import launch

    if not (hasattr(signal, "pthread_sigmask") and hasattr(signal, "sigtimedwait")):
        return _run_child_plain(found, argv, env, sampler)

    mask = {*FORWARDED, signal.SIGCHLD}
    own_group = _own_group()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, mask)
    setup = _child_setup(old, own_group)

    try:
        try:
            child = subprocess.Popen(list(argv), executable=found, env=env, close_fds=False, preexec_fn=setup)
        except OSError as failure:
            raise launch.exec_error(argv[0], failure) from None
        sampler.root = child.pid
        _hold_booking(child.pid)
        forward = _Forward(child.pid, own_group)
        while True:
            sampler.sample()
            code = child.poll()
            if code is not None:
                break
            info = signal.sigtimedwait(mask, sampler.interval)
            if info is None or info.si_signo == signal.SIGCHLD:
                continue
            # In tcap's group, what the kernel sent (terminal keys) reached the child too.
            if own_group or info.si_code != SI_KERNEL:
                forward(info.si_signo, info.si_pid)
        # Drain what arrived meanwhile, so unblocking does not act on it.
        while signal.sigtimedwait(mask, 0) is not None:
            pass
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return (128 - code if code < 0 else code), sampler


def _run_child_plain(found: str, argv: Sequence[str], env: dict[str, str], sampler: Sampler) -> tuple[int, Sampler]:
    """Where signals cannot be waited for (Windows; macOS and PyPy have no
    sigtimedwait): wait with a timeout between samples. In tcap's group,
    Ctrl-C reaches the child too (the terminal sends it to the whole group,
    the console to every process), so tcap ignores it and waits for the
    child's own exit code; on POSIX the other forwarded signals (and SIGINT
    too, when the child has a group of its own) are passed on from a
    handler."""
    from tcap import launch

    own_group = os.name == "posix" and _own_group()
    setup = _child_setup(None, own_group) if os.name == "posix" else None
    try:
        child = subprocess.Popen(list(argv), executable=found, env=env, preexec_fn=setup)
    except OSError as failure:
        raise launch.exec_error(argv[0], failure) from None
    _hold_booking(child.pid)
    forward = _Forward(child.pid, own_group)
    # Ignored from now on (the child started with the default handling): a
    # KeyboardInterrupt landing inside wait() could lose the child's status.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    forwarded = {}
    if os.name == "posix":  # macOS, PyPy: forward what is sent to tcap from a handler
        for number in FORWARDED:
            if number != signal.SIGINT or own_group:
                forwarded[number] = signal.signal(number, lambda signum, frame: forward(signum))
    try:
        sampler.root = child.pid
        while True:
            sampler.sample()
            try:
                code = child.wait(timeout=sampler.interval)
                break
            except subprocess.TimeoutExpired:
                continue
    finally:
        for number, handler in forwarded.items():
            signal.signal(number, handler)
        signal.signal(signal.SIGINT, previous)
    return (128 - code if code < 0 else code), sampler


class Budget:
    """The launch's budget across its tree: at each sample, the busy
    threads of its processes (Sampler) against its CPUs."""

    #: Samples kept for a merge of several launches (tcap report); beyond
    #: this, every other one is dropped (the resolution halves).
    KEPT = 4096

    def __init__(self, cpus: int | None) -> None:
        self.cpus = cpus
        self.peak = 0
        self.peak_processes = 0
        self.longest = 0.0
        self.over_since: float | None = None
        #: [wall-clock milliseconds, pool threads, busy processes] at each sample.
        self.samples: list[list[int]] = []
        self.step = 1
        self.count = 0

    def add(self, when: float, threads: int, processes: int, wall: float | None = None) -> None:
        if wall is not None:
            self.count += 1
            if self.count % self.step == 0:
                self.samples.append([round(wall * 1000), threads, processes])
                if len(self.samples) > self.KEPT:
                    self.samples = self.samples[::2]
                    self.step *= 2
        if threads > self.peak:
            self.peak, self.peak_processes = threads, processes
        if self.cpus and threads > self.cpus:
            if self.over_since is None:
                self.over_since = when
            self.longest = max(self.longest, when - self.over_since)
        else:
            self.over_since = None

    def result(self) -> dict[str, Any]:
        return {"cpus": self.cpus, "peak_pool_threads": self.peak, "processes_at_peak": self.peak_processes,
                "longest_over_seconds": round(self.longest, 2), "grace_seconds": BUDGET_GRACE,
                "violated": self.longest > BUDGET_GRACE}

class Sampler:
    """The child's process tree, sampled from /proc: per pid the command
    line, peak OS threads and CPU time; the peak of the tree's total; and
    the launch budget (the tree's busy threads against its CPUs).

    Through tcap.procfacts: on Linux one read of ``/proc/PID/stat`` per
    process on the machine gives the parent, thread count and CPU time at
    once (the command line is read once per new process); elsewhere psutil.

    With ``observe`` (supervised runs), also each process's **busy
    threads** at every sample: those that ran or waited to run for at least
    BUSY_THREAD of the interval since the previous sample (psutil: ran),
    and at least the CPUs it used over it, rounded (four threads taking
    turns at the GIL count 1). Only a process that used CPU time since the
    previous sample has its threads read: an idle one counts 0 and costs
    nothing more (its threads' times have not moved since they were last
    read, so that read is the baseline when it works again), and at most
    THREAD_READS threads a sample (beyond, busy processes take turns). Per process:
    ``busy_threads`` {peak, mean}, the mean over the samples where it had
    at least one busy thread (null: never counted), and ``busy_samples``,
    [wall-clock ms, busy threads] where the count changed (0 when it went
    idle or ended). The budget counts those (less the one thread of an
    exec'd process's start-up: BUDGET_START); a busy process whose threads
    cannot be read counts its records' largest pool (:meth:`budget_threads`),
    and so does one psutil counts fewer busy threads for (psutil sees no
    time waited: 4 threads sharing 2 CPUs run half the time each).
    """

    def __init__(self, root: int, report_dir: str | None = None, cpus: int | None = None,
                 observe: bool = False) -> None:
        self.root = root
        self.report_dir = report_dir
        self.budget = Budget(cpus)
        #: pid -> (CPU seconds, monotonic time) at the previous sample.
        self.previous: dict[int, tuple[float, float]] = {}
        #: pid -> (record mtime, its largest pool) read from the report directory.
        self.pool_sizes: dict[int, tuple[int, int]] = {}
        self.processes: dict[int, dict[str, Any]] = {}
        self.peak_total = 0
        from tcap.procfacts import backend

        self.facts = backend()
        self.observe = observe
        #: Seconds between samples (the supervisor waits this long).
        self.interval = INTERVAL if self.facts.name == "proc" else PSUTIL_INTERVAL
        self.rescan = RESCAN if self.facts.name == "proc" else PSUTIL_RESCAN
        #: Whether the backend sees the time a thread waited for a CPU (/proc's
        #: schedstat); without it the budget also counts the records' pools.
        self.waits = self.facts.name == "proc"
        #: When the tree was last looked up among every process, and last sampled (observe).
        self.scanned: float | None = None
        self.sampled: float | None = None
        self.scans = 0
        #: pid -> when it started (monotonic), from its first sample (observe).
        self.started: dict[int, float] = {}
        #: pid -> (when, {tid: nanoseconds run or waited}): its threads' times
        #: at their last read, still so at ``when`` (it used no CPU since).
        self.thread_times: dict[int, tuple[float, dict[int, int]]] = {}
        #: pid -> its busy threads at its last read; the most threads read at a sample.
        self.held: dict[int, int] = {}
        self.reads = THREAD_READS if self.facts.name == "proc" else PSUTIL_THREAD_READS
        #: pid -> [samples with a busy thread, their busy threads] (observe).
        self.busy_counts: dict[int, list[int]] = {}
        #: The pids whose busy threads were not 0 at their last sample.
        self.active: set[int] = set()
        #: The pids of the tree at the last sample.
        self.last: list[int] = []
        #: pid -> command name when last sampled: a change means an exec.
        self.names: dict[int, bytes] = {}

    def sample(self) -> None:
        now = time.monotonic()
        if self.observe and self.sampled is not None and now - self.sampled < 0.4 * self.interval:
            return  # too soon after the last (a signal woke the supervisor): shares of a short interval are noise
        if self.observe:
            # The first two samples look the tree up (it grows fastest as the command starts), then every RESCAN.
            rescan = self.scans < 2 or self.scanned is None or now - self.scanned >= self.rescan * 0.9
            tree = self.facts.tree(self.root, rescan)
            if rescan:
                self.scanned = now
                self.scans += 1
        else:
            tree = self.facts.tree(self.root)
        if not tree:
            return
        self.sampled = now
        wall = time.time()
        total = 0
        self.last = []
        demand = busy = 0
        previous, self.previous = self.previous, {}
        work = []
        for pid, (_, threads, cpu, comm) in tree.items():
            self.last.append(pid)
            total += threads
            self.previous[pid] = (cpu, now)
            seen = self.processes.get(pid)
            if seen is None:
                seen = self.processes[pid] = {"argv": self.facts.cmdline(pid), "peak_os_threads": threads,
                                              "cpu_seconds": round(cpu, 2)}
                self.names[pid] = comm
            else:
                if self.names.get(pid) != comm:  # it exec'd since (a fork first seen before its exec)
                    self.names[pid] = comm
                    seen["argv"] = self.facts.cmdline(pid) or seen["argv"]
                seen["peak_os_threads"] = max(seen["peak_os_threads"], threads)
                seen["cpu_seconds"] = max(seen["cpu_seconds"], round(cpu, 2))
            before = previous.get(pid)
            if before is None:
                if self.observe:
                    self.started.setdefault(pid, now - (self.facts.age(pid) or 0.0))
                    if cpu > 0:
                        self.busy_threads(pid, now, threads)  # the baseline of its next sample
                    else:
                        self.thread_times[pid] = (now, {})  # no CPU time yet: every thread's times are 0
                continue
            if now - before[1] > 0:
                work.append((pid, seen, threads, cpu, cpu - before[0], now - before[1]))
        chosen = self._to_read(work) if self.observe else set()
        for pid, seen, threads, cpu, used, elapsed in work:
            counted = None
            if self.observe and used <= 0:
                counted = 0  # idle: none of its threads read (their times stand: still its baseline)
                known = self.thread_times.get(pid)
                if known is not None:
                    self.thread_times[pid] = (now, known[1])
                if pid in self.active:
                    self._note_busy(seen, pid, 0, wall)
            elif self.observe and pid in chosen:
                counted = self.busy_threads(pid, now, threads, now - elapsed)
                if counted is not None:
                    counted = self.held[pid] = max(counted, round(used / elapsed))
                    self._note_busy(seen, pid, counted, wall)
            elif self.observe:  # its turn is at a later sample (THREAD_READS): what it ran at its last
                counted = self.held.get(pid) or max(1, round(used / elapsed))
                self._note_busy(seen, pid, counted, wall)
            if counted is None:  # not observed, or its threads cannot be read
                if used >= BUSY * elapsed:
                    busy += 1
                    demand += self.budget_threads(pid)
            else:
                if not self.waits and used >= BUSY * elapsed:
                    # psutil sees no time waited: over the CPUs, threads that share them look idle.
                    counted = max(counted, self.budget_threads(pid))
                if not self._started(pid, tree[pid][0], cpu, now):
                    counted -= 1  # its start-up: one thread imports; any more are a pool at work
                if counted > 0:
                    busy += 1
                    demand += counted
        if self.observe:
            for pid in [pid for pid in self.active if pid not in tree]:  # gone: back to 0
                self._note_busy(self.processes[pid], pid, 0, wall)
            if len(self.thread_times) > len(tree):
                self.thread_times = {pid: times for pid, times in self.thread_times.items() if pid in tree}
            if len(self.held) > len(tree):
                self.held = {pid: count for pid, count in self.held.items() if pid in tree}
            if len(self.started) > len(tree):
                self.started = {pid: when for pid, when in self.started.items() if pid in tree}
        self.peak_total = max(self.peak_total, total)
        self.budget.add(now, demand, busy, wall)

    def finish(self) -> None:
        """The command has ended: the busy threads of every process still
        counted go back to 0."""
        wall = time.time()
        for pid in list(self.active):
            self._note_busy(self.processes[pid], pid, 0, wall)

    def _started(self, pid: int, ppid: int, cpu: float, now: float) -> bool:
        """Whether ``pid`` is past its start-up (BUDGET_START)."""
        start = self.started.get(pid)
        if start is None or (now - start >= BUDGET_START and cpu >= BUDGET_START_CPU):
            return True
        parent = self.processes.get(ppid)
        return parent is not None and parent["argv"] == self.processes[pid]["argv"]  # a fork: nothing to start

    def _to_read(self, work: Sequence[tuple[Any, ...]]) -> set[int]:
        """The processes of ``work`` that used CPU whose threads are read at
        this sample: those read longest ago first, up to ``reads`` threads
        in all (at least one process); the others hold their last count."""
        wanted = [(pid, threads) for pid, _, threads, _, used, _ in work if used > 0]
        if sum(threads for _, threads in wanted) <= self.reads:
            return {pid for pid, _ in wanted}
        known = self.thread_times
        wanted.sort(key=lambda item: known[item[0]][0] if item[0] in known else -math.inf)
        chosen: set[int] = set()
        left = self.reads
        for pid, threads in wanted:
            if chosen and threads > left:
                continue
            chosen.add(pid)
            left -= threads
        return chosen

    def busy_threads(self, pid: int, now: float, count: int = 0, since: float | None = None) -> int | None:
        """The threads of ``pid`` that ran or waited to run for at least
        BUSY_THREAD of the time since they were last known (their last read,
        or a later sample where the process used no CPU; without either:
        ``since``, over zero times; else 0), a thread new since over its life;
        their times kept for the next time. None when they cannot be read.
        ``count``: its thread count."""
        found = self.facts.threads(pid, count)
        if found is None:
            self.thread_times.pop(pid, None)
            return None
        known_at, before = self.thread_times.get(pid) or (since, {})
        self.thread_times[pid] = (now, found)
        if known_at is None or now <= known_at:
            return 0
        least = BUSY_THREAD * (now - known_at) * 1e9
        return sum(1 for tid, spent in found.items() if spent - before.get(tid, 0) >= least)

    def _note_busy(self, seen: dict[str, Any], pid: int, count: int, wall: float) -> None:
        """One sample of ``pid``'s busy threads into its ``busy_threads`` and ``busy_samples``."""
        counts = self.busy_counts.get(pid)
        if counts is None:
            counts = self.busy_counts[pid] = [0, 0]
            seen["busy_threads"] = {"peak": 0, "mean": 0.0}
            seen["busy_samples"] = []
        if count:
            counts[0] += 1
            counts[1] += count
            stats = seen["busy_threads"]
            stats["peak"] = max(stats["peak"], count)
            stats["mean"] = round(counts[1] / counts[0], 2)
            self.active.add(pid)
        else:
            self.active.discard(pid)
        samples = seen["busy_samples"]
        if (samples[-1][1] if samples else 0) != count:
            samples.append([round(wall * 1000), count])
            if len(samples) > BUSY_SAMPLES_KEPT:
                del samples[1:-1:2]  # every other one (the first and the last kept)

    def budget_threads(self, pid: int) -> int:
        """What a busy process can run at once: its largest pool at its probe's
        last check (the pools of one process mostly take turns), else 1."""
        if self.report_dir is None:
            return 1
        path = os.path.join(self.report_dir, f"{pid}.json")
        try:
            mtime = os.stat(path, follow_symlinks=False).st_mtime_ns
        except OSError:
            return 1
        cached = self.pool_sizes.get(pid)
        if cached is None or cached[0] != mtime:
            pools = (_load_record(path) or {}).get("pools") or []
            try:
                largest = max([p.get("num_threads") or 0 for p in pools if p.get("internal_api") != "affinity"] + [1])
            except (AttributeError, TypeError):  # no pools, or not the probe's shape
                largest = 1
            cached = self.pool_sizes[pid] = (mtime, largest)
        return cached[1]


#: A probe record is at most this large (its pools, violations and enforcements).
MAX_RECORD_BYTES = 4 << 20
#: Bounds of what reports and probe records hold: pids, counts (threads,
#: processes, CPUs), wall-clock and CPU seconds.
MAX_PID = (1 << 31) - 1
MAX_COUNT = fields.MAX_COUNT
MAX_SECONDS = 1e11
STATUSES = ("ok", "VIOLATION", "unverified")


#: The most milliseconds a sample time can be (MAX_SECONDS).
MAX_MS = int(MAX_SECONDS * 1000)
#: How ``launch.budget_samples`` is written (:func:`pack_samples`): columns
#: of little-endian integers, each compressed with zlib, in base64 (about
#: 15 KiB for the 4096 samples a launch keeps): ``time_ms``, the wall-clock
#: time of each sample in milliseconds, increasing; the pool threads and
#: busy processes only where they change (they mostly stand still):
#: ``changes``, the index of each sample where either does (increasing; both
#: are 0 before the first), ``threads`` and ``processes``, their values from
#: that sample on. ``tcap report`` checks and merges them without a Python
#: object per sample (tcap.reports).
SAMPLES_ENCODING = ("base64 of zlib of little-endian integers: int64 time_ms of each sample; int32 changes, "
                    "threads and processes where they change")
#: Each column of the encoding, the byte size of its values, the array typecode.
SAMPLE_COLUMNS = (("time_ms", 8, "q"), ("changes", 4, "i"), ("threads", 4, "i"), ("processes", 4, "i"))


def pack_samples(rows: Sequence[Sequence[int]]) -> dict[str, str]:
    """``launch.budget_samples`` as ``tcap run --report-json`` writes it
    (SAMPLES_ENCODING), from Budget.samples: rows of [wall-clock
    milliseconds, pool threads, busy processes], put in time order (a clock
    set back), the last of equal times kept (as a launch would count), each
    value within what ``tcap report`` reads."""
    import base64
    import zlib

    kept: dict[int, tuple[int, int]] = {}
    for when, threads, processes in sorted(rows, key=lambda row: row[0]):
        kept[min(max(int(when), 0), MAX_MS)] = (min(max(int(threads), 0), MAX_COUNT),
                                                min(max(int(processes), 0), MAX_COUNT))
    values = list(kept.values())
    changes = [index for index, pair in enumerate(values) if pair != (values[index - 1] if index else (0, 0))]
    columns = (list(kept), changes, [values[index][0] for index in changes], [values[index][1] for index in changes])
    packed = {"encoding": SAMPLES_ENCODING}
    for (name, _, typecode), items in zip(SAMPLE_COLUMNS, columns):
        column = array(typecode, items)
        if sys.byteorder == "big":
            column.byteswap()
        packed[name] = base64.b64encode(zlib.compress(column.tobytes(), 9)).decode("ascii")
    return packed


def read_records(directory: str) -> dict[int, dict[str, Any]]:
    """The probe records ``<pid>.json`` in ``directory``, each checked field
    by field; symlinks, FIFOs, records larger than MAX_RECORD_BYTES and
    malformed ones are skipped (their processes show as unverified): a
    child writes these files, and must not be able to crash or hang tcap."""
    records: dict[int, dict[str, Any]] = {}
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return records
    for entry in entries:
        stem, dot, ext = entry.name.partition(".")
        if not (dot and ext == "json" and stem.isascii() and stem.isdigit() and len(stem) <= 10):
            continue
        record = _load_record(entry.path)
        if record is not None and record["pid"] == int(stem):
            records[int(stem)] = record
    return records


def _load_record(path: str) -> dict[str, Any] | None:
    """One probe record (never through a symlink, never a FIFO, at most
    MAX_RECORD_BYTES) with the fields merge() and the sampler use, checked;
    None when it is anything else."""
    try:
        return _record(safefile.load_json(safefile.read(path, MAX_RECORD_BYTES, follow=False)))
    except (OSError, ValueError):  # fields.Bad is a ValueError
        return None


def _record(data: Any) -> dict[str, Any]:
    """The fields of a probe record (tcap.probe._write_record) that tcap reads."""
    record = fields.obj(data, "record")
    pools = fields.items(record.get("pools"), "pools", null=True)
    violations = fields.items(record.get("violations"), "violations", null=True)
    return {
        "pid": fields.integer(record.get("pid"), "pid", 1, MAX_PID),
        "ppid": fields.integer(record.get("ppid"), "ppid", 0, MAX_PID, null=True),
        "argv": fields.strings(record.get("argv"), "argv", null=True),
        "peak_os_threads": fields.integer(record.get("peak_os_threads"), "peak_os_threads", null=True),
        "peak_unexplained_threads": fields.integer(record.get("peak_unexplained_threads"), "peak_unexplained_threads",
                                             null=True),
        "pools": [_probe_pool(pool, f"pools[{index}]") for index, pool in enumerate(pools)],
        "violations": [_violation(item, f"violations[{index}]", "internal_api") for index, item in
                       enumerate(violations)],
        "enforced": _enforced(record.get("enforced"), "enforced"),
        "hazards": _hazards(record.get("hazards"), "hazards"),
        "share": _share(record.get("share"), "share", SHARE_SAMPLES_KEPT),
        "observed": _observed(record.get("observed"), "observed"),
    }


def _probe_pool(value: Any, where: str) -> dict[str, Any]:
    pool = fields.obj(value, where)
    return {
        "internal_api": fields.text(pool.get("internal_api"), f"{where}.internal_api", null=True),
        "user_api": fields.text(pool.get("user_api"), f"{where}.user_api", null=True),
        "num_threads": fields.integer(pool.get("num_threads"), f"{where}.num_threads", null=True),
        "peak_threads": fields.integer(pool.get("peak_threads"), f"{where}.peak_threads", null=True),
        "cap": fields.integer(pool.get("cap"), f"{where}.cap", null=True),
        "filepath": fields.text(pool.get("filepath"), f"{where}.filepath", null=True),
    }


#: An observed violation's lists (``busy threads``): at most this many OS
#: thread names of at most this many characters, and library names.
VIOLATION_NAMES = (8, 16)
VIOLATION_LIBRARIES = (16, 64)
#: The name of an observed violation (the probe's, tcap._observe).
OBSERVED = "busy threads"


def _violation(value: Any, where: str, name: str) -> dict[str, Any]:
    """A violation of a probe record (its pool's ``internal_api``) or of a
    report (``name``); an observed one (``busy threads``) may have how long
    it lasted (``seconds``), the OS ``names`` of the busy threads and the
    ``libraries`` with pools loaded, kept only where present."""
    item = fields.obj(value, where)
    out = {
        name: fields.text(item.get(name), f"{where}.{name}", null=True),
        "threads": fields.integer(item.get("threads"), f"{where}.threads", null=True),
        "cap": fields.integer(item.get("cap"), f"{where}.cap", null=True),
        "at": fields.number(item.get("at"), f"{where}.at", 0, MAX_SECONDS, null=True),
    }
    if item.get("seconds") is not None:
        out["seconds"] = fields.number(item["seconds"], f"{where}.seconds", 0, MAX_SECONDS)
    for key, (most, longest) in (("names", VIOLATION_NAMES), ("libraries", VIOLATION_LIBRARIES)):
        if item.get(key) is not None:
            out[key] = fields.texts(item[key], f"{where}.{key}", most, longest)
    return out


#: The counts of a probe record's ``observed`` (its own busy threads), each
#: with its lowest value; ``interval`` and ``mean`` are numbers, ``allowed``
#: may be null.
OBSERVED_COUNTS = (("samples", 0), ("peak", 0), ("peak_other", 0), ("python_peak", 0))


def _observed(value: Any, where: str) -> dict[str, Any] | None:
    """The ``observed`` of a probe record or of a report's process: null
    (not sampled, or a record of an earlier tcap), or the interval of its
    samples, their count, the most busy threads at once, their mean, the
    most busy non-Python and Python threads, and what its caps allowed at
    the peak."""
    if value is None:
        return None
    observed = fields.obj(value, where)
    at = f"{where}."
    out: dict[str, Any] = {"interval": fields.number(fields.get(observed, "interval", at), at + "interval", 0, 3600)}
    out.update((key, fields.integer(fields.get(observed, key, at), at + key, low)) for key, low in OBSERVED_COUNTS)
    out["mean"] = fields.number(fields.get(observed, "mean", at), at + "mean", 0, MAX_COUNT)
    out["allowed"] = fields.integer(fields.get(observed, "allowed", at), at + "allowed", null=True)
    return out


def _busy(value: Any, where: str) -> dict[str, Any] | None:
    """``busy_threads`` of a report's process: null or {peak, mean}."""
    if value is None:
        return None
    busy = fields.obj(value, where)
    at = f"{where}."
    return {"peak": fields.integer(fields.get(busy, "peak", at), at + "peak"),
            "mean": fields.number(fields.get(busy, "mean", at), at + "mean", 0, MAX_COUNT)}


def _busy_samples(value: Any, where: str) -> list[list[int]]:
    """``busy_samples`` of a report's process: at most BUSY_SAMPLES_REPORTED
    rows of [wall-clock milliseconds, busy threads]."""
    rows = fields.items(value, where, null=True)
    if len(rows) > BUSY_SAMPLES_REPORTED:
        raise fields.Bad(f"{where}: {len(rows)} samples, more than the {BUSY_SAMPLES_REPORTED} tcap writes")
    for index, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != 2:
            raise fields.Bad(f"{where}[{index}]: expected [time_ms, busy threads]")
        fields.integer(row[0], f"{where}[{index}][0]", 0, MAX_MS)
        fields.integer(row[1], f"{where}[{index}][1]")
    return [list(row) for row in rows]


def _enforced(value: Any, where: str) -> list[dict[str, Any]]:
    """What enforce did: passed through to the report, so only JSON scalars."""
    out = []
    for index, item in enumerate(fields.items(value, where, null=True)):
        entry = fields.obj(item, f"{where}[{index}]")
        for key, field in entry.items():
            if not (field is None or isinstance(field, (str, bool))
                    or safefile.number(field, -MAX_SECONDS, MAX_SECONDS, integer=False) is not None):
                raise fields.Bad(f"{where}[{index}].{key}: expected a string, a number or null")
        out.append(dict(entry))
    return out


def _hazards(value: Any, where: str) -> list[dict[str, Any]]:
    out = []
    for index, item in enumerate(fields.items(value, where, null=True)):
        hazard = fields.obj(item, f"{where}[{index}]")
        out.append({key: fields.text(hazard.get(key), f"{where}[{index}].{key}") for key in ("kind", "what")})
    return out


#: The counts of a probe record's ``share`` (null when sharing is off), each
#: with its lowest value: the CPUs shared, the per-thread share now, its
#: lowest and highest over the run, how often it changed, the most busy
#: processes of the launch and busy Python threads of the process seen.
SHARE_COUNTS = (("cpus", 1), ("now", 0), ("low", 0), ("high", 0), ("changes", 0), ("busy_peak", 0),
                ("threads_peak", 0))
#: The samples [time, share, busy processes] a probe record holds at most,
#: and the most a report keeps of each process (thinned: :func:`thin`).
SHARE_SAMPLES_KEPT = 256
SHARE_SAMPLES_REPORTED = 32
#: What ``share`` of a plan can be (launch.share.mode of a report).
SHARE_MODES = ("busy", "off")


def _share(value: Any, where: str, most: int) -> dict[str, Any] | None:
    """The ``share`` of a probe record or of a report's process: null (off,
    or a record of an earlier tcap), or its counts and at most ``most``
    samples [seconds, share, busy processes]."""
    if value is None:
        return None
    share = fields.obj(value, where)
    at = f"{where}."
    out = {key: fields.integer(fields.get(share, key, at), at + key, low) for key, low in SHARE_COUNTS}
    samples = fields.items(fields.get(share, "samples", at), at + "samples")
    if len(samples) > most:
        raise fields.Bad(f"{at}samples: {len(samples)} samples, more than the {most} tcap writes")
    for index, sample in enumerate(samples):
        if not isinstance(sample, list) or len(sample) != 3:
            raise fields.Bad(f"{at}samples[{index}]: expected [seconds, share, busy processes]")
        fields.number(sample[0], f"{at}samples[{index}][0]", 0, MAX_SECONDS)
        fields.integer(sample[1], f"{at}samples[{index}][1]")
        fields.integer(sample[2], f"{at}samples[{index}][2]")
    out["samples"] = [list(sample) for sample in samples]
    return out


def thin(samples: Sequence[Any], most: int) -> list[Any]:
    """At most ``most`` of ``samples``, evenly spaced, the first and the last kept."""
    if len(samples) <= most:
        return list(samples)
    if most < 2:
        return list(samples[-most:]) if most else []
    last = len(samples) - 1
    return [samples[(index * last) // (most - 1)] for index in range(most)]


def share_text(share: Mapping[str, Any] | None) -> str:
    """The SHARE cell: "1-2 (3x)", the lowest and highest per-thread share
    and how often it changed; "2" when it never did; "-" when off."""
    if share is None:
        return "-"
    text = str(share["low"]) if share["low"] == share["high"] else f"{share['low']}-{share['high']}"
    return text + (f" ({share['changes']}x)" if share["changes"] else "")


def launch_share(mode: str | None, cpus: int | None, processes: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The launch's sharing for a report: its mode (the plan's), the CPUs
    shared (the plan's; else the records'), and the most busy processes of
    the launch any of its probes saw at once (null: none saw any)."""
    shares = [process["share"] for process in processes if process.get("share")]
    if mode == "off":
        return {"mode": "off", "cpus": None, "busy_peak": None}
    return {"mode": mode or ("busy" if shares else "off"),
            "cpus": cpus or max((share["cpus"] for share in shares), default=None),
            "busy_peak": max((share["busy_peak"] for share in shares), default=None)}


def recipe_share(recipe: Mapping[str, Any]) -> tuple[str | None, int | None]:
    """The plan's sharing mode and CPUs: the recipe's ``share`` where it has
    one, and ``TCAP_SHARE=<cpus>`` among the probe's variables (exported
    when sharing is on)."""
    value = None
    for item in recipe.get("env") or ():
        if isinstance(item, (list, tuple)) and len(item) == 2 and item[0] == "TCAP_SHARE":
            value = item[1]
    cpus = int(value) if isinstance(value, str) and value.isascii() and value.isdigit() and value != "0" else None
    mode = recipe.get("share")
    if recipe.get("verify") == "off":
        return "off", None
    if not isinstance(mode, str):
        mode = "busy" if cpus else None
    return mode, cpus if mode != "off" else None


def share_line(share: Mapping[str, Any]) -> str:
    """"sharing: busy, 2 CPUs; up to 3 busy processes at once" (the
    launches of a node in several modes: "busy in 2 launches, off in 1")."""
    mode = share["mode"]
    if mode == "off":
        return "sharing: off"
    if mode == "mixed":
        (first, count), *rest = share["launches"].items()
        mode = ", ".join([f"{first} in {count} launch{'es' if count != 1 else ''}",
                          *(f"{name} in {number}" for name, number in rest)])
    cpus = f", {share['cpus']} CPU{'s' if share['cpus'] != 1 else ''}" if share["cpus"] else ""
    peak = share["busy_peak"]
    if not peak:
        return f"sharing: {mode}{cpus}; no busy process seen"
    noun = "process" if peak == 1 else "processes"
    return f"sharing: {mode}{cpus}; up to {peak} busy {noun} at once"


def _short(argv: Sequence[str]) -> str:
    words = list(argv)
    if words:
        words[0] = os.path.basename(words[0])
    return " ".join(words)


def merge(
    records: Mapping[int, Mapping[str, Any]], sampled: Mapping[int, Mapping[str, Any]], first: int | None
) -> list[dict[str, Any]]:
    """One entry per process seen by the probe (``records``, checked by
    :func:`read_records`) or the sampler: the child first, then by pid."""
    processes = []
    for pid in sorted(set(records) | set(sampled), key=lambda p: (p != first, p)):
        record = records.get(pid)
        seen = sampled.get(pid)
        argv = list(record["argv"]) if record else list(seen["argv"] if seen else [])
        peaks = [
            value
            for value in ((record or {}).get("peak_os_threads"), (seen or {}).get("peak_os_threads"))
            if isinstance(value, int)
        ]
        pools = [
            {
                "name": pool["internal_api"],
                "user_api": pool["user_api"],
                "threads": pool["peak_threads"] or pool["num_threads"] or 0,
                "cap": pool["cap"],
                "filepath": pool["filepath"],
            }
            for pool in (record or {}).get("pools", ())
        ]
        violations = [
            {"name": v["internal_api"], **{key: value for key, value in v.items() if key != "internal_api"}}
            for v in (record or {}).get("violations", ())
        ]
        observed = (record or {}).get("observed")
        busy = (seen or {}).get("busy_threads")
        if busy is None and observed is not None:  # the supervisor counted none: what the probe saw
            busy = {"peak": observed["peak"], "mean": round(observed["mean"], 2)}
        status = "unverified" if record is None else "VIOLATION" if violations else "ok"
        processes.append(
            {
                "pid": pid,
                "ppid": (record or {}).get("ppid"),
                "command": _short(argv),
                "argv": argv,
                "status": status,
                "pools": pools,
                "violations": violations,
                "enforced": list((record or {}).get("enforced", ())),
                "peak_os_threads": max(peaks) if peaks else None,
                "unexplained_threads": (record or {}).get("peak_unexplained_threads"),
                "hazards": list((record or {}).get("hazards", ())),
                "cpu_seconds": (seen or {}).get("cpu_seconds"),
                "share": _reported_share((record or {}).get("share")),
                "busy_threads": None if busy is None else dict(busy),
                "busy_samples": thin((seen or {}).get("busy_samples") or [], BUSY_SAMPLES_REPORTED),
                "observed": observed,
            }
        )
    return processes


def _reported_share(share: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A record's share as a report holds it: its samples thinned to SHARE_SAMPLES_REPORTED."""
    if share is None:
        return None
    return {**share, "samples": thin(share["samples"], SHARE_SAMPLES_REPORTED)}


def summarize(
    processes: Sequence[Mapping[str, Any]], peak_total: int | None, child_code: int,
    budget: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Totals, the violations, the hazards, the launch budget and the one-line verdict."""
    verified = sum(1 for p in processes if p["status"] != "unverified")
    unverified = len(processes) - verified
    violations: list[dict[str, Any]] = []
    for process in processes:
        worst: dict[str, dict[str, Any]] = {}
        for violation in process["violations"]:
            name = str(violation["name"])
            if name not in worst or (violation["threads"] or 0) > (worst[name]["threads"] or 0):
                worst[name] = {"pid": process["pid"], **violation}
        violations += worst.values()
    hazards: dict[str, dict[str, Any]] = {}  # the same finding in many processes is listed once
    for process in processes:
        for hazard in process.get("hazards", ()):
            entry = hazards.setdefault(str(hazard.get("what")), {"kind": hazard.get("kind"), "what": hazard.get("what"),
                                                                 "pids": []})
            entry["pids"].append(process["pid"])
    budget = dict(budget or Budget(None).result())
    noun = "process" if len(processes) == 1 else "processes"
    counts = f"{len(processes)} {noun}, {verified} verified, {unverified} unverified"
    if violations:
        shown = ", ".join(violation_text(v) for v in violations[:3])
        more = f", {len(violations) - 3} more" if len(violations) > 3 else ""
        plural = "s" if len(violations) != 1 else ""
        verdict = f"{counts}, {len(violations)} violation{plural} ({shown}{more})"
    elif processes and not verified:
        verdict = f"nothing verified ({counts}: no probe record)"
    else:
        verdict = f"all pools within caps ({counts})"
    if budget["violated"]:
        verdict += f"; over the launch budget ({budget_text(budget)})"
    warned = sum(1 for h in hazards.values() if h["kind"] == "hazard")
    if warned:
        verdict += f"; {warned} hazard{'s' if warned != 1 else ''}"
    return {
        "verdict": verdict,
        "violations": violations,
        "budget": budget,
        "hazards": list(hazards.values()),
        "totals": {
            "processes": len(processes),
            "verified": verified,
            "unverified": unverified,
            "violations": len(violations),
            "peak_os_threads": peak_total,
        },
        "child_exit_code": child_code,
    }


def violation_text(violation: Mapping[str, Any]) -> str:
    """"openblas 8 > 1 in pid 42"; an observed one with its libraries (else
    its threads' OS names): "busy threads 3 > 1 in pid 42 (libgomp, lightgbm)"."""
    text = f"{printable(violation['name'])} {violation['threads']} > {violation['cap']} in pid {violation['pid']}"
    named = violation.get("libraries") or violation.get("names")
    if named:
        text += f" ({', '.join(printable(name) for name in named[:4])}{', ...' if len(named) > 4 else ''})"
    return text


def busy_text(process: Mapping[str, Any]) -> str:
    """The BUSY cell: "3/1.9", the most busy threads at once and their mean
    over the samples where it had any; "-" when never counted."""
    busy = process.get("busy_threads")
    if busy is None:
        return "-"
    return f"{busy['peak']}/{round(busy['mean'], 1):g}"


def budget_text(budget: Mapping[str, Any]) -> str:
    """"peak 4 busy threads on 2 CPUs across 2 busy processes, above them for 5.5 s"."""
    noun = "process" if budget["processes_at_peak"] == 1 else "processes"
    text = (f"peak {counted(budget['peak_pool_threads'], 'busy thread')} on {counted(budget['cpus'], 'CPU')} across "
            f"{budget['processes_at_peak']} busy {noun}")
    if budget["longest_over_seconds"]:
        text += f", above them for {budget['longest_over_seconds']:g} s"
    return text


def findings(summary: Mapping[str, Any], prefix: str = "tcap: ") -> str:
    """The lines after the table: the launch budget, the sharing, hazards
    and notes (each after ``prefix``: ``tcap:`` on stderr, nothing on stdout)."""
    budget = summary["budget"]
    lines = []
    if budget["cpus"]:
        state = "VIOLATION" if budget["violated"] else "ok"
        lines.append(f"launch budget: {budget_text(budget)} ({state}; the rule: above the CPUs for longer than "
                     f"{budget['grace_seconds']:g} s)")
    share = (summary.get("launch") or {}).get("share")
    if share:
        lines.append(share_line(share))
    for hazard in summary["hazards"]:
        pids = ", ".join(str(pid) for pid in hazard["pids"][:4]) + (", ..." if len(hazard["pids"]) > 4 else "")
        lines.append(f"{hazard['kind']}: {hazard['what']} (pid {pids})")
    return "".join(f"{prefix}{printable(line)}\n" for line in lines)


def table(processes: Sequence[Mapping[str, Any]], prefix: str = "tcap: ") -> str:
    """The per-process table, each line after ``prefix`` (``tcap:`` on
    stderr, nothing on stdout); OTHER: the native threads no known pool and
    no Python thread accounts for; SHARE: the per-thread CPU share its probe
    applied (:func:`share_text`); BUSY: its busy threads, peak/mean
    (:func:`busy_text`). Every cell printable (:func:`_printable`)."""
    ranked = any(process.get("rank") for process in processes)
    rows: list[tuple[str, ...]] = [("PID", "COMMAND", "POOLS (threads/cap)", "SHARE", "OS THREADS", "OTHER", "BUSY",
                                    "CPU s", "STATUS")]
    for process in processes:
        command = printable(" ".join(str(process["command"]).split()))  # one line, whatever the argv holds
        if len(command) > COMMAND_WIDTH:
            command = command[: COMMAND_WIDTH - 3] + "..."
        pools = ", ".join(
            f"{printable(pool['name'])} {pool['threads']}/{'-' if pool['cap'] is None else pool['cap']}"
            for pool in process["pools"]
        )
        if process["status"] == "unverified":
            pools = "(no probe)"
        threads = process["peak_os_threads"]
        cpu = process["cpu_seconds"]
        rows.append(
            (
                str(process["pid"]),
                command,
                pools or "-",
                share_text(process.get("share")),
                "?" if threads is None else str(threads),
                "-" if process.get("unexplained_threads") is None else str(process["unexplained_threads"]),
                busy_text(process),
                "?" if cpu is None else f"{cpu:.2f}",
                process["status"],
            )
        )
    if ranked:
        rows = [(("RANK",) if index == 0 else (printable(processes[index - 1].get("rank") or "-"),)) + row
                for index, row in enumerate(rows)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths)) + "  " + row[-1] for row in rows]
    return "".join(f"{prefix}{line.rstrip()}\n" for line in lines)


def check_destination(path: str, flag: str, inputs: Sequence[str] = ()) -> None:
    """Before anything runs or is read: ``path`` (the file of ``flag``) can
    be written by safefile.write_atomic, and is none of ``inputs`` (the
    same file under any name). A directory or a FIFO there, or an input,
    is exit 2; a directory that takes no new file (read-only, full, missing)
    is 74. One line naming the path."""
    from tcap.errors import EXIT_IO, TcapError

    try:
        info = os.stat(path)
        target = (info.st_dev, info.st_ino)
    except OSError:
        target = None
    for source in inputs if target is not None else ():
        try:
            other = os.stat(source)
        except OSError:
            continue
        if (other.st_dev, other.st_ino) == target:
            same = "one of the reports it merges" if source == path else f"{source}, a report it merges"
            raise TcapError(f"{flag} is {same}; refusing to overwrite it", path=path)
    _replaceable(path, flag)
    try:
        safefile.check_writable(path)
    except safefile.Refused as failure:
        raise TcapError(f"cannot write {flag}: {failure.strerror}", path=path) from None
    except OSError as failure:
        raise TcapError(f"cannot write {flag}: {failure.strerror or failure}", code=EXIT_IO, path=path) from None


def _replaceable(path: str, flag: str) -> None:
    """In a sticky directory (/tmp) only its owner may replace a file: one
    another user put at ``path`` (a symlink to a victim's file, say) is
    refused before the command starts, not found out after it ran."""
    from tcap.errors import TcapError

    me = os.geteuid() if hasattr(os, "geteuid") else 0
    try:
        found = os.lstat(path)
        parent = os.stat(os.path.dirname(path) or ".")
    except OSError:
        return
    if me != 0 and found.st_uid != me and parent.st_mode & stat.S_ISVTX and parent.st_uid != me:
        what = "a symlink" if stat.S_ISLNK(found.st_mode) else "a file"
        raise TcapError(f"cannot write {flag}: {what} of uid {found.st_uid} is there, in a sticky directory "
                        "(only its owner may replace it)", code=EXIT_IO, path=path)


def write_json(path: str, data: Mapping[str, Any]) -> None:
    """``data`` as indented JSON into ``path``, atomically (a new file renamed
    over it: a symlink there is replaced, not followed; a full disk leaves the
    old file whole), created as open() would under the umask; OSError."""
    safefile.write_atomic(path, report_text(data).encode(), _file_mode())


def report_text(data: Mapping[str, Any]) -> str:
    """Indented JSON (a launch's budget samples are three strings:
    :func:`pack_samples`)."""
    return json.dumps(data, indent=2) + "\n"


def _file_mode() -> int:
    """0666 less the umask: the mode open() would give a new file."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask

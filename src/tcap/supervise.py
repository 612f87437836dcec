"""Supervised runs: ``tcap run --report``/``--report-json`` and ``verify = strict``.

Instead of exec-ing, tcap starts the command as its child with a private
report directory in ``TCAP_REPORT_DIR`` (where the probe of every Python
process of the run writes ``<pid>.json``), forwards signals to it, waits,
and then reads the records: strict turns a violation into exit code 86,
``--report`` prints a per-process table and a verdict, ``--report-json``
writes the same as JSON.  With a report, the process tree is also sampled
from /proc, so processes the probe cannot see
(``python -I``, ``sh``, any non-Python program) are listed as unverified.

Signals: tcap blocks the forwarded signals and SIGCHLD and waits for them
with ``sigtimedwait``, which tells who sent each one.  A signal sent with
kill(2) (``kill PID``, a batch system, a supervisor) is forwarded to the
child; one the kernel sent (Ctrl-C, Ctrl-\\, a window resize from the
terminal) already reached the child too, since it shares tcap's foreground
process group, and is not sent a second time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile

from tcap.errors import EXIT_INTERNAL, EXIT_VIOLATION

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

FORWARDED = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
)
#: si_code of a signal the kernel generated (terminal keys, SIGWINCH).
SI_KERNEL = 0x80
#: Seconds between two samples of the process tree.
INTERVAL = 0.5
#: Width of the command column.
COMMAND_WIDTH = 40


def needed(recipe: Mapping[str, Any], options: Mapping[str, Any]) -> bool:
    """Whether ``tcap run`` supervises rather than execs."""
    return recipe.get("verify") == "strict" or bool(options.get("report")) or bool(options.get("report_json"))


def supervise(
    recipe: Mapping[str, Any],
    argv: Sequence[str],
    environ: Mapping[str, str],
    *,
    report: bool = False,
    report_json: str | None = None,
) -> int:
    """Run ``argv`` as a child under ``recipe``; return the exit code for tcap."""
    from tcap import launch

    env = launch.child_environ(recipe, environ)
    found = launch.find_command(argv[0], env)  # 127/126 before anything starts
    launch.pin(recipe, environ, env)  # on tcap itself (and booked for it): the child inherits it
    sampling = report or bool(report_json)
    report_dir = tempfile.mkdtemp(prefix="tcap-report-")  # mode 0700, a new directory
    try:
        env["TCAP_REPORT_DIR"] = report_dir
        code, sampler = _run_child(found, argv, env, sampling)
        records = read_records(report_dir)
    finally:
        import shutil

        shutil.rmtree(report_dir, ignore_errors=True)  # never follows symlinks
    processes = merge(records, sampler.processes if sampler else {}, first=sampler.root if sampler else None)
    summary = summarize(processes, sampler.peak_total if sampler else None, code)
    violated = bool(summary["violations"])
    strict = recipe.get("verify") == "strict"
    result = EXIT_VIOLATION if strict and violated and code == 0 else code
    summary["exit_code"] = result
    if report:
        sys.stderr.write(table(processes))
    if report or (strict and violated):
        suffix = f"; exit {EXIT_VIOLATION} (verify strict)" if result == EXIT_VIOLATION else ""
        sys.stderr.write(f"tcap: verdict: {summary['verdict']}{suffix}\n")
    sys.stderr.flush()
    if report_json:
        try:
            with open(report_json, "w") as f:
                json.dump({"processes": processes, **summary}, f, indent=2)
                f.write("\n")
        except OSError as failure:
            sys.stderr.write(f"tcap: error: cannot write --report-json {report_json}: {failure.strerror}\n")
            if result == 0:
                result = EXIT_INTERNAL
    return result


def _run_child(found: str, argv: Sequence[str], env: dict[str, str], sampling: bool) -> tuple[int, Sampler | None]:
    """Start the child with forwarded signals; wait; (exit code, sampler)."""
    from tcap import launch

    mask = {*FORWARDED, signal.SIGCHLD}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, mask)

    def unblock() -> None:  # in the child, before exec: the mask survives exec
        signal.pthread_sigmask(signal.SIG_SETMASK, old)

    try:
        try:
            child = subprocess.Popen(list(argv), executable=found, env=env, close_fds=False, preexec_fn=unblock)
        except OSError as failure:
            raise launch.exec_error(argv[0], failure) from None
        sampler = Sampler(child.pid) if sampling else None
        while True:
            if sampler is not None:
                sampler.sample()
            code = child.poll()
            if code is not None:
                break
            info = signal.sigtimedwait(mask, INTERVAL)
            if info is None or info.si_signo == signal.SIGCHLD:
                continue
            if info.si_code != SI_KERNEL:
                try:
                    child.send_signal(info.si_signo)
                except OSError:
                    pass
        # Drain what arrived meanwhile, so unblocking does not act on it.
        while signal.sigtimedwait(mask, 0) is not None:
            pass
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return (128 - code if code < 0 else code), sampler


class Sampler:
    """The child's process tree, sampled from /proc: per pid the command
    line, peak OS threads and CPU time; and the peak of the tree's total.

    One read of ``/proc/PID/stat`` per process on the machine gives the
    parent, thread count and CPU time at once (the command line is read once
    per new process). psutil needs a scan of every parent plus two reads per
    process of the tree and cost ~3x more CPU on a 64-process tree
    (docs/benchmarks.md); tcap only runs on Linux anyway.
    """

    def __init__(self, root: int) -> None:
        self.root = root
        self.processes: dict[int, dict[str, Any]] = {}
        self.peak_total = 0
        self.tick = os.sysconf("SC_CLK_TCK")
        #: The pids of the tree at the last sample.
        self.last: list[int] = []
        #: pid -> command name when last sampled: a change means an exec.
        self.names: dict[int, bytes] = {}

    def sample(self) -> None:
        stats: dict[int, tuple[int, int, float, bytes]] = {}  # pid -> (ppid, threads, cpu seconds, comm)
        try:
            names = os.listdir("/proc")
        except OSError:
            return
        for name in names:
            if not name.isdigit():
                continue
            stat = _stat(int(name))
            if stat is not None:
                stats[int(name)] = (stat[0], stat[1], (stat[2] + stat[3]) / self.tick, stat[4])
        children: dict[int, list[int]] = {}
        for pid, (ppid, *_) in stats.items():
            children.setdefault(ppid, []).append(pid)
        if self.root not in stats:
            return
        total = 0
        todo = [self.root]
        self.last = []
        while todo:
            pid = todo.pop()
            self.last.append(pid)
            todo.extend(children.get(pid, ()))
            _, threads, cpu, comm = stats[pid]
            total += threads
            seen = self.processes.get(pid)
            if seen is None:
                self.processes[pid] = {"argv": _cmdline(pid), "peak_os_threads": threads, "cpu_seconds": round(cpu, 2)}
                self.names[pid] = comm
            else:
                if self.names.get(pid) != comm:  # it exec'd since (a fork first seen before its exec)
                    self.names[pid] = comm
                    seen["argv"] = _cmdline(pid) or seen["argv"]
                seen["peak_os_threads"] = max(seen["peak_os_threads"], threads)
                seen["cpu_seconds"] = max(seen["cpu_seconds"], round(cpu, 2))
        self.peak_total = max(self.peak_total, total)


def _stat(pid: int) -> tuple[int, int, int, int, bytes] | None:
    """(ppid, threads, utime, stime, command name) of ``pid``, or None if it is gone."""
    from tcap.machine import proc_stat

    found = proc_stat(pid)
    if found is None:
        return None
    name, fields = found
    try:
        return int(fields[1]), int(fields[17]), int(fields[11]), int(fields[12]), name
    except (ValueError, IndexError):
        return None


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            data = f.read()
        if data:
            return [part.decode(errors="replace") for part in data.rstrip(b"\0").split(b"\0")]
        with open(f"/proc/{pid}/comm", "rb") as f:  # a zombie's command line is empty
            return [f"[{f.read().strip().decode(errors='replace')}]"]
    except OSError:
        return []


def read_records(directory: str) -> dict[int, dict[str, Any]]:
    """The probe records ``<pid>.json`` in ``directory``; symlinks and
    anything malformed are skipped."""
    records: dict[int, dict[str, Any]] = {}
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return records
    for entry in entries:
        stem, dot, ext = entry.name.partition(".")
        if not (dot and ext == "json" and stem.isdigit()) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd) as f:
                record = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("pid") == int(stem):
            records[int(stem)] = record
    return records


def _short(argv: Sequence[str]) -> str:
    words = list(argv)
    if words:
        words[0] = os.path.basename(words[0])
    return " ".join(words)


def merge(
    records: Mapping[int, Mapping[str, Any]], sampled: Mapping[int, Mapping[str, Any]], first: int | None
) -> list[dict[str, Any]]:
    """One entry per process seen by the probe or the sampler: the child first, then by pid."""
    processes = []
    for pid in sorted(set(records) | set(sampled), key=lambda p: (p != first, p)):
        record = records.get(pid)
        seen = sampled.get(pid)
        argv = list(record.get("argv") or []) if record else list(seen["argv"] if seen else [])
        peaks = [
            value
            for value in ((record or {}).get("peak_os_threads"), (seen or {}).get("peak_os_threads"))
            if isinstance(value, int)
        ]
        pools = [
            {
                "name": pool.get("internal_api"),
                "user_api": pool.get("user_api"),
                "threads": pool.get("peak_threads") or pool.get("num_threads") or 0,
                "cap": pool.get("cap"),
                "filepath": pool.get("filepath"),
            }
            for pool in (record or {}).get("pools") or []
        ]
        violations = [
            {"name": v.get("internal_api"), "threads": v.get("threads"), "cap": v.get("cap"), "at": v.get("at")}
            for v in (record or {}).get("violations") or []
        ]
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
                "enforced": list((record or {}).get("enforced") or []),
                "peak_os_threads": max(peaks) if peaks else None,
                "cpu_seconds": (seen or {}).get("cpu_seconds"),
            }
        )
    return processes


def summarize(processes: Sequence[Mapping[str, Any]], peak_total: int | None, child_code: int) -> dict[str, Any]:
    """Totals, the list of violations and the one-line verdict."""
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
    noun = "process" if len(processes) == 1 else "processes"
    counts = f"{len(processes)} {noun}, {verified} verified, {unverified} unverified"
    if violations:
        shown = ", ".join(f"{v['name']} {v['threads']} > {v['cap']} in pid {v['pid']}" for v in violations[:3])
        more = f", {len(violations) - 3} more" if len(violations) > 3 else ""
        plural = "s" if len(violations) != 1 else ""
        verdict = f"{counts}, {len(violations)} violation{plural} ({shown}{more})"
    elif processes and not verified:
        verdict = f"nothing verified ({counts}: no probe record)"
    else:
        verdict = f"all pools within caps ({counts})"
    return {
        "verdict": verdict,
        "violations": violations,
        "totals": {
            "processes": len(processes),
            "verified": verified,
            "unverified": unverified,
            "violations": len(violations),
            "peak_os_threads": peak_total,
        },
        "child_exit_code": child_code,
    }


def table(processes: Sequence[Mapping[str, Any]]) -> str:
    """The per-process table for stderr."""
    rows = [("PID", "COMMAND", "POOLS (threads/cap)", "OS THREADS", "CPU s", "STATUS")]
    for process in processes:
        command = process["command"]
        if len(command) > COMMAND_WIDTH:
            command = command[: COMMAND_WIDTH - 3] + "..."
        pools = ", ".join(
            f"{pool['name']} {pool['threads']}/{'-' if pool['cap'] is None else pool['cap']}"
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
                "?" if threads is None else str(threads),
                "?" if cpu is None else f"{cpu:.2f}",
                process["status"],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths)) + "  " + row[-1] for row in rows]
    return "".join(f"tcap: {line.rstrip()}\n" for line in lines)

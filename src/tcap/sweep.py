"""``tcap sweep``: run a command under each configuration of a grid, rank them.

Every run is ``tcap run -p BASE --KEY VALUE ... -- CMD`` (so the probe,
pinning and the site policy apply as they would for the user), measured
from outside: wall time, CPU time of the whole process tree (``wait4``
counts every descendant that was waited for), the tree's peak RSS and peak
OS threads (sampled from /proc every SAMPLE seconds). Repeats are
interleaved: every round runs each configuration once, in a shuffled order,
so drift in the machine's load spreads over all of them.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tcap.errors import TcapError
from tcap.plural import counted

DIMENSIONS = ("threads", "blas", "openmp", "workers")
SAMPLE = 0.1
#: First line of a profile written by ``--save``: such a file may be replaced.
SAVED_MARK = "# Written by tcap sweep"


@dataclass
class Run:
    wall: float
    cpu: float
    peak_rss_mb: float
    peak_threads: int
    code: int
    #: The last line the command wrote to stderr, when it failed.
    error: str = ""


@dataclass
class Result:
    config: dict[str, str]
    runs: list[Run] = field(default_factory=list)

    @property
    def ok(self) -> list[Run]:
        return [run for run in self.runs if run.code == 0]

    @property
    def failed(self) -> list[Run]:
        return [run for run in self.runs if run.code != 0]

    def label(self) -> str:
        return " ".join(f"{key}={value}" for key, value in self.config.items()) or "(base profile)"

    def summary(self) -> dict[str, Any]:
        walls = sorted(run.wall for run in self.ok)
        return {
            "config": self.config,
            "runs": len(self.runs),
            "failed": [run.code for run in self.failed],
            "wall_median": _median(walls),
            "wall_min": walls[0] if walls else None,
            "wall_max": walls[-1] if walls else None,
            "cpu_median": _median(sorted(run.cpu for run in self.ok)),
            "peak_rss_mb": max((run.peak_rss_mb for run in self.ok), default=None),
            "peak_threads": max((run.peak_threads for run in self.ok), default=None),
            "samples": [asdict(run) for run in self.runs],
        }


def _median(values: Sequence[float]) -> float | None:
    if not values:
        return None
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


def parse_grid(options: Mapping[str, Any]) -> list[dict[str, str]]:
    """The configurations: the cartesian product of the given lists."""
    from tcap.profiles import count_problem

    axes = []
    for key in DIMENSIONS:
        text = options.get(key)
        if text is None:
            continue
        values = [item.strip() for item in str(text).split(",")]
        for value in values:
            problem = count_problem(int(value) if value.isdigit() else value)
            if not value or problem:
                raise TcapError(f"tcap sweep: --{key} {text}: {problem or 'empty item'}")
        axes.append([(key, value) for value in dict.fromkeys(values)])
    if not axes:
        raise TcapError("tcap sweep: give at least one of --threads, --blas, --openmp, --workers as a list (1,2,4)")
    return [dict(combination) for combination in itertools.product(*axes)]


class Stopped(Exception):
    """SIGTERM reached the sweep: stop like Ctrl-C, with 128 + SIGTERM."""


def measure(argv: Sequence[str], env: Mapping[str, str]) -> Run:
    """One run of ``argv``: wall, tree CPU time, peak tree RSS and threads.

    The end of the run is noticed at once (a pidfd wakes the wait); between
    samples of the tree the sweep sleeps in that wait. The command's stderr
    is kept in a temporary file and its tail shown when the run fails.
    """
    import select
    import tempfile

    from tcap.supervise import Sampler

    with tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        child = subprocess.Popen(list(argv), env=dict(env), stdout=subprocess.DEVNULL, stderr=errors)
        sampler = Sampler(child.pid)
        peak_rss = 0
        pidfd = None
        try:
            try:
                pidfd = os.pidfd_open(child.pid)
                poller: Any = select.poll()
                poller.register(pidfd, select.POLLIN)
            except (AttributeError, OSError):  # no pidfd: poll the exit often
                poller = None
            while True:
                pid, status, usage = os.wait4(child.pid, os.WNOHANG)
                if pid:
                    break
                sampler.sample()
                peak_rss = max(peak_rss, _tree_rss(sampler))
                if poller is not None:
                    poller.poll(SAMPLE * 1000)
                else:
                    time.sleep(0.005)
        except BaseException:
            _kill_tree(child, sampler)
            raise
        finally:
            if pidfd is not None:
                os.close(pidfd)
        wall = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        code = child.returncode if child.returncode >= 0 else 128 - child.returncode
        tail = ""
        if code != 0:
            errors.seek(max(0, errors.seek(0, 2) - 2000))
            lines = errors.read().decode(errors="replace").strip().splitlines()
            tail = lines[-1] if lines else ""
    return Run(wall=wall, cpu=usage.ru_utime + usage.ru_stime, peak_rss_mb=peak_rss / 2**20,
               peak_threads=sampler.peak_total, code=code, error=tail)


def _kill_tree(child: subprocess.Popen[bytes], sampler: Any) -> None:
    """Stop the run in progress: the child and every descendant seen."""
    sampler.sample()
    for pid in [child.pid, *sampler.last]:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    child.wait()


def _tree_rss(sampler: Any) -> int:
    """Bytes resident in the sampled tree now, or the largest peak of one of
    its processes (VmHWM on Linux, which catches a peak between two samples)."""
    total = peak = 0
    for pid in sampler.last:
        rss, high = sampler.facts.memory(pid)
        total += rss
        peak = max(peak, high)
    return max(total, peak)


def rank(results: Sequence[Result]) -> tuple[list[Result], str]:
    """Successful configurations, fastest median first, and a verdict line."""
    ranked = sorted((r for r in results if r.ok and not r.failed), key=lambda r: r.summary()["wall_median"])
    if not ranked:
        return ranked, "no configuration completed without failing"
    if len(ranked) == 1 and any(not r.runs for r in results):
        return ranked, f"best so far: {ranked[0].label()} (the only configuration measured before the stop)"
    best = ranked[0].summary()
    if len(ranked) == 1:
        return ranked, f"best: {ranked[0].label()} (the only configuration that completed)"
    second = ranked[1].summary()
    gain = (second["wall_median"] - best["wall_median"]) / second["wall_median"] * 100
    if best["wall_max"] < second["wall_min"]:
        clear = f"clearly better than the runner-up ({ranked[1].label()}): {gain:.1f} % faster, ranges do not overlap"
    else:
        clear = (
            f"not clearly better than the runner-up ({ranked[1].label()}, {gain:.1f} % slower by median): "
            "their ranges overlap; more --repeat would tell"
        )
    return ranked, f"best: {ranked[0].label()}, {clear}"


def table(results: Sequence[Result], ranked: Sequence[Result]) -> str:
    order = list(ranked) + [r for r in results if r not in ranked]
    rows = [("", "CONFIGURATION", "WALL s median (min-max)", "CPU s", "PEAK RSS MB", "PEAK THREADS", "RUNS")]
    for result in order:
        s = result.summary()
        mark = "*" if ranked and result is ranked[0] else ("" if result in ranked or not result.runs else "x")
        wall = "-" if s["wall_median"] is None else f"{s['wall_median']:.3f} ({s['wall_min']:.3f}-{s['wall_max']:.3f})"
        runs = f"{len(result.ok)}/{s['runs']} ok" + (f", exit {sorted(set(s['failed']))}" if s["failed"] else "")
        if not result.runs:
            runs = "not run"
        rows.append((
            mark, result.label(), wall,
            "-" if s["cpu_median"] is None else f"{s['cpu_median']:.2f}",
            "-" if s["peak_rss_mb"] is None else f"{s['peak_rss_mb']:.0f}",
            "-" if s["peak_threads"] is None else str(s["peak_threads"]),
            runs,
        ))
    from tcap.render import columns

    return columns(rows)


def saved_profile_path(name: str, environ: Mapping[str, str]) -> str:
    """Where ``--save NAME`` writes; a usage error if it would replace a
    profile tcap sweep did not write."""
    from tcap.profiles import NAME_RE
    from tcap.search import search_path

    if not NAME_RE.match(name):
        raise TcapError(f"tcap sweep: --save {name!r}: invalid profile name (letters, digits, '.', '_', '-')")
    directory = dict((label, d) for label, d in search_path(environ))["user"]
    path = os.path.join(directory, name + ".toml")
    from tcap import safefile
    from tcap.bounds import MAX_FILE

    try:  # checked before the sweep starts: a FIFO, a directory, another program's file
        safefile.check_destination(path)
        if os.path.lexists(path):
            first = safefile.read(path, MAX_FILE).decode(errors="replace").partition("\n")[0]
            if not first.startswith(SAVED_MARK):
                raise TcapError(f"tcap sweep: --save {name}: {path} exists and was not written by tcap sweep")
    except OSError as failure:
        raise TcapError(f"tcap sweep: --save {name}: cannot replace it: {failure.strerror}", path=path) from None
    return path


def _fastest(count: int) -> str:
    return "the only configuration" if count == 1 else f"the fastest of {count} configurations"


def profile_text(base: str, best: Result, ranked: Sequence[Result], verdict: str, command: Sequence[str]) -> str:
    """The saved profile: TOML strings through json (a valid TOML basic
    string), comments kept on one line each."""
    import datetime
    import shlex

    def comment(text: str) -> str:
        return text.replace("\r", "\\r").replace("\n", "\\n")

    s = best.summary()
    shown = comment(shlex.join(command))
    lines = [
        f"{SAVED_MARK} on {datetime.date.today().isoformat()}: {_fastest(len(ranked))} for",
        f"#   {shown}",
        f"# median wall {s['wall_median']:.3f} s (min {s['wall_min']:.3f}, max {s['wall_max']:.3f}) over "
        f"{counted(len(best.ok), 'run')}; {comment(verdict)}",
    ]
    for other in ranked[1:4]:
        o = other.summary()
        lines.append(f"#   then {other.label()}: median {o['wall_median']:.3f} s")
    lines.append(f"description = {json.dumps('tcap sweep winner for ' + shlex.join(command)[:60])}")
    lines.append(f"extends = {json.dumps(base)}")
    for key, value in best.config.items():
        lines.append(f"{key} = {value}" if value.isdigit() else f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def run_sweep(options: Mapping[str, Any], command: Sequence[str], environ: Mapping[str, str]) -> int:
    from tcap.recipe import build_plan, self_command
    from tcap.search import DEFAULT_PROFILE

    if not command:
        raise TcapError("tcap sweep: missing the command to measure (tcap sweep --threads 1,2 -- COMMAND ...)")
    configs = parse_grid(options)
    repeat_text = str(options["repeat"]) if "repeat" in options else "3"
    if not repeat_text.isdigit() or int(repeat_text) < 1:
        raise TcapError(f"tcap sweep: --repeat expects a count >= 1, not {repeat_text!r}")
    repeat = int(repeat_text)
    base = options.get("profile") or DEFAULT_PROFILE
    from tcap.search import is_path

    if is_path(base):
        base = os.path.abspath(base)  # --save writes it into a profile elsewhere
    for key in ("save", "plot"):
        if key in options and not options[key]:
            raise TcapError(f"tcap sweep: --{key} needs a value")
    for config in configs:  # every configuration resolves before anything runs
        build_plan({"profile": base, "set": [], **config}, environ)
    save_path = saved_profile_path(options["save"], environ) if options.get("save") else None
    plot = _plotter() if options.get("plot") else None
    if plot is not None:
        from tcap import safefile
        from tcap.errors import EXIT_IO

        try:  # before anything runs: a sweep takes minutes
            safefile.check_writable(options["plot"])
        except OSError as failure:
            raise TcapError(f"tcap sweep: cannot write --plot: {failure.strerror}", path=options["plot"],
                            code=EXIT_IO) from None
    results = [Result(config) for config in configs]
    rng = random.Random(0)
    tcap = self_command()
    total = repeat * len(configs)
    done = 0
    interrupted = False

    def terminate(signum: int, frame: Any) -> None:
        raise Stopped

    previous = signal.signal(signal.SIGTERM, terminate)
    stopped_by = signal.SIGINT
    try:
        for round_number in range(repeat):
            order = list(results)
            rng.shuffle(order)
            for result in order:
                flags = [item for key, value in result.config.items() for item in (f"--{key}", value)]
                argv = [*tcap, "run", "-p", base, *flags, "--", *command]
                run = measure(argv, environ)
                result.runs.append(run)
                done += 1
                status = f"{run.wall:.3f} s" if run.code == 0 else f"FAILED (exit {run.code})"
                if run.error:
                    status += f": {run.error[:200]}"
                sys.stderr.write(f"tcap sweep: [{done}/{total}] round {round_number + 1}: {result.label()}: {status}\n")
                sys.stderr.flush()
    except (KeyboardInterrupt, Stopped) as stop:
        interrupted = True
        stopped_by = signal.SIGTERM if isinstance(stop, Stopped) else signal.SIGINT
        sys.stderr.write(f"tcap sweep: interrupted after {done} of {counted(total, 'run')}; results so far:\n")
    finally:
        signal.signal(signal.SIGTERM, previous)
    ranked, verdict = rank(results)
    if options.get("json"):
        sys.stdout.write(json.dumps({
            "command": list(command), "profile": base, "repeat": repeat, "interrupted": interrupted,
            "best": ranked[0].config if ranked else None, "verdict": verdict,
            "ranking": [r.summary() for r in ranked],
            "failed": [r.summary() for r in results if r not in ranked and r.runs],
            "not_run": [r.config for r in results if not r.runs],
        }, indent=2) + "\n")
    else:
        sys.stdout.write(table(results, ranked) + verdict + "\n")
    if save_path and (interrupted or not ranked):
        why = "the sweep was interrupted" if interrupted else "no configuration succeeded"
        sys.stderr.write(f"tcap sweep: not saving profile {options['save']}: {why}\n")
    if ranked and save_path and not interrupted:
        from tcap import safefile
        from tcap.errors import EXIT_IO

        try:
            os.makedirs(os.path.dirname(save_path), exist_ok=True)
            safefile.write_atomic(save_path, profile_text(base, ranked[0], ranked, verdict, command).encode())
        except OSError as failure:
            raise TcapError(f"tcap sweep: cannot save profile {options['save']}: {failure.strerror}",
                            path=save_path, code=EXIT_IO) from None
        sys.stderr.write(f"tcap sweep: saved the winner as profile {options['save']} ({save_path})\n")
    if plot is not None and any(r.ok for r in results):
        plot(results, ranked, options["plot"], command)
    if interrupted:
        return 128 + stopped_by
    return 0 if ranked else 1


def _plotter() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise TcapError("tcap sweep --plot needs matplotlib: pip install 'tcap[plot]'") from None

    def draw(results: Sequence[Result], ranked: Sequence[Result], path: str, command: Sequence[str]) -> None:
        shown = [r for r in results if r.ok]
        shown.sort(key=lambda r: r.summary()["wall_median"])
        medians = [r.summary()["wall_median"] for r in shown]
        low = [m - r.summary()["wall_min"] for m, r in zip(medians, shown)]
        high = [r.summary()["wall_max"] - m for m, r in zip(medians, shown)]
        figure, axes = plt.subplots(figsize=(8, 1 + 0.4 * len(shown)))
        colors = ["tab:green" if ranked and r is ranked[0] else "tab:blue" for r in shown]
        axes.barh([r.label() for r in shown], medians, xerr=[low, high], color=colors)
        axes.invert_yaxis()
        axes.set_xlabel("wall time, s (median, min-max)")
        axes.set_title(" ".join(command)[:80], fontsize=9)
        figure.tight_layout()
        import io

        from tcap import safefile
        from tcap.errors import EXIT_IO

        image = io.BytesIO()
        figure.savefig(image, format=os.path.splitext(path)[1][1:].lower() or "png")
        plt.close(figure)
        try:  # never through a symlink planted at the destination, never a half-written file
            safefile.write_atomic(path, image.getvalue())
        except OSError as failure:
            raise TcapError(f"tcap sweep: cannot write --plot: {failure.strerror}", path=path, code=EXIT_IO) from None

    return draw

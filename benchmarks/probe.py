"""Probe cost: `tcap run --verify warn` against `--verify off`, same profile and command."""

from __future__ import annotations

import compileall
import os
import sys
import tempfile
from pathlib import Path

from common import interleave, median, timed_run

#: Targets for the median difference, in milliseconds.
TARGETS = {"pass": 3.0, "import numpy": 6.0}
#: Target for one check with every library the probe reads loaded, in milliseconds.
CHECK_TARGET = 5.0
#: Times the probe's check inside one process with all the pool libraries
#: loaded. The import watcher is taken off first, so no timer thread checks
#: concurrently and the first check is the process's first.
CHECK_PROGRAM = """
import sys, time
probe = sys.modules["_tcap_probe"]
sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "_Watcher"]
import numpy, scipy.linalg, sklearn.utils._openmp_helpers, numexpr, numba, polars, numcodecs.blosc, blosc
import pyarrow, cv2, onnxruntime, tokenizers, lightgbm, xgboost
for optional in ("faiss", "jax"):  # not test dependencies: loaded where installed
    try:
        __import__(optional)
    except ImportError:
        pass
start = time.perf_counter(); probe.check("bench"); first = time.perf_counter() - start
later = []
for _ in range(50):
    start = time.perf_counter(); probe.check("bench"); later.append(time.perf_counter() - start)
rescans = []
for _ in range(20):  # after an import, or RESCAN seconds after the last look: the libraries scanned again
    probe._state["controller"] = None
    start = time.perf_counter(); probe.check("bench"); rescans.append(time.perf_counter() - start)
import _tcap_threadpoolctl
pools = len(_tcap_threadpoolctl.threadpool_info()) + len(probe.other_pools())
print(first, sorted(later)[25], pools, sorted(rescans)[10])
"""
#: (program, profile) pairs: kmeans caps BLAS at 1, default every pool at the CPU count.
CASES = (("pass", "kmeans"), ("import numpy", "kmeans"), ("import numpy", "default"))


def run(rounds: int) -> str:
    python = sys.executable
    tcap = str(Path(python).parent / "tcap")
    # What pip does at install time: without bytecode (PYTHONDONTWRITEBYTECODE,
    # a read-only checkout) every start would compile probe.py again.
    import tcap as package

    compileall.compile_dir(os.path.dirname(package.__file__), quiet=1)
    with tempfile.TemporaryDirectory() as home:
        env = dict(os.environ, XDG_CACHE_HOME=os.path.join(home, "cache"), XDG_CONFIG_HOME=os.path.join(home, "cfg"))
        env.pop("PYTHONPATH", None)
        env.pop("TCAP_DEBUG", None)
        cases = {}
        for code, profile in CASES:
            for mode in ("off", "warn"):
                argv = [tcap, "run", "-p", profile, "--verify", mode, "--", python, "-c", code]
                cases[f"{code} / {profile} / {mode}"] = lambda argv=argv: timed_run(argv, env)
        samples = interleave(cases, rounds)
    lines = [
        "## Probe cost",
        "",
        f"Median wall time of {rounds} interleaved rounds (cases shuffled each round, 3 warm-up rounds) of "
        "`tcap run -p PROFILE --verify MODE -- python -c CODE`, with the plan cached "
        "and tcap's bytecode compiled (as `pip install` leaves it). "
        "`warn` puts the probe's "
        "bootstrap on PYTHONPATH, so the child also loads `sitecustomize` and `probe.py` and arms the "
        "import watcher; with `import numpy` the watcher fires and starts the timer thread. The "
        "difference is the median of the per-round differences (warn minus off, measured in the same round), "
        "with their range.",
        "",
        "| command | profile | off: median ms (min–max) | warn: median ms (min–max) "
        "| difference ms (min–max) | target ms |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for label, profile in CASES:
        off, warn = samples[f"{label} / {profile} / off"], samples[f"{label} / {profile} / warn"]
        paired = [(w - o) * 1000 for w, o in zip(warn, off)]  # same round
        diff, low, high = median(paired), min(paired), max(paired)
        verdict = "met" if diff <= TARGETS[label] else "MISSED"
        lines.append(
            f"| `python -c \"{label}\"` | {profile} "
            f"| {median(off) * 1000:.2f} ({min(off) * 1000:.2f}–{max(off) * 1000:.2f}) "
            f"| {median(warn) * 1000:.2f} ({min(warn) * 1000:.2f}–{max(warn) * 1000:.2f}) "
            f"| {diff:+.2f} ({low:+.2f}…{high:+.2f}) | ≤ {TARGETS[label]:.0f} ({verdict}) |"
        )
    lines += check_cost(python, tcap, max(5, rounds // 8))
    with tempfile.TemporaryDirectory() as home:
        env = dict(os.environ, XDG_CACHE_HOME=os.path.join(home, "cache"), XDG_CONFIG_HOME=os.path.join(home, "cfg"))
        env.pop("PYTHONPATH", None)
        lines += share_cost(python, tcap, env, 5)
        lines += observe_cost(python, tcap, env, 5)
    lines += [
        "",
        "The probe imports only the standard library at start (no numpy, no threadpoolctl), so what it "
        "adds to a start is one more module found on PYTHONPATH, `probe.py` loaded by path and a "
        "meta-path entry; with numpy, also `threading` and the timer thread it starts. threadpoolctl "
        "loads at the first check: 0.25 s after the first numeric import on the timer thread, or at exit "
        "if the process runs at least as many native threads as its smallest cap (only then can a "
        "pool be over its cap): under `kmeans` (BLAS at 1) `import numpy` starts no native thread, under `default` "
        "OpenBLAS starts one, below the cap of 2, so neither short program loads threadpoolctl.",
        "",
    ]
    return "\n".join(lines)


#: One tick of sharing (probe._share_tick: measure, publish, read the table,
#: decide) with 63 other busy processes in the table, timed inside a process.
SHARE_TICK_PROGRAM = """
import os, sys, time
import numpy
probe = sys.modules["_tcap_probe"]
while probe._state.get("sharer") is None:
    time.sleep(0.01)
share, table = probe._state["share_module"], probe._state["sharer"].table
now = time.monotonic()
for slot in range(1, 64):  # 63 busy siblings whose heartbeats stay fresh
    record = share.RECORD.pack(100000 + slot, 1, 1, now + 3600, share.BUSY_FLAG, 1, 1)
    os.pwrite(table.fd, record, slot * share.RECORD.size)
assert len(table.busy_others(os.getpid(), now)) == 63
rounds = []
for _ in range(7):
    start = time.perf_counter()
    for _ in range(500):
        probe._share_tick()
    rounds.append((time.perf_counter() - start) / 500)
print(sorted(rounds)[3])
"""
#: A launch of N idle Python processes with numpy (a parent and N-1
#: children), sampled once they are all in: the CPU time of all their threads
#: over a window with no scheduled check in it (checks run 0.25, 0.75, 1.75,
#: 3.75, 7.75 and 15.75 s after the first numeric import). Idle, they spend it
#: on the probe's timer only; with sharing off the timer sleeps till a check.
SHARE_LAUNCH_PROGRAM = """
import os, subprocess, sys, time
n = int(sys.argv[1])
child = "import numpy, time; time.sleep(16)"
kids = [subprocess.Popen([sys.executable, "-c", child]) for _ in range(n - 1)]
import numpy
pids = [os.getpid()] + [k.pid for k in kids]

def probe_cpu():
    total = 0.0
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:  # nanoseconds on a CPU
                    total += int(f.read().split()[0]) / 1e9
            except OSError:
                pass
    return total

time.sleep(8.5)
before, start = probe_cpu(), time.monotonic()
time.sleep(6.0)
after, end = probe_cpu(), time.monotonic()
print((after - before) / (end - start))
for k in kids:
    k.kill()
"""


def share_cost(python: str, tcap: str, env: dict[str, str], runs: int) -> list[str]:
    """Sharing's own cost: one tick with a 64-process table, and the probe
    threads of a 64-process launch, with sharing on and off."""
    import subprocess

    ticks = []
    for _ in range(runs):
        out = subprocess.run([tcap, "run", "--", python, "-c", SHARE_TICK_PROGRAM], env=env, capture_output=True,
                             text=True, check=True).stdout
        ticks.append(float(out) * 1e6)
    launch = {}
    for mode in ("busy", "off"):
        out = subprocess.run([tcap, "run", "--share", mode, "--", python, "-c", SHARE_LAUNCH_PROGRAM, "64"],
                             env=env, capture_output=True, text=True, check=True, timeout=120).stdout
        launch[mode] = float(out) * 100  # % of one core
    per_second = median(ticks) * 4 / 1e6 * 64 * 100  # 4 ticks a second, 64 processes: % of one core
    verdict = "met" if launch["busy"] - launch["off"] <= 1.0 else "MISSED"
    return [
        "",
        "**Sharing's coordination** (docs/sharing.md): one tick of a process — measure its Python threads, "
        "write its record, read the table, decide — timed inside the process with 63 other busy processes in "
        f"the table ({runs} processes, median of 7 × 500 ticks each); and a launch of 64 idle Python processes "
        "with numpy, the CPU time of all their threads over 6 s with no scheduled check in it:",
        "",
        "| measure | value | target |",
        "|---|---:|---:|",
        f"| one tick, 64-process table | {median(ticks):.1f} µs ({min(ticks):.1f}–{max(ticks):.1f}) | |",
        f"| that × 4 ticks/s × 64 processes | {per_second:.2f} % of one core | |",
        f"| 64-process launch, every thread, share busy | {launch['busy']:.2f} % of one core | |",
        f"| 64-process launch, every thread, share off | {launch['off']:.2f} % of one core | |",
        f"| sharing's own cost (busy − off) | {launch['busy'] - launch['off']:.2f} % of one core "
        f"| ≤ 1 % ({verdict}) |",
    ]


#: One observation sample (probe._observe_tick: every thread's CPU clock,
#: schedstat for those that ran) in a process of 64 threads, BUSY of them
#: hashing without the GIL and the rest waiting, timed inside the process.
OBSERVE_PROGRAM = """
import hashlib, os, sys, threading, time
import numpy
probe = sys.modules["_tcap_probe"]
busy = int(sys.argv[1])
stop = threading.Event()
def work():
    data = os.urandom(1 << 16)
    while not stop.is_set():
        hashlib.sha256(data).digest()
threads = [threading.Thread(target=work if i < busy else stop.wait, daemon=True) for i in range(63)]
for t in threads:
    t.start()
while probe._state.get("observer") is None:
    time.sleep(0.01)
observer = probe._state["observer"]
time.sleep(0.3)
rounds = []
for _ in range(7):
    start = time.perf_counter()
    for _ in range(50):
        observer.last = (observer.last[0] - 0.25, observer.last[1])  # as if a tick had passed
        probe._observe_tick(observer)
    rounds.append((time.perf_counter() - start) / 50)
count = len(os.listdir("/proc/self/task"))
stop.set()
print(sorted(rounds)[3], count)
"""


def observe_cost(python: str, tcap: str, env: dict[str, str], runs: int) -> list[str]:
    """Observation's own cost: one sample of a 64-thread process, idle and busy."""
    import subprocess

    found: dict[int, list[float]] = {0: [], 2: []}
    threads = 0
    for busy in found:
        for _ in range(runs):
            out = subprocess.run([tcap, "run", "--threads", "64", "--", python, "-c", OBSERVE_PROGRAM, str(busy)],
                                 env=env, capture_output=True, text=True, check=True, timeout=120).stdout.split()
            found[busy].append(float(out[0]) * 1e6)
            threads = int(out[1])
    rows = []
    for busy, ticks in found.items():
        share = median(ticks) * 4 / 1e6 * 100  # 4 samples a second: % of one core
        rows.append(f"| {threads} threads, {busy} of them busy | {median(ticks):.0f} µs ({min(ticks):.0f}–"
                    f"{max(ticks):.0f}) | {share:.3f} % of one core |")
    return [
        "",
        "**Observed parallelism** (docs/verification.md): one sample of the probe's own process — every "
        "thread's CPU clock, schedstat for the threads that ran, the rule — timed inside a process of 64 "
        f"threads ({runs} processes, median of 7 × 50 samples each; while the process works it samples "
        "4 times a second, idle once a second):",
        "",
        "| process | one sample | at 4 samples a second |",
        "|---|---:|---:|",
        *rows,
    ]


def probe_rescan() -> str:
    from tcap import probe

    return f"{probe.RESCAN:g}"


def check_cost(python: str, tcap: str, runs: int) -> list[str]:
    """One check with numpy, scipy, scikit-learn's OpenMP, numexpr, Numba,
    Polars, numcodecs and python-blosc loaded: the first of a process and the
    later ones, timed inside the process."""
    import subprocess

    firsts, laters, rescans, pools = [], [], [], 0
    with tempfile.TemporaryDirectory() as home:
        env = dict(os.environ, XDG_CACHE_HOME=os.path.join(home, "cache"), XDG_CONFIG_HOME=os.path.join(home, "cfg"))
        env.pop("PYTHONPATH", None)
        for _ in range(runs + 1):  # the first run also records the libraries' facts: not counted
            out = subprocess.run([tcap, "run", "--", python, "-c", CHECK_PROGRAM], env=env, capture_output=True,
                                 text=True, check=True).stdout.split()
            firsts.append(float(out[0]) * 1000)
            laters.append(float(out[1]) * 1000)
            pools = int(out[2])
            rescans.append(float(out[3]) * 1000)
    firsts, laters, rescans = firsts[1:], laters[1:], rescans[1:]
    verdict = "met" if median(laters) <= CHECK_TARGET else "MISSED"
    return [
        "",
        f"**One check with every pool library loaded** ({pools} pools: numpy's and scipy's OpenBLAS, "
        "scikit-learn's OpenMP, numexpr, Numba, Polars, numcodecs' and python-blosc's Blosc, Arrow, OpenCV, "
        "tokenizers, faiss where installed; ONNX Runtime, LightGBM, XGBoost and JAX loaded too), timed inside the "
        f"process, {runs} processes (median of 50 checks each):",
        "",
        "| check | median ms (min–max) | target ms |",
        "|---|---:|---:|",
        f"| a check | {median(laters):.2f} ({min(laters):.2f}–{max(laters):.2f}) | ≤ {CHECK_TARGET:.0f} ({verdict}) |",
        f"| a check that scans for libraries again (after an import, or {probe_rescan()} s after the last scan) "
        f"| {median(rescans):.2f} ({min(rescans):.2f}–{max(rescans):.2f}) | ≤ {CHECK_TARGET:.0f} "
        f"({'met' if median(rescans) <= CHECK_TARGET else 'MISSED'}) |",
        f"| the first check of a process (loads threadpoolctl, reads the libraries' build facts) "
        f"| {median(firsts):.2f} ({min(firsts):.2f}–{max(firsts):.2f}) | once, on the probe's thread |",
    ]

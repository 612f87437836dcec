"""The oversubscription suite: real workloads with default pools and under tcap,
and how well `tcap sweep` picks a configuration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from common import interleave, median, timed_run

from tcap.variables import VARIABLES

HERE = Path(__file__).resolve().parent / "workloads"

#: name -> (script, tcap flags that fit its shape, what the shape is)
WORKLOADS = {
    "serial_matmul": ("serial_matmul.py", ["-p", "default"], "one process, large matrix products"),
    "threadpool_matmul": ("threadpool_matmul.py", ["--workers", "2"], "Python ThreadPool(2) of matrix products"),
    "spawn_pool_small": ("spawn_pool_small.py", ["--workers", "2"], "spawn Pool(2), many small matrix products"),
    "kmeans_pool": ("kmeans_pool.py", ["-p", "kmeans", "--workers", "2"], "spawn Pool(2) of KMeans fits"),
    "gridsearch": ("gridsearch.py", ["--workers", "2"], "GridSearchCV(n_jobs=-1), KernelRidge"),
    "joblib_loop": ("joblib_loop.py", ["--workers", "2"], "joblib Parallel(n_jobs=2) of matrix products"),
}
#: The sweep grid tried on every workload.
GRID = ["--blas", "1,2", "--openmp", "1,2"]
#: Speed-up tcap must reach on the spawn-pool workload; slowdown allowed anywhere.
SPAWN_TARGET, SLOWDOWN = 5.0, 0.03


def _env(home: str) -> dict[str, str]:
    """The machine's defaults: no inherited thread variables, a private cache."""
    names = {v.name for v in VARIABLES}
    env = {k: v for k, v in os.environ.items() if k not in names and not k.startswith("TCAP_")}
    env.pop("PYTHONPATH", None)
    env.update(XDG_CACHE_HOME=os.path.join(home, "cache"), XDG_CONFIG_HOME=os.path.join(home, "config"))
    return env


def compare(rounds: int, env: dict[str, str]) -> tuple[list[str], list[str]]:
    python = sys.executable
    tcap = str(Path(python).parent / "tcap")
    cases = {}
    for name, (script, flags, _) in WORKLOADS.items():
        argv = [python, str(HERE / script)]
        cases[f"{name} / default"] = lambda argv=argv: timed_run(argv, env)
        cases[f"{name} / tcap"] = lambda argv=argv, flags=flags: timed_run([tcap, "run", *flags, "--", *argv], env)
    samples = interleave(cases, rounds, warmup=1)
    rows, problems = [], []
    for name, (_script, flags, shape) in WORKLOADS.items():
        plain, capped = samples[f"{name} / default"], samples[f"{name} / tcap"]
        ratio = median(plain) / median(capped)
        if name == "spawn_pool_small" and ratio < SPAWN_TARGET:
            problems.append(f"{name}: tcap is {ratio:.2f}x faster, target {SPAWN_TARGET:.0f}x")
        if ratio < 1 - SLOWDOWN:
            problems.append(f"{name}: tcap is {(1 / ratio - 1) * 100:.1f} % slower than default")
        rows.append(
            f"| {name} | {shape} | `{' '.join(flags)}` "
            f"| {median(plain):.2f} ({min(plain):.2f}–{max(plain):.2f}) "
            f"| {median(capped):.2f} ({min(capped):.2f}–{max(capped):.2f}) | {ratio:.2f}x |"
        )
    return rows, problems


def sweep_pick(name: str, repeat: int, env: dict[str, str]) -> dict[str, object]:
    python = sys.executable
    tcap = str(Path(python).parent / "tcap")
    argv = [tcap, "sweep", *GRID, "--repeat", str(repeat), "--json", "--", python, str(HERE / WORKLOADS[name][0])]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def sweeps(env: dict[str, str]) -> tuple[list[str], list[str]]:
    """Per workload: the pick of a quick sweep (2 repeats) against the best of
    an exhaustive run of the same grid (5 repeats), judged by the latter."""
    rows, problems = [], []
    for name in WORKLOADS:
        quick = sweep_pick(name, 2, env)
        full = sweep_pick(name, 5, env)
        medians = {json.dumps(r["config"], sort_keys=True): r["wall_median"] for r in full["ranking"]}
        best = full["ranking"][0]
        picked = medians[json.dumps(quick["best"], sort_keys=True)]
        gap = (picked / best["wall_median"] - 1) * 100
        if gap > 5:
            problems.append(f"{name}: sweep's pick is {gap:.1f} % slower than the exhaustive best")
        label = " ".join(f"{k}={v}" for k, v in quick["best"].items())
        best_label = " ".join(f"{k}={v}" for k, v in best["config"].items())
        rows.append(
            f"| {name} | {label} | {best_label} | {picked:.2f} | {best['wall_median']:.2f} | {gap:+.1f} % |"
        )
    return rows, problems


def run(rounds: int) -> str:
    import tempfile

    with tempfile.TemporaryDirectory() as home:
        env = _env(home)
        compared, problems = compare(rounds, env)
        swept, sweep_problems = sweeps(env)
    lines = [
        "## Oversubscription workloads",
        "",
        f"Each workload (benchmarks/workloads/) run {rounds} times with the machine's default pools (no thread "
        "variables set: OpenBLAS and OpenMP start one thread per CPU in every process) and under `tcap run` "
        "with the flags that fit its shape, interleaved (shuffled each round, one warm-up round). Wall time "
        "in seconds, median (min–max); the ratio is default over tcap (above 1: tcap is faster). Targets: "
        f"at least {SPAWN_TARGET:.0f}x on the spawn-pool workload, and nowhere more than "
        f"{SLOWDOWN * 100:.0f} % slower.",
        "",
        "| workload | shape | tcap flags | default s | tcap s | speed-up |",
        "|---|---|---|---:|---:|---:|",
        *compared,
        "",
        "### `tcap sweep` picks",
        "",
        f"`tcap sweep {' '.join(GRID)}` on each workload: a quick sweep (`--repeat 2`) picks a configuration; "
        "an exhaustive run of the same grid (`--repeat 5`) measures every configuration again. The pick's "
        "median in the exhaustive run is compared with the exhaustive best (target: within 5 %).",
        "",
        "| workload | quick sweep's pick | exhaustive best | pick's median s | best median s | gap |",
        "|---|---|---|---:|---:|---:|",
        *swept,
        "",
    ]
    misses = problems + sweep_problems
    lines.append("Targets: " + ("all met." if not misses else "MISSED: " + "; ".join(misses) + "."))
    lines.append("")
    return "\n".join(lines)

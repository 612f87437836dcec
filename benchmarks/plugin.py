"""The pytest plugin: `pytest -n 2` over a numpy/scikit-learn test suite,
without and with `--tcap`, and what the plugin costs when it is not asked.

The suite (benchmarks/workloads/plugin/suite/, 48 tests: matrix products,
solves, SVDs, QR, KMeans, LogisticRegression, histogram boosting, PCA and
Ridge on small data, numpy and scikit-learn imported by its conftest) runs
as `python -m pytest -n 2` (pytest-xdist): 2 workers, each with BLAS and
OpenMP pools of one thread per CPU, the oversubscription the plugin is for.
Every configuration is the whole command timed from the outside; round r
runs every configuration once, in an order rotated by r.

The inert case (benchmarks/workloads/plugin/inert/, 200 empty tests, no
xdist) times pytest with the plugin loaded but not asked against `-p
no:tcap`: the plugin's cost for everyone who has tcap installed.

    benchmarks/plugin.py [--rounds N] [--scale S]

prints the section; `benchmarks/run.py --only plugin` writes it into
docs/benchmarks.md. PLUGIN_ROUNDS overrides the rounds, PLUGIN_SCALE (a
factor on every test's work, 1 by default) the sizes; the smoke test runs
a sliver.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import median, timed_run  # noqa: E402

HERE = Path(__file__).resolve().parent / "workloads" / "plugin"
SUITE, INERT = HERE / "suite", HERE / "inert"
#: The suite's configurations: extra pytest arguments after `-n 2`.
CONFIGS: dict[str, list[str]] = {"no --tcap": [], "--tcap default": ["--tcap", "default"],
                                 "--tcap serial": ["--tcap", "serial"]}
#: Target: `--tcap default` at least this many times faster than no --tcap.
SPEEDUP_TARGET = 1.5
#: Rounds of the inert case per round of the suite (it takes ~1 s).
INERT_PER_ROUND = 4
#: A run longer than this is a hang: the benchmark fails rather than waits.
TIMEOUT = 900.0


def _installed() -> bool:
    """Whether pytest loads the plugin by itself (tcap's pytest11 entry point)."""
    return any(ep.name == "tcap" for ep in importlib.metadata.entry_points(group="pytest11"))


def _env(home: str, scale: float) -> dict[str, str]:
    """The machine's defaults (no thread variables, no TCAP_*, no PYTEST_*), a private cache."""
    from workloads import _env as workloads_env

    env = {k: v for k, v in workloads_env(home).items() if not k.startswith("PYTEST_")}
    env["PLUGIN_SCALE"] = repr(scale)
    return env


def suite_command(config: str, python: str = sys.executable) -> list[str]:
    """`pytest -n 2` over the suite under ``config`` (a name of CONFIGS)."""
    loaded = [] if _installed() else ["-p", "tcap.pytest_plugin"]
    return [python, "-m", "pytest", "-n", "2", "-q", "-c", str(SUITE / "pytest.ini"), *loaded, *CONFIGS[config],
            str(SUITE)]


def inert_command(loaded: bool, python: str = sys.executable) -> list[str]:
    """pytest over the empty tests, the plugin loaded (not asked) or not."""
    if loaded:
        plugin = [] if _installed() else ["-p", "tcap.pytest_plugin"]
    else:
        plugin = ["-p", "no:tcap"] if _installed() else []
    return [python, "-m", "pytest", "-q", "-c", str(INERT / "pytest.ini"), *plugin, str(INERT)]


def timed(argv: Sequence[str], env: Mapping[str, str]) -> float:
    """Wall time of one run of ``argv`` from the outside (pytest reports
    failures on stdout); a failure is an error."""
    return timed_run(argv, env, cwd=HERE, timeout=TIMEOUT, with_stdout=True, tail=800)


def import_cost(env: Mapping[str, str], runs: int = 15) -> list[float]:
    """Milliseconds ``import tcap.pytest_plugin`` takes (tcap's package
    included) in an interpreter that has pytest imported, as -X importtime
    reports it, ``runs`` times; whether bytecode is cached follows ``env``."""
    costs = []
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import pytest; import tcap.pytest_plugin"],
                              env=dict(env), capture_output=True, text=True, check=True, timeout=60)
        line = next(line for line in done.stderr.splitlines() if line.rstrip().endswith("| tcap.pytest_plugin"))
        costs.append(int(line.split("|")[1]) / 1000)
    return costs


def measure(
    rounds: int, env: Mapping[str, str], warmup: bool = True, inert_rounds: int = INERT_PER_ROUND,
    log: bool = False,
) -> dict[str, list[float]]:
    """Case -> wall times: a warm-up run of every command, then ``rounds``
    rounds, each running every suite configuration once (rotated by r),
    then the inert pair ``inert_rounds`` times (alternating which goes first)."""
    names = list(CONFIGS)
    samples: dict[str, list[float]] = {name: [] for name in [*names, "inert: loaded", "inert: -p no:tcap"]}
    for r in range(-1 if warmup else 0, rounds):
        start = time.perf_counter()
        for j in range(len(names)):
            name = names[(j + max(r, 0)) % len(names)]
            elapsed = timed(suite_command(name), env)
            if r >= 0:
                samples[name].append(elapsed)
            if log:
                print(f"  round {r + 1}: {name}: {elapsed:.2f} s", file=sys.stderr)
        for k in range(inert_rounds if r >= 0 else 1):
            pair = [True, False] if (k + max(r, 0)) % 2 == 0 else [False, True]
            for loaded in pair:
                elapsed = timed(inert_command(loaded), env)
                if r >= 0:
                    samples["inert: loaded" if loaded else "inert: -p no:tcap"].append(elapsed)
        if log:
            label = "warm-up" if r < 0 else f"round {r + 1}"
            print(f"{label}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return samples


def _cell(values: Sequence[float]) -> str:
    return f"{median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def section(samples: Mapping[str, list[float]], rounds: int, scale: float, load: tuple[float, float],
            imports: Sequence[float] = ()) -> str:
    base = median(samples["no --tcap"])
    rows = []
    for name in CONFIGS:
        values = samples[name]
        speedup = base / median(values)
        command = " ".join(["pytest -n 2", *CONFIGS[name]])
        rows.append(f"| `{command}` | {_cell(values)} | {speedup:.2f} |")
    speedup = base / median(samples["--tcap default"])
    met = speedup >= SPEEDUP_TARGET
    loaded, alone = samples["inert: loaded"], samples["inert: -p no:tcap"]
    paired = [(a - b) * 1000 for a, b in zip(loaded, alone)]
    scale_note = "" if scale == 1 else f" Work scaled by {scale:g} (PLUGIN_SCALE)."
    lines = [
        "## pytest plugin",
        "",
        "`pytest -n 2` (pytest-xdist, 2 workers) over a numpy/scikit-learn test suite "
        "(benchmarks/workloads/plugin/suite/: 48 tests of matrix products, solves, SVDs, QR and least squares, "
        "KMeans, LogisticRegression, histogram gradient boosting, PCA and Ridge on small data; numpy and "
        "scikit-learn imported by its conftest), without the plugin asked and with `--tcap default` (each worker's "
        "pools at cpus / 2) and `--tcap serial` (every pool at 1). Without it every worker has BLAS and OpenMP "
        "pools of one thread per CPU: 2 workers × 2 threads on 2 CPUs. Wall time of the whole command from the "
        f"outside in seconds, median (min–max) of {rounds} rounds after a warm-up run of each; round r runs the "
        "three in an order rotated by r. Speed-up: median without ÷ median with." + scale_note,
        "",
        "| command | wall s | speed-up |",
        "|---|---:|---:|",
        *rows,
        "",
        f"Target (`--tcap default` ≥ {SPEEDUP_TARGET:g}× faster than without): "
        f"{'met' if met else 'MISSED'} ({speedup:.2f}×). Load average (1 min) at the start and the end of the "
        f"measurement: {load[0]:.1f}, {load[1]:.1f} (other work on the machine makes oversubscribed pools "
        "wait longer still).",
        "",
        "The plugin's cost when not asked (loaded wherever tcap is installed): `pytest -q` over 200 empty tests "
        "(benchmarks/workloads/plugin/inert/, no xdist), the plugin loaded against `-p no:tcap`, "
        f"{len(loaded)} pairs, each pair in alternating order: loaded {_cell(loaded)} s, without "
        f"{_cell(alone)} s; the difference within a pair {median(paired):+.1f} ms median "
        f"({min(paired):+.1f}…{max(paired):+.1f})."
        + (f" Importing the plugin (and tcap's package) takes {median(imports):.2f} ms "
           f"({min(imports):.2f}–{max(imports):.2f}, -X importtime, {len(imports)} runs"
           + (", compiled from source each time: PYTHONDONTWRITEBYTECODE is set"
              if os.environ.get("PYTHONDONTWRITEBYTECODE") else "") + ")." if imports else ""),
        "",
    ]
    return "\n".join(lines)


def run(rounds: int, scale: float | None = None, log: bool = True) -> str:
    rounds = int(os.environ.get("PLUGIN_ROUNDS", rounds))
    if scale is None:
        scale = float(os.environ.get("PLUGIN_SCALE", "1"))
    with tempfile.TemporaryDirectory() as home:
        env = _env(home, scale)
        before = os.getloadavg()[0]
        samples = measure(rounds, env, log=log)
        after = os.getloadavg()[0]
        imports = import_cost(env)
    return section(samples, rounds, scale, (before, after), imports)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scale", type=float, default=None)
    args = parser.parse_args()
    print(run(args.rounds, args.scale))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

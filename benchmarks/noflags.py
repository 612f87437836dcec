"""No flags: `tcap run -- COMMAND` (the default) against no tcap and the best flags.

Each shape (benchmarks/workloads/noflags/) is a small self-contained program;
every configuration runs the same program with the same work, timed from the
outside (the whole command, interpreter start included). Round r runs every
configuration of every shape once, shapes and configurations rotated by r.

    benchmarks/noflags.py [--rounds N] [--scale S] [--shape NAME ...]

prints the section; `benchmarks/run.py --only noflags` writes it into
docs/benchmarks.md. NOFLAGS_ROUNDS overrides the rounds, NOFLAGS_SCALE (a factor
on every program's work, 1 by default) the sizes; the smoke test runs the
programs with a tiny scale.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import median, timed_run  # noqa: E402

HERE = Path(__file__).resolve().parent / "workloads" / "noflags"
#: Targets: the default within this factor of the best flags on every shape,
#: and of no tcap.
BEST_TARGET, NONE_TARGET = 1.10, 1.03
#: The flag grid; the best of it (by median) is the "best flags" column.
GRID = {"--threads 1": ["--threads", "1"], "--threads 2": ["--threads", "2"], "--workers 2": ["--workers", "2"]}
#: A run longer than this is a hang: the benchmark fails rather than waits.
TIMEOUT = 600.0


class Shape(NamedTuple):
    name: str
    what: str
    #: The command, "{python}" standing for the interpreter and "{dir}" for HERE.
    argv: tuple[str, ...]


SHAPES = [
    Shape("serial BLAS", "one process: a loop of 700x700 matrix products, then SVDs", ("{python}", "serial_blas.py")),
    Shape("ThreadPool", "`multiprocessing.pool.ThreadPool(cpus)` of Python threads calling BLAS",
          ("{python}", "threadpool_blas.py")),
    Shape("spawn Pool", "spawn `multiprocessing.Pool(cpus)` of matrix products", ("{python}", "spawn_pool.py")),
    Shape("fork Pool", "fork `multiprocessing.Pool(cpus)` of `scipy.linalg.svd`", ("{python}", "fork_pool_svd.py")),
    Shape("ProcessPoolExecutor", "`concurrent.futures.ProcessPoolExecutor(cpus)` of small products",
          ("{python}", "process_pool_executor.py")),
    Shape("joblib", "joblib `Parallel(n_jobs=-1)` (loky) of matrix products", ("{python}", "joblib_blas.py")),
    Shape("Dask", "Dask `distributed.LocalCluster` (processes, `n_workers=cpus`) mapping BLAS tasks",
          ("{python}", "dask_cluster.py")),
    Shape("pytest -n 2", "`pytest -n 2` (pytest-xdist) over a numpy-heavy test file",
          ("{python}", "-m", "pytest", "-n", "2", "-q", "-c", "{dir}/pytest.ini", "{dir}/xdist_checks.py")),
    Shape("cross-validation", "`cross_val_score(n_jobs=-1)` of HistGradientBoostingClassifier (OpenMP)",
          ("{python}", "cross_val_hgb.py")),
    Shape("KMeans", "one KMeans fit (25000x20, 8 clusters, `n_init=2`)", ("{python}", "kmeans_fit.py")),
    Shape("copies", "`bash -c 'python copy_blas.py 0 & python copy_blas.py 1; wait'`",
          ("bash", "-c", "{python} copy_blas.py 0 & p=$!; {python} copy_blas.py 1; r=$?; wait $p && exit $r")),
]


def _env(home: str, scale: float) -> dict[str, str]:
    """The machine's defaults (no thread variables, no TCAP_*), a private cache."""
    from workloads import _env as workloads_env

    env = workloads_env(home)
    env["NOFLAGS_SCALE"] = repr(scale)
    return env


def command(shape: Shape, flags: Sequence[str] | None, python: str = sys.executable) -> list[str]:
    """The argv of ``shape`` without tcap (``flags`` None) or under `tcap run FLAGS --`."""
    argv = [part.replace("{python}", python).replace("{dir}", str(HERE)) for part in shape.argv]
    if flags is None:
        return argv
    return [str(Path(python).parent / "tcap"), "run", *flags, "--", *argv]


def configurations(env: Mapping[str, str], python: str = sys.executable) -> dict[str, list[str] | None]:
    """Configuration name -> tcap flags (None: no tcap). `--share off` only once tcap has it."""
    configs: dict[str, list[str] | None] = {"no tcap": None, "default": []}
    tcap = str(Path(python).parent / "tcap")
    probe = subprocess.run([tcap, "run", "--share", "off", "--", "true"], env=dict(env), capture_output=True,
                           check=False, timeout=60)
    if probe.returncode == 0:
        configs["share off"] = ["--share", "off"]
    configs.update(GRID)
    return configs


def timed(argv: Sequence[str], env: Mapping[str, str]) -> float:
    """Wall time of one run of ``argv`` from the outside; a failure is an error."""
    return timed_run(argv, env, cwd=HERE, timeout=TIMEOUT, tail=800)


def measure(
    shapes: Sequence[Shape], configs: Mapping[str, list[str] | None], rounds: int, env: Mapping[str, str],
    warmup: bool = True, log: bool = False,
) -> dict[tuple[str, str], list[float]]:
    """(shape, configuration) -> wall times: a warm-up run of every command,
    then ``rounds`` rounds, each running every configuration of every shape
    once; round r starts at shape r and, within a shape, at configuration r."""
    names = list(configs)
    samples: dict[tuple[str, str], list[float]] = {(s.name, c): [] for s in shapes for c in names}
    for r in range(-1 if warmup else 0, rounds):
        order = [shapes[(i + max(r, 0)) % len(shapes)] for i in range(len(shapes))]
        start = time.perf_counter()
        for index, shape in enumerate(order):
            for j in range(len(names)):
                config = names[(j + max(r, 0) + index) % len(names)]
                elapsed = timed(command(shape, configs[config]), env)
                if r >= 0:
                    samples[(shape.name, config)].append(elapsed)
                if log:
                    print(f"  round {r + 1}: {shape.name} / {config}: {elapsed:.2f} s", file=sys.stderr)
        if log:
            label = "warm-up" if r < 0 else f"round {r + 1}"
            print(f"{label}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return samples


def _cell(values: Sequence[float]) -> str:
    return f"{median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def table(
    shapes: Sequence[Shape], configs: Mapping[str, list[str] | None], samples: Mapping[tuple[str, str], list[float]]
) -> tuple[list[str], list[str]]:
    """The table's rows and the shapes that miss a target."""
    rows, misses = [], []
    for shape in shapes:
        def of(config: str, shape: Shape = shape) -> list[float]:
            return samples[(shape.name, config)]

        best = min(GRID, key=lambda config: median(of(config)))
        default, none = median(of("default")), median(of("no tcap"))
        over_best, over_none = default / median(of(best)), default / none
        verdicts = []
        if over_best > BEST_TARGET:
            verdicts.append(f"÷ best {over_best:.2f} > {BEST_TARGET:g}")
        if over_none > NONE_TARGET:
            verdicts.append(f"÷ no tcap {over_none:.2f} > {NONE_TARGET:g}")
        if verdicts:
            misses.append(f"{shape.name}: " + ", ".join(verdicts))
        share_off = _cell(of("share off")) if "share off" in configs else "—"
        rows.append(
            f"| {shape.name} | {_cell(of('no tcap'))} | {_cell(of('default'))} | {share_off} "
            f"| {_cell(of(best))} (`{best}`) | {over_best:.2f} | {over_none:.2f} "
            f"| {'met' if not verdicts else 'MISSED'} |"
        )
    return rows, misses


def section(
    shapes: Sequence[Shape], configs: Mapping[str, list[str] | None], samples: Mapping[tuple[str, str], list[float]],
    rounds: int, scale: float,
) -> str:
    rows, misses = table(shapes, configs, samples)
    share_note = (
        "`tcap run --share off --` (the default without run-time sharing)"
        if "share off" in configs
        else "(`tcap run --share off` did not exist in this tcap: column skipped)"
    )
    scale_note = "" if scale == 1 else f" Work scaled by {scale:g} (NOFLAGS_SCALE)."
    lines = [
        "## No flags",
        "",
        "What `tcap run -- COMMAND` (no profile, no flags) does for programs of common shapes "
        "(benchmarks/workloads/noflags/, each sized to take about 0.5–3 s here without tcap), against the same "
        f"program without tcap, the default without sharing {share_note}, and the best of the flags "
        f"{', '.join(f'`{g}`' for g in GRID)} (named). Wall time of the whole command from the outside "
        "(interpreter start included) in seconds, median (min–max) of "
        f"{rounds} rounds after a warm-up run of every command; round r runs every configuration of every shape "
        "once, the shapes and the configurations in an order rotated by r, so every case is measured side by side "
        "in one run. The work of a shape is the same, seeded, in every configuration. Ratios are of medians "
        f"(below 1: the default is faster). Targets: the default ≤ {BEST_TARGET:.2f} × the best flags on every "
        f"shape, and ≤ {NONE_TARGET:.2f} × no tcap.{scale_note}",
        "",
        "| shape | no tcap s | tcap default s | default without sharing s | best flags s (which) "
        "| default ÷ best | default ÷ no tcap | targets |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
        *rows,
        "",
        f"Targets (default ≤ {BEST_TARGET:.2f} × best flags on every shape, ≤ {NONE_TARGET:.2f} × no tcap): "
        + (f"met on all {len(shapes)} shapes." if not misses else
           f"met on {len(shapes) - len(misses)} of {len(shapes)}; MISSED: " + "; ".join(misses) + "."),
        "",
        "The shapes: " + "; ".join(f"*{s.name}*: {s.what}" for s in shapes) + ".",
        "",
    ]
    return "\n".join(lines)


def run(rounds: int, scale: float | None = None, only: Sequence[str] = (), log: bool = True) -> str:
    rounds = int(os.environ.get("NOFLAGS_ROUNDS", rounds))
    if scale is None:
        scale = float(os.environ.get("NOFLAGS_SCALE", "1"))
    shapes = [s for s in SHAPES if not only or s.name in only]
    with tempfile.TemporaryDirectory() as home:
        env = _env(home, scale)
        configs = configurations(env)
        samples = measure(shapes, configs, rounds, env, log=log)
    return section(shapes, configs, samples, rounds, scale)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scale", type=float, default=None)
    parser.add_argument("--shape", action="append", default=[], choices=[s.name for s in SHAPES])
    args = parser.parse_args()
    print(run(args.rounds, args.scale, args.shape))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

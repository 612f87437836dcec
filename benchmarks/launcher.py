"""Launcher overhead: `tcap run -p P -- python -S -c pass` against the bare start."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from common import interleave, median, timed_run

TARGET = 2.0


def run(rounds: int) -> str:
    python = sys.executable
    tcap = str(Path(python).parent / "tcap")
    bare = [python, "-S", "-c", "pass"]
    with tempfile.TemporaryDirectory() as home:
        env = dict(os.environ, XDG_CACHE_HOME=os.path.join(home, "cache"), XDG_CONFIG_HOME=os.path.join(home, "cfg"))
        cold = dict(env, TCAP_NO_CACHE="1")
        # A well-used cache: 64 other plans (other flags) beside the one launched.
        full = dict(env, XDG_CACHE_HOME=os.path.join(home, "full-cache"))
        for index in range(64):
            timed_run([tcap, "run", "-p", "default", "--set", f"TCAP_BENCH_FILL={index}", "--", *bare], full)
        exec_stub = "import os, sys; os.execv(sys.argv[1], sys.argv[1:])"
        cases = {
            "python -S -c pass (bare start)": lambda: timed_run(bare, env),
            "tcap run -p default -- (cached plan)": lambda: timed_run([tcap, "run", "-p", "default", "--", *bare], env),
            "tcap run -p kmeans -- (cached plan)": lambda: timed_run([tcap, "run", "-p", "kmeans", "--", *bare], env),
            "tcap run -p default -- (cached plan, 64 other plans in the cache)": lambda: timed_run(
                [tcap, "run", "-p", "default", "--", *bare], full
            ),
            "tcap run -p kmeans -- (no cache: TOML parsed)": lambda: timed_run(
                [tcap, "run", "-p", "kmeans", "--", *bare], cold
            ),
            "floor: python -c 'os.execv(...)' launcher": lambda: timed_run([python, "-c", exec_stub, *bare], env),
            "floor: python -S -c 'os.execv(...)' launcher": lambda: timed_run(
                [python, "-S", "-c", exec_stub, *bare], env
            ),
        }
        samples = interleave(cases, rounds)
    base = median(samples["python -S -c pass (bare start)"])
    lines = [
        "## Launcher overhead",
        "",
        f"Median wall time of {rounds} interleaved rounds (cases shuffled each round, 3 warm-up rounds), "
        "each run a fresh process started from Python's subprocess. Ratio is against the bare start; "
        f"the target for `tcap run` is at most {TARGET:.1f}.",
        "",
        "| case | median ms | min–max ms | ratio |",
        "|---|---:|---:|---:|",
    ]
    for name, values in samples.items():
        lines.append(
            f"| {name} | {median(values) * 1000:.2f} | {min(values) * 1000:.2f}–{max(values) * 1000:.2f} "
            f"| {median(values) / base:.2f} |"
        )
    lines += [
        "",
        "The two *floor* rows are launchers that do nothing but exec: any launcher written in Python "
        "costs at least that much. A console script (what `pip install` makes of `tcap`) cannot pass "
        "`-S` to its interpreter, so it pays for `site` like the first floor row; the `-S` row shows "
        "that even without `site` an exec-only Python launcher sits at about 2x. What tcap adds above "
        "the floor is its own imports (twelve small modules: no argparse, dataclasses, typing, "
        "re or TOML parser on a cached launch) and a few stat/read calls to check the cached plan "
        "against the profile files and machine facts. The *no cache* row is the first launch after a "
        "profile file changes: TOML is parsed and the plan resolved, then cached. The *64 other plans* "
        "row is a well-used cache: each plan is a file of its own, read by name, so a launch reads "
        "its own entry whatever else the cache holds.",
        "",
    ]
    return "\n".join(lines)

"""Static alias cost: `tcap alias --static` against a direct start of the same command, timed inside one bash."""

from __future__ import annotations

import compileall
import os
import random
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ratio_row

#: Target for the ratio of medians, static alias / direct start.
TARGET = 1.1
PROFILE = "kmeans"
COMMAND = "-c pass"
#: (key, label, alias name or None for the direct start); the first is the baseline.
CASES = (
    ("direct", "direct: `python -c pass`", None),
    ("static", f"static alias, verify warn: `tcap alias --static -p {PROFILE}`", f"tcap-{PROFILE}"),
    ("static-off", f'static alias, verify off: profile `{PROFILE}` + `verify = "off"`', f"tcap-{PROFILE}-off"),
    ("dynamic", f"dynamic alias: `tcap alias -p {PROFILE}` (`tcap run -p {PROFILE} --`)", f"dyn-{PROFILE}"),
)
#: The cases with a target: the static aliases.
TARGETED = ("static", "static-off")
#: What each case's child must see: OPENBLAS_NUM_THREADS (kmeans: blas = 1), TCAP_VERIFY, whether the probe is loaded.
EXPECTED = {
    "direct": "None None False",
    "static": "1 warn True",
    "static-off": "1 None False",
    "dynamic": "1 warn True",
}
WARMUP = 3


def _tcap(tcap: str, args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run([tcap, *args], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0 or done.stderr:
        raise RuntimeError(f"tcap {' '.join(args)} failed ({done.returncode}): {done.stderr[-500:]}")
    return done.stdout


def _aliases(tcap: str, env: dict[str, str]) -> str:
    """The alias definitions, as `tcap alias` prints them for bash."""
    static = _tcap(tcap, ["alias", "--static", "-p", PROFILE, "-p", f"{PROFILE}-off", "--shell", "bash"], env)
    if "not static" in static:
        raise RuntimeError(f"tcap alias --static fell back to a dynamic alias:\n{static}")
    dynamic = _tcap(tcap, ["alias", "-p", PROFILE, "--shell", "bash"], env)
    # Renamed: the static alias of the same profile has the default name.
    dynamic = re.sub(rf"^alias tcap-{PROFILE}=", f"alias dyn-{PROFILE}=", dynamic, flags=re.M)
    return static + dynamic


def _script(aliases: str, python: str, rounds: int, seed: int = 0) -> str:
    """A bash script that times every case once per round, in a shuffled
    order each round, and prints `T KEY START END` ($EPOCHREALTIME)."""
    check = shlex.quote(
        "import os, sys; e = os.environ; "
        "print(e.get('OPENBLAS_NUM_THREADS'), e.get('TCAP_VERIFY'), '_tcap_probe' in sys.modules)"
    )
    lines = [
        "set -e",
        "shopt -s expand_aliases",
        'if [[ -z ${EPOCHREALTIME-} ]]; then echo "bash 5 or later is needed for EPOCHREALTIME" >&2; exit 1; fi',
        f"eval {shlex.quote(aliases)}",
    ]

    def call(name: str | None, args: str) -> str:
        return f"{name + ' ' if name else ''}{shlex.quote(python)} {args}"

    # Aliases are expanded as a line is read, so each use sits on its own line
    # after the definitions; the rounds are written out, not looped.
    for key, _, name in CASES:
        lines.append(f"echo C {key} $({call(name, '-c ' + check)})")
    rng = random.Random(seed)
    order = [key for key, _, _ in CASES]
    names = {key: name for key, _, name in CASES}
    for round_number in range(WARMUP + rounds):
        rng.shuffle(order)
        for key in order:
            timed = f"s=$EPOCHREALTIME; {call(names[key], COMMAND)}; e=$EPOCHREALTIME"
            lines.append(timed + (f"; echo T {key} $s $e" if round_number >= WARMUP else ""))
    return "\n".join(lines) + "\n"


def _microseconds(stamp: str) -> int:
    seconds, _, fraction = stamp.partition(".")
    return int(seconds) * 1_000_000 + int(fraction.ljust(6, "0")[:6])


def measure(rounds: int) -> dict[str, list[float]]:
    """Seconds per start, per case, from one bash process."""
    python = sys.executable
    tcap = str(Path(python).parent / "tcap")
    import tcap as package

    # As pip leaves it: the probe's sitecustomize and probe.py compiled.
    compileall.compile_dir(os.path.dirname(package.__file__), quiet=1)
    with tempfile.TemporaryDirectory() as home:
        profiles = os.path.join(home, "profiles")
        os.makedirs(profiles)
        with open(os.path.join(profiles, f"{PROFILE}-off.toml"), "w") as f:
            f.write(f'description = "{PROFILE} without verification"\nextends = "{PROFILE}"\nverify = "off"\n')
        env = dict(
            os.environ,
            LC_ALL="C",  # EPOCHREALTIME's decimal point follows the locale
            XDG_CACHE_HOME=os.path.join(home, "cache"),
            XDG_CONFIG_HOME=os.path.join(home, "config"),
            TCAP_SITE_DIR=os.path.join(home, "site"),  # no site policy
            TCAP_PROFILE_PATH=profiles,
        )
        for variable in ("PYTHONPATH", "TCAP_DEBUG", "TCAP_NO_CACHE", "OPENBLAS_NUM_THREADS", "TCAP_VERIFY"):
            env.pop(variable, None)
        script = os.path.join(home, "bench.bash")
        with open(script, "w") as f:
            f.write(_script(_aliases(tcap, env), python, rounds))
        done = subprocess.run(["bash", script], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0 or done.stderr:
        raise RuntimeError(f"bash benchmark script failed ({done.returncode}): {done.stderr[-500:]}")
    samples: dict[str, list[float]] = {key: [] for key, _, _ in CASES}
    checked = set()
    for line in done.stdout.splitlines():
        kind, key, *rest = line.split()
        if kind == "C":
            if " ".join(rest) != EXPECTED[key]:
                raise RuntimeError(f"{key}: the child saw {' '.join(rest)!r}, expected {EXPECTED[key]!r}")
            checked.add(key)
        elif kind == "T":
            samples[key].append((_microseconds(rest[1]) - _microseconds(rest[0])) / 1e6)
    if checked != set(samples) or any(len(values) != rounds for values in samples.values()):
        raise RuntimeError(f"bash benchmark script: unexpected output:\n{done.stdout[-500:]}")
    return samples


def run(rounds: int) -> str:
    samples = measure(rounds)
    base = samples["direct"]
    lines = [
        "## Static alias cost",
        "",
        f"Wall time of `python -c pass` started from bash directly and through shell aliases, {rounds} "
        f"interleaved rounds (cases shuffled each round, {WARMUP} warm-up rounds), all in **one** bash "
        "process so that bash's own start-up is not counted: benchmarks/alias.py writes a bash script that "
        "evals the definitions `tcap alias` prints for bash and then runs every case on its own line, "
        "timing it with bash's `$EPOCHREALTIME` (microseconds) just before and after. Every case runs the "
        "venv's interpreter by its full path. The *static* aliases carry the resolved plan as variable "
        "assignments in front of the command, so bash forks and execs `python` as for the direct start; "
        'with `verify = "warn"` (the default) the alias also puts the probe\'s bootstrap on PYTHONPATH, so '
        "the child loads tcap's `sitecustomize` and `probe.py`, which is part of what a user of the alias "
        'gets; with `verify = "off"` (a profile extending `kmeans` with that one key) only the '
        "variables differ from the direct start. The dynamic alias, for context, runs `tcap run -p "
        "kmeans --` (cached plan) in front of the command. The ratio is that of the medians against the "
        f"direct start, with a target of at most {TARGET:.1f} for the static aliases; the difference is the "
        "median of the per-round differences (alias minus direct, measured in the same round), with "
        "their range.",
        "",
        "| case | median ms (min–max) | difference ms (min–max) | ratio | target |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, label, _ in CASES:
        lines.append(ratio_row(label, samples[key], base, 2, TARGET if key in TARGETED else None))
    lines += [
        "",
        "A static alias costs what its variables cost: bash passes them to the child it forks, and no "
        "other process starts in front of the command. A plan that pins CPUs adds one `taskset` exec, "
        "not measured here (`kmeans` does not pin). With verification on, the difference is the probe's "
        "own start-up cost (see *Probe cost*); the dynamic alias adds a whole cached `tcap run` (see "
        "*Launcher overhead*).",
        "",
    ]
    return "\n".join(lines)

"""CPU affinity is part of the plan, so it is verified: a process of the
launch whose threads are allowed outside the planned CPUs (the program, a
library, or a worker re-pinning itself) is warned about, reported, fails
strict, and under enforce is pinned back. A program that stays on its CPUs
is silent."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from conftest import PYTHON, Isolated, in_one_worker

CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
pytestmark = pytest.mark.skipif(len(CPUS) < 2, reason="needs 2 CPUs to pin to fewer")
FIRST = CPUS[0] if CPUS else 0
WIDEN = f"import numpy, os, time; os.sched_setaffinity(0, {set(CPUS)!r}); time.sleep(0.9)\n"
WARNING = re.compile(
    rf"^tcap: warning: pid (\d+) \(.*\): CPU affinity widened to {','.join(map(str, CPUS))}, "
    rf"outside the plan's CPUs {FIRST}", re.M
)


def run(iso: Isolated, code: str, *flags: str) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    (iso.work / "prog.py").write_text(code)
    return iso.run("run", "--cpus", str(FIRST), *flags, "--", PYTHON, "prog.py", timeout=120)


def test_widening_the_affinity_is_warned_about(iso: Isolated):
    result = run(iso, WIDEN)
    assert result.returncode == 0, result.stderr
    assert len(WARNING.findall(result.stderr)) == 1, result.stderr


def test_staying_on_the_planned_cpus_is_silent(iso: Isolated):
    result = run(iso, f"import numpy, os, time; os.sched_setaffinity(0, {{{FIRST}}}); time.sleep(0.9)\n")
    assert result.returncode == 0, result.stderr
    assert "tcap:" not in result.stderr, result.stderr


def test_without_pinning_nothing_is_checked(iso: Isolated):
    (iso.work / "prog.py").write_text(WIDEN)
    result = iso.run("run", "--", PYTHON, "prog.py", timeout=120)
    assert result.returncode == 0 and "tcap:" not in result.stderr, result.stderr


def test_enforce_pins_every_thread_back(iso: Isolated):
    code = WIDEN + "import threading; print(sorted(os.sched_getaffinity(0)))\n"
    result = run(iso, code, "--verify", "enforce")
    assert result.returncode == 0, result.stderr
    assert re.search(rf"tcap: enforced: pid \d+ .*CPU affinity pinned back to {FIRST}$", result.stderr, re.M)
    assert json.loads(result.stdout) == [FIRST]


def test_a_spawn_worker_that_re_pins_itself_is_named(iso: Isolated):
    code = in_one_worker("spawn", f"import numpy\nos.sched_setaffinity(0, {set(CPUS)!r})")
    result = run(iso, code)
    assert result.returncode == 0, result.stderr
    assert [int(p) for p in WARNING.findall(result.stderr)] == [int(result.stdout.strip())]


def test_strict_fails_and_the_report_names_it(iso: Isolated):
    report = iso.work / "report.json"
    result = run(iso, WIDEN, "--verify", "strict", "--report-json", str(report))
    assert result.returncode == 86, result.stderr
    data = json.loads(report.read_text())
    assert any(v["name"] == "affinity" for v in data["violations"]), data["violations"]


def test_auto_placement_is_verified_against_the_booked_cpus(iso: Isolated, tmp_path):
    code = "import numpy, os, time; time.sleep(0.2); os.sched_setaffinity(0, " + repr(set(CPUS)) + "); time.sleep(0.9)"
    (iso.work / "prog.py").write_text(code)
    result = iso.run("run", "--cpus", "auto:1", "--", PYTHON, "prog.py", timeout=120,
                     extra_env={"TCAP_BOOKINGS_DIR": str(tmp_path / "bookings")})
    assert result.returncode == 0, result.stderr
    assert "CPU affinity widened to" in result.stderr, result.stderr

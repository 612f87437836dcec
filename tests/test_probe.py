"""The verification probe, end to end: real programs under the installed ``tcap``.

Each test writes a small program into the isolated work directory and runs
it with ``tcap run -p capped`` (a profile capping BLAS at 1 thread), with
real numpy, joblib and multiprocessing. The probe's timer checks run 0.25,
0.75 and 1.75 s after the first numeric import (or after a fork), so the
programs that break their cap stay alive past the second check.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import PYTHON, Isolated

pytest.importorskip("numpy")
pytest.importorskip("threadpoolctl")

PROFILE = "capped"
BOOTSTRAP = str(Path(__import__("tcap").__file__).resolve().parent / "_bootstrap")
WARNING = re.compile(
    r"^tcap: warning: pid (\d+) \((.*)\): openblas \(blas\) has 8 threads, cap 1 \[profile capped\]$", re.M
)
ENFORCED = re.compile(
    r"^tcap: enforced: pid (\d+) \((.*)\): openblas \(blas\) brought back from 8 to 1 threads$", re.M
)

# Raise OpenBLAS to 8 threads at run time, use it, and stay alive through
# the probe's first checks; then report what threadpoolctl sees.
RAISE = """
import os, time
import numpy as np
import threadpoolctl

def blas_threads():
    return [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["internal_api"] == "openblas"]

def raise_limit(stay=1.2):
    a = np.ones((64, 64))
    a @ a
    threadpoolctl.threadpool_limits(8, user_api="blas")
    a @ a
    time.sleep(stay)
    time.sleep(0.3)  # a pending enforcement runs when the first sleep returns
    return os.getpid(), blas_threads()
"""


def run_program(
    iso: Isolated, source: str, mode: str = "warn", *, name: str = "prog.py", extra_env: dict[str, str] | None = None,
    python_args: tuple[str, ...] = (), text: bool = True, timeout: float = 120,
) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    iso.write_profile(PROFILE, "blas = 1\n")
    (iso.work / name).write_text(source)
    return iso.run(
        "run", "-p", PROFILE, "--verify", mode, "--", PYTHON, *python_args, name,
        extra_env=extra_env, text=text, timeout=timeout,
    )


def marked(stdout: str, tag: str) -> object:
    """The JSON value the program printed on its ``tag`` line."""
    for line in stdout.splitlines():
        if line.startswith(tag + " "):
            return json.loads(line[len(tag) + 1:])
    raise AssertionError(f"no {tag!r} line in {stdout!r}")


def warned_pids(stderr: str) -> list[int]:
    return [int(pid) for pid, _ in WARNING.findall(stderr)]


def enforced_pids(stderr: str) -> list[int]:
    return [int(pid) for pid, _ in ENFORCED.findall(stderr)]


def assert_reported(result: subprocess.CompletedProcess, mode: str, pids: set[int]) -> None:  # type: ignore[type-arg]
    """One warning per process in ``pids`` (and none for any other); under
    enforce, one enforcement each too."""
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    warnings = warned_pids(result.stderr)
    assert sorted(warnings) == sorted(pids), result.stderr
    tcap_lines = [line for line in result.stderr.splitlines() if line.startswith("tcap:")]
    if mode == "enforce":
        assert sorted(enforced_pids(result.stderr)) == sorted(pids), result.stderr
        assert len(tcap_lines) == 2 * len(pids), result.stderr
    else:
        assert enforced_pids(result.stderr) == [], result.stderr
        assert len(tcap_lines) == len(pids), result.stderr


MODES = pytest.mark.parametrize("mode", ["warn", "enforce"])


@MODES
def test_raise_in_main_process(iso: Isolated, mode: str) -> None:
    result = run_program(iso, RAISE + "print('result', __import__('json').dumps(raise_limit()))\n", mode)
    pid, after = marked(result.stdout, "result")  # type: ignore[misc]
    assert_reported(result, mode, {pid})
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("tcap: warning:")]
    assert "(python prog.py)" in line
    assert after == ([1] if mode == "enforce" else [8])


@MODES
def test_raise_in_spawn_pool_worker(iso: Isolated, mode: str) -> None:
    program = RAISE + """
import json, multiprocessing
if __name__ == "__main__":
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        print("result", json.dumps(pool.apply(raise_limit)))
    print("main", json.dumps(os.getpid()))
"""
    result = run_program(iso, program, mode)
    pid, after = marked(result.stdout, "result")  # type: ignore[misc]
    assert pid != marked(result.stdout, "main")
    assert_reported(result, mode, {pid})
    assert after == ([1] if mode == "enforce" else [8])


@MODES
def test_raise_in_fork_pool_worker_terminated_by_with_block(iso: Isolated, mode: str) -> None:
    # The worker lives 2.2 s, then the with-block terminates the pool
    # (SIGTERM: no atexit in the worker), so only the timer can catch it.
    program = RAISE + """
import json, multiprocessing
if __name__ == "__main__":
    np.ones((8, 8)) @ np.ones((8, 8))
    with multiprocessing.get_context("fork").Pool(1) as pool:
        print("result", json.dumps(pool.apply(raise_limit, (1.9,))), flush=True)
    print("main", json.dumps([os.getpid(), blas_threads()]))
"""
    result = run_program(iso, program, mode)
    pid, after = marked(result.stdout, "result")  # type: ignore[misc]
    main_pid, main_after = marked(result.stdout, "main")  # type: ignore[misc]
    assert pid != main_pid
    assert main_after == [1]
    assert_reported(result, mode, {pid})
    assert after == ([1] if mode == "enforce" else [8])


@MODES
def test_raise_in_loky_worker(iso: Isolated, mode: str) -> None:
    pytest.importorskip("joblib")
    program = RAISE + """
import json
from joblib import Parallel, delayed
if __name__ == "__main__":
    results = Parallel(n_jobs=2, backend="loky")(delayed(raise_limit)() for _ in range(2))
    print("result", json.dumps(results))
    print("main", json.dumps(os.getpid()))
"""
    result = run_program(iso, program, mode)
    results = marked(result.stdout, "result")
    workers = {pid for pid, _ in results}  # type: ignore[attr-defined]
    assert marked(result.stdout, "main") not in workers
    assert_reported(result, mode, workers)
    for _pid, after in results:  # type: ignore[attr-defined]
        assert after == ([1] if mode == "enforce" else [8])


@MODES
def test_raise_in_grandchild(iso: Isolated, mode: str) -> None:
    (iso.work / "child.py").write_text(RAISE + "print('result', __import__('json').dumps(raise_limit()), flush=True)\n")
    program = """
import json, os, subprocess, sys
done = subprocess.run([sys.executable, "child.py"])
print("main", json.dumps([os.getpid(), done.returncode, "numpy" in sys.modules]))
"""
    result = run_program(iso, program, mode)
    pid, after = marked(result.stdout, "result")  # type: ignore[misc]
    main_pid, code, numpy_in_main = marked(result.stdout, "main")  # type: ignore[misc]
    assert pid != main_pid and code == 0 and not numpy_in_main
    assert_reported(result, mode, {pid})
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("tcap: warning:")]
    assert "(python child.py)" in line
    assert after == ([1] if mode == "enforce" else [8])


@pytest.mark.parametrize("cap", [1, 2])
def test_raise_just_before_exit_is_caught_by_the_exit_check(iso: Isolated, cap: int) -> None:
    # No timer check can run: the program raises the limit and exits at once.
    # The exit check skips loading threadpoolctl only when there are fewer
    # native threads than the smallest cap; here OpenBLAS's extra one is seen.
    iso.write_profile("short", f"blas = {cap}\n")
    (iso.work / "short.py").write_text(
        "import numpy as np, threadpoolctl\n"
        f"threadpoolctl.threadpool_limits({cap + 1}, user_api='blas')\n"
        "np.ones((64, 64)) @ np.ones((64, 64))\n"
    )
    result = iso.run("run", "-p", "short", "--", PYTHON, "short.py")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(
        rf"tcap: warning: pid \d+ \(python short.py\): openblas \(blas\) has {cap + 1} threads, cap {cap} "
        r"\[profile short\]\n",
        result.stderr,
    ), result.stderr


def test_short_program_within_caps_is_silent(iso: Isolated) -> None:
    # OpenBLAS at its cap of 2 runs one native thread: below the exit check's
    # threshold, and not a violation either way.
    iso.write_profile("two", "blas = 2\n")
    (iso.work / "short.py").write_text(
        "import numpy as np, threadpoolctl\n"
        "np.ones((64, 64)) @ np.ones((64, 64))\n"
        "print([p['num_threads'] for p in threadpoolctl.threadpool_info() if p['user_api'] == 'blas'])\n"
    )
    result = iso.run("run", "-p", "two", "--cpus", "0-1", "--", PYTHON, "short.py")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[2]\n"
    assert result.stderr == ""


@MODES
def test_pools_within_caps_are_silent(iso: Isolated, mode: str) -> None:
    program = """
import json, multiprocessing, os, time
import numpy as np
import threadpoolctl

def work(n):
    a = np.ones((128, 128))
    for _ in range(5):
        a @ a
    time.sleep(0.9)
    return [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]

if __name__ == "__main__":
    print("main", json.dumps(work(0)), flush=True)
    with multiprocessing.get_context("fork").Pool(2) as pool:
        print("fork", json.dumps(pool.map(work, range(2))), flush=True)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        print("spawn", json.dumps(pool.map(work, range(1))), flush=True)
"""
    result = run_program(iso, program, mode)
    assert result.returncode == 0, result.stderr
    assert "tcap:" not in result.stderr, result.stderr
    assert result.stderr == ""
    assert marked(result.stdout, "main") == [1]
    assert marked(result.stdout, "fork") == [[1], [1]]
    assert marked(result.stdout, "spawn") == [[1]]


@MODES
def test_shadowed_sitecustomize_still_runs(iso: Isolated, mode: str) -> None:
    theirs = iso.root / "theirs"
    theirs.mkdir()
    (theirs / "sitecustomize.py").write_text(
        "import os, sys\n"
        "where = ' '.join(os.path.basename(a) for a in sys.orig_argv)\n"
        "sys.stderr.write(f'their sitecustomize ran in {where}\\n')\n"
        "os.environ['THEIR_SITECUSTOMIZE'] = 'yes'\n"
        "THEIR_MARK = 42\n"
    )
    program = RAISE + """
import json, sys
import sitecustomize
print("site", json.dumps([os.environ.get("THEIR_SITECUSTOMIZE"), getattr(sitecustomize, "THEIR_MARK", None),
                          "_tcap_probe" in sys.modules, os.environ["PYTHONPATH"].split(os.pathsep)]), flush=True)
print("result", json.dumps(raise_limit()))
"""
    result = run_program(iso, program, mode, extra_env={"PYTHONPATH": str(theirs)})
    seen, mark, probed, path = marked(result.stdout, "site")  # type: ignore[misc]
    assert (seen, mark, probed) == ("yes", 42, True)
    assert path == [BOOTSTRAP, str(theirs)]
    pid, after = marked(result.stdout, "result")  # type: ignore[misc]
    # once in the program (tcap, a Python program too, runs it before the exec)
    assert result.stderr.count("their sitecustomize ran in python prog.py\n") == 1
    result.stderr = "".join(line for line in result.stderr.splitlines(True) if not line.startswith("their"))
    assert_reported(result, mode, {pid})
    assert after == ([1] if mode == "enforce" else [8])


def test_shadowed_sitecustomize_errors_are_reported_as_without_tcap(iso: Isolated) -> None:
    theirs = iso.root / "theirs"
    theirs.mkdir()
    (theirs / "sitecustomize.py").write_text("raise RuntimeError('their broken sitecustomize')\n")
    outputs = {}
    for mode in ("off", "warn"):
        result = run_program(iso, "print('ran')\n", mode, extra_env={"PYTHONPATH": str(theirs)})
        assert result.returncode == 0 and result.stdout == "ran\n"
        assert "their broken sitecustomize" in result.stderr
        outputs[mode] = result
    assert "_bootstrap" not in outputs["off"].stderr


def test_chatty_program_output_and_exit_code_unchanged(iso: Isolated) -> None:
    program = """
import sys, time
import numpy as np
for i in range(20000):
    print(f"line {i} " + "x" * (i % 70))
sys.stdout.write("no newline at the end \\u00e9")
sys.stdout.flush()
np.ones((32, 32)) @ np.ones((32, 32))
time.sleep(0.3)
sys.exit(3)
"""
    results = {mode: run_program(iso, program, mode, text=False) for mode in ("off", "warn", "enforce")}
    for mode, result in results.items():
        assert result.returncode == 3, (mode, result.stderr)
        assert result.stderr == b"", (mode, result.stderr)
    assert results["warn"].stdout == results["off"].stdout
    assert results["enforce"].stdout == results["off"].stdout
    assert len(results["off"].stdout) > 500_000


def test_isolated_child_runs_without_probe(iso: Isolated) -> None:
    program = """
import json, os, sys
print(json.dumps(["_tcap_probe" in sys.modules, "sitecustomize" in sys.modules, os.environ.get("TCAP_VERIFY")]))
import numpy, threadpoolctl
threadpoolctl.threadpool_limits(8, user_api="blas")
sys.exit(5)
"""
    result = run_program(iso, program, "warn", python_args=("-I",))
    assert result.returncode == 5, result.stderr
    assert json.loads(result.stdout) == [False, False, "warn"]
    assert "tcap:" not in result.stderr


def test_probe_imports_nothing_numeric_at_start(iso: Isolated) -> None:
    program = """
import sys
modules = sorted(sys.modules)
import json
print(json.dumps(modules))
"""
    result = run_program(iso, program, "warn")
    assert result.returncode == 0, result.stderr
    modules = json.loads(result.stdout)
    assert "_tcap_probe" in modules
    for name in ("numpy", "threadpoolctl", "_tcap_threadpoolctl", "ctypes", "threading", "json"):
        assert name not in modules, name


MISSING_TPC = RAISE + """
import json, sys
print("result", json.dumps(raise_limit()))
print("tpc", json.dumps(["_tcap_threadpoolctl" in sys.modules]))
sys.exit(4)
"""


def test_missing_threadpoolctl_copy_falls_back_silently(iso: Isolated) -> None:
    # env(1) between tcap and python overrides the TCAP_THREADPOOLCTL tcap set.
    iso.write_profile(PROFILE, "blas = 1\n")
    (iso.work / "prog.py").write_text(MISSING_TPC)
    missing = str(iso.root / "missing" / "threadpoolctl.py")
    for debug in ("", "1"):
        result = iso.run(
            "run", "-p", PROFILE, "--", "env", f"TCAP_THREADPOOLCTL={missing}", f"TCAP_DEBUG={debug}", PYTHON, "prog.py"
        )
        assert result.returncode == 4, result.stderr
        pid, after = marked(result.stdout, "result")  # type: ignore[misc]
        assert after == [8]
        # The program's own threadpoolctl still lets the probe see the pool.
        assert warned_pids(result.stderr) == [pid], result.stderr
        if debug:
            assert "tcap: probe: loading tcap's threadpoolctl failed" in result.stderr
            assert "missing" in result.stderr
        else:
            assert "Traceback" not in result.stderr
            assert len(result.stderr.splitlines()) == 1, result.stderr


def test_failing_probe_is_silent_and_harmless(iso: Isolated) -> None:
    # No threadpoolctl anywhere: every check fails; the program must not notice.
    program = """
import sys
sys.modules["threadpoolctl"] = None  # make `import threadpoolctl` fail
import time
import numpy as np
for i in range(1000):
    print(i)
np.ones((32, 32)) @ np.ones((32, 32))
time.sleep(0.9)
sys.exit(6)
"""
    iso.write_profile(PROFILE, "blas = 1\n")
    (iso.work / "prog.py").write_text(program)
    results = {}
    for label, args in {
        "off": ("--verify", "off", "--", PYTHON, "prog.py"),
        "quiet": ("--", "env", "TCAP_THREADPOOLCTL=/nonexistent/threadpoolctl.py", PYTHON, "prog.py"),
        "debug": ("--", "env", "TCAP_THREADPOOLCTL=/nonexistent/threadpoolctl.py", "TCAP_DEBUG=1", PYTHON, "prog.py"),
        "no probe file": ("--", "env", "TCAP_PROBE=/nonexistent/probe.py", "TCAP_DEBUG=", PYTHON, "prog.py"),
    }.items():
        results[label] = iso.run("run", "-p", PROFILE, *args)
    for label, result in results.items():
        assert result.returncode == 6, (label, result.stderr)
        assert result.stdout == results["off"].stdout, label
    for label in ("off", "quiet", "no probe file"):
        assert results[label].stderr == "", (label, results[label].stderr)
    assert "tcap: probe: check failed in pid" in results["debug"].stderr
    assert "tcap: warning" not in results["debug"].stderr


def test_verify_off_injects_nothing(iso: Isolated) -> None:
    program = """
import json, os, sys
print(json.dumps([os.environ.get("PYTHONPATH"), sorted(k for k in os.environ if k.startswith("TCAP_")),
                  "_tcap_probe" in sys.modules]))
"""
    theirs = str(iso.root / "theirs")
    for inherited in (None, theirs):
        extra = {} if inherited is None else {"PYTHONPATH": inherited}
        result = run_program(iso, program, "off", extra_env=extra)
        assert result.returncode == 0, result.stderr
        pythonpath, names, probed = json.loads(result.stdout)
        assert pythonpath == inherited
        assert names == [] or all(name not in ("TCAP_PROBE", "TCAP_VERIFY", "TCAP_CAPS") for name in names)
        assert not probed
    # and with warn, the bootstrap directory comes first
    result = run_program(iso, program, "warn", extra_env={"PYTHONPATH": theirs})
    pythonpath, names, probed = json.loads(result.stdout)
    assert pythonpath.split(os.pathsep) == [BOOTSTRAP, theirs]
    assert {"TCAP_PROBE", "TCAP_VERIFY", "TCAP_CAPS", "TCAP_PROFILE"} <= set(names)
    assert probed

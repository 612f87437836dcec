"""End to end: the installed ``tcap`` launching real numpy/scipy/scikit-learn.

Every test runs real subprocesses in an isolated environment (see
conftest.py) and checks what the launched program itself observes: its
environment, its CPU affinity, its pid and the thread pools threadpoolctl
finds in the loaded OpenBLAS and libgomp.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import PYTHON, Isolated
from tcap.variables import VARIABLES, by_name

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs Linux CPU affinity")

AFFINITY = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
#: A CPU this process may not use (5 on small machines, as a user would type).
OUTSIDE = max(5, max(AFFINITY, default=0) + 1)

# What the launched program reports about itself, as one JSON line.
PROBE = r"""
import json, os, sys
import numpy, scipy.linalg, sklearn.cluster, threadpoolctl
names = json.loads(sys.argv[1])
print(json.dumps({
    "pools": [
        {"internal_api": p["internal_api"], "num_threads": p["num_threads"], "filepath": p["filepath"]}
        for p in threadpoolctl.threadpool_info()
    ],
    "affinity": sorted(os.sched_getaffinity(0)),
    "pid": os.getpid(),
    "env": {name: os.environ.get(name) for name in names},
}))
"""

PROBE_NAMES = [v.name for v in VARIABLES] + ["TCAP_E2E_MARK"]


def probe(iso: Isolated, *tcap_args: str, extra_env: dict[str, str] | None = None) -> dict:
    """``tcap run TCAP_ARGS -- python PROBE`` and what the child reported."""
    result = iso.run("run", *tcap_args, "--", PYTHON, "-c", PROBE, json.dumps(PROBE_NAMES), extra_env=extra_env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def pools(report: dict, api: str) -> list[int]:
    found = [p["num_threads"] for p in report["pools"] if p["internal_api"] == api]
    assert found, f"no {api} pool loaded: {report['pools']}"
    return found


def expected_pool(variable_name: str, cap: int, cpus_in_affinity: int) -> int:
    """What a pool sized by ``variable_name`` = ``cap`` reports, per the table."""
    clamps = by_name(variable_name).clamps_to_affinity
    assert clamps is not None, f"the table does not say whether {variable_name} clamps"
    return min(cap, cpus_in_affinity) if clamps else cap


# --- the plan reaches the program ---------------------------------------------------


def test_kmeans_workers_caps_openblas_and_libgomp_at_one(iso: Isolated) -> None:
    args = ("-p", "kmeans", "--workers", "2")
    planned = iso.show_json(*args)
    report = probe(iso, *args)
    env = {name: value for name, value, _ in planned["env"]}

    # Every planned variable arrived as planned (ARROW_IO_THREADS is set only when its own key is).
    for variable in VARIABLES:
        assert report["env"][variable.name] == env.get(variable.name), variable.name

    # The real pools follow the plan...
    cpus = len(report["affinity"])
    assert all(n == expected_pool("OPENBLAS_NUM_THREADS", int(env["OPENBLAS_NUM_THREADS"]), cpus)
               for n in pools(report, "openblas"))
    assert pools(report, "openmp") == [expected_pool("OMP_NUM_THREADS", int(env["OMP_NUM_THREADS"]), cpus)]
    # ... and the plan is what the kmeans profile promises on 2 CPUs with 2 workers.
    assert planned["caps"]["blas"] == 1
    assert planned["caps"]["openmp"] == max(1, len(AFFINITY) // 2)
    assert pools(report, "openblas") == [1] * len(pools(report, "openblas"))
    if len(AFFINITY) == 2:
        assert pools(report, "openmp") == [1]
    assert report["env"]["LOKY_MAX_CPU_COUNT"] == "2"
    # --workers does not pin.
    assert report["affinity"] == AFFINITY


def test_kmeans_actually_runs_under_the_caps(iso: Isolated) -> None:
    script = (
        "import numpy as np, threadpoolctl\n"
        "from sklearn.cluster import KMeans\n"
        "X = np.random.default_rng(0).normal(size=(500, 4))\n"
        "km = KMeans(n_clusters=3, n_init=2, random_state=0).fit(X)\n"
        "info = threadpoolctl.threadpool_info()\n"
        "print(len(set(km.labels_)), sorted({(p['internal_api'], p['num_threads']) for p in info}))\n"
    )
    result = iso.run("run", "-p", "kmeans", "--workers", "2", "--", PYTHON, "-c", script)
    assert result.returncode == 0, result.stderr
    clusters, _, rest = result.stdout.strip().partition(" ")
    assert clusters == "3"
    assert "('openblas', 1)" in rest and "('openmp', 1)" in rest


def test_exec_keeps_the_pid(iso: Isolated) -> None:
    process = iso.popen(
        "run", "--", PYTHON, "-c", "import os; print(os.getpid())",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert int(out) == process.pid


@pytest.mark.skipif(len(AFFINITY) < 2, reason="needs at least 2 CPUs")
@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (lambda cpus: str(cpus[1]), lambda cpus: [cpus[1]]),
        (lambda cpus: "first:1", lambda cpus: [cpus[0]]),
        (lambda cpus: f"{cpus[0]},{cpus[1]}", lambda cpus: cpus[:2]),
        (lambda cpus: "all", lambda cpus: cpus),
    ],
    ids=["list-second", "first-1", "list-two", "all"],
)
def test_cpus_pins_the_child(iso: Isolated, spec, expected) -> None:
    report = probe(iso, "--cpus", spec(AFFINITY))
    want = expected(AFFINITY)
    assert report["affinity"] == want
    # The default profile caps every pool at the CPUs in the set; libgomp and
    # OpenBLAS count the pinned CPUs themselves, so tcap leaves them alone.
    cpus = len(want)
    assert report["env"]["OMP_NUM_THREADS"] is None
    assert report["env"]["OPENBLAS_NUM_THREADS"] is None
    assert pools(report, "openmp") == [cpus]
    assert set(pools(report, "openblas")) == {cpus}


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_pool_sizes_follow_each_librarys_clamping(iso: Isolated, threads: int) -> None:
    """OpenBLAS never exceeds the CPUs in its mask; libgomp starts what it is told."""
    report = probe(iso, "--threads", str(threads))
    cpus = len(report["affinity"])
    assert report["env"]["OMP_NUM_THREADS"] == str(threads)
    assert report["env"]["OPENBLAS_NUM_THREADS"] == str(threads)
    assert pools(report, "openmp") == [expected_pool("OMP_NUM_THREADS", threads, cpus)]
    assert set(pools(report, "openblas")) == {expected_pool("OPENBLAS_NUM_THREADS", threads, cpus)}
    if threads == 4 and cpus == 2:
        assert pools(report, "openmp") == [4]
        assert set(pools(report, "openblas")) == {2}


def test_pinning_and_threads_together(iso: Isolated) -> None:
    report = probe(iso, "--cpus", "first:1", "--threads", "3")
    assert report["affinity"] == AFFINITY[:1]
    assert pools(report, "openmp") == [expected_pool("OMP_NUM_THREADS", 3, 1)]
    assert set(pools(report, "openblas")) == {expected_pool("OPENBLAS_NUM_THREADS", 3, 1)}


def test_unset_openblas_variables_fall_back_to_omp(iso: Isolated) -> None:
    path = iso.write_profile(
        "fallback",
        "openmp = 1\nblas = 2\n[env]\nOPENBLAS_NUM_THREADS = false\nGOTO_NUM_THREADS = false\n",
    )
    planned = iso.planned_env("-p", str(path))
    assert planned["OPENBLAS_NUM_THREADS"] is None and planned["GOTO_NUM_THREADS"] is None
    # Even inherited values are removed.
    report = probe(iso, "-p", "fallback", extra_env={"OPENBLAS_NUM_THREADS": "2", "GOTO_NUM_THREADS": "2"})
    assert report["env"]["OPENBLAS_NUM_THREADS"] is None
    assert report["env"]["GOTO_NUM_THREADS"] is None
    assert report["env"]["OMP_NUM_THREADS"] == "1"
    assert report["env"]["MKL_NUM_THREADS"] == "2"  # blas = 2 still reaches the other BLAS variables
    assert by_name("OPENBLAS_NUM_THREADS").fallbacks[-1] == "OMP_NUM_THREADS"
    assert set(pools(report, "openblas")) == {1}
    assert pools(report, "openmp") == [1]


def test_set_adds_variables_and_overrides_the_table(iso: Isolated) -> None:
    report = probe(iso, "--set", "TCAP_E2E_MARK=a b=c", "--set", "OMP_NUM_THREADS=1", "--threads", "2")
    assert report["env"]["TCAP_E2E_MARK"] == "a b=c"
    assert report["env"]["OMP_NUM_THREADS"] == "1"
    assert report["env"]["OPENBLAS_NUM_THREADS"] == "2"
    assert pools(report, "openmp") == [1]


# --- process behaviour: exec, exit codes, output, signals ----------------------------


@pytest.mark.parametrize("code", [0, 1, 7, 125, 126, 127, 255])
def test_exit_code_passes_through(iso: Isolated, code: int) -> None:
    result = iso.run("run", "--", "sh", "-c", f"exit {code}")
    assert result.returncode == code
    assert result.stderr == ""


def test_child_killed_by_signal_is_seen_as_killed(iso: Isolated) -> None:
    result = iso.run("run", "--", "sh", "-c", "kill -TERM $$")
    assert result.returncode == -signal.SIGTERM


def test_output_passes_through_byte_for_byte(iso: Isolated) -> None:
    out = b"line one\n\x00\xff\xfe binary \r\n" + bytes(range(256)) + b"no newline"
    err = b"to stderr \xc3\xa9\n\x1b[31mred\x1b[0m"
    script = (
        "import sys\n"
        f"sys.stdout.buffer.write({out!r}); sys.stdout.flush()\n"
        f"sys.stderr.buffer.write({err!r}); sys.stderr.flush()\n"
        "sys.stdout.buffer.write(sys.stdin.buffer.read())\n"
    )
    result = iso.run("run", "--", PYTHON, "-c", script, text=False, input=b"stdin \x00 data")
    assert result.returncode == 0
    assert result.stdout == out + b"stdin \x00 data"
    assert result.stderr == err


def test_arguments_pass_through_verbatim(iso: Isolated) -> None:
    args = ["--threads", "2", "-p", "", "a b", "$(touch pwned)", "'\"", "--", "-"]
    result = iso.run("run", "--", PYTHON, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))", *args)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == args
    assert not (iso.work / "pwned").exists()


def test_command_found_on_path_without_double_dash(iso: Isolated) -> None:
    result = iso.run("run", "--threads", "1", "sh", "-c", 'printf %s "$OMP_NUM_THREADS"')
    assert (result.returncode, result.stdout) == (0, "1")


def test_sigint_reaches_the_program_as_keyboardinterrupt(iso: Isolated) -> None:
    script = (
        "import sys, time\n"
        "try:\n"  # ready is printed inside the try: a SIGINT right after it is caught
        "    print('ready', flush=True)\n"
        "    while True: time.sleep(0.05)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True); sys.exit(3)\n"
    )
    # Default SIGINT handling in the child even if this test run ignores SIGINT.
    process = iso.popen(
        "run", "-p", "serial", "--", PYTHON, "-c", script,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert process.stdout.readline() == "ready\n"
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "KeyboardInterrupt" not in err
    assert out == "interrupted\n"
    assert process.returncode == 3


def test_sigterm_to_the_launched_pid_kills_the_program(iso: Isolated) -> None:
    process = iso.popen(
        "run", "--", PYTHON, "-c", "import time; print('ready', flush=True); time.sleep(60)",
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout.readline() == "ready\n"
        started = time.monotonic()
        process.terminate()
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGTERM
    assert time.monotonic() - started < 10


# --- joblib / loky and the serial profile --------------------------------------------


def test_workers_sets_loky_cpu_count_for_joblib(iso: Isolated) -> None:
    script = "import os, joblib; print(os.environ['LOKY_MAX_CPU_COUNT'], joblib.cpu_count())"
    result = iso.run("run", "--workers", "2", "--", PYTHON, "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "2"]


def test_workers_one_makes_joblib_see_one_cpu(iso: Isolated) -> None:
    script = "import joblib; print(joblib.cpu_count())"
    result = iso.run("run", "--workers", "1", "--", PYTHON, "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"


def test_loky_is_not_a_profile_key(iso: Isolated) -> None:
    # LOKY_MAX_CPU_COUNT follows `workers`; a `loky` key would be silently
    # ignored, so it must be rejected, and the command must not run.
    path = iso.write_profile("loky1", "workers = 2\nloky = 1\n")
    marker = iso.work / "MARKER"
    line = iso.error_line(iso.run("run", "-p", "loky1", "--", "touch", str(marker)), 2)
    assert f"{path}:2:" in line and "unknown key 'loky'" in line
    assert not marker.exists()


def test_serial_sets_every_table_variable_to_one(iso: Isolated) -> None:
    report = probe(iso, "-p", "serial")
    loky = by_name("LOKY_MAX_CPU_COUNT")
    for variable in VARIABLES:
        if variable is loky or not variable.by_threads:
            # loky's variable counts worker processes, not threads: serial
            # leaves workers unset, and loky counts the usable CPUs itself;
            # Arrow's I/O threads wait rather than compute: only their own key sizes them.
            assert report["env"][variable.name] is None
        else:
            assert report["env"][variable.name] == "1", variable.name
    assert pools(report, "openmp") == [1]
    assert set(pools(report, "openblas")) == {1}


def test_serial_with_workers_one_sets_every_variable_to_one(iso: Isolated) -> None:
    report = probe(iso, "-p", "serial", "--workers", "1")
    for variable in VARIABLES:
        assert report["env"][variable.name] == ("1" if variable.by_threads else None), variable.name


# --- inherited values -----------------------------------------------------------------


def test_inherited_omp_num_threads_is_replaced(iso: Isolated) -> None:
    inherited = {"OMP_NUM_THREADS": "8"}
    report = probe(iso, "-p", "serial", extra_env=inherited)
    assert report["env"]["OMP_NUM_THREADS"] == "1"
    assert pools(report, "openmp") == [1]

    dry = iso.run("run", "--dry-run", "-p", "serial", "--", "true", extra_env=inherited)
    assert dry.returncode == 0, dry.stderr
    assert "replaces inherited OMP_NUM_THREADS=8" in dry.stdout
    assert "would exec:" in dry.stdout

    shown = iso.run("show", "-p", "serial", extra_env=inherited)
    assert "replaces inherited OMP_NUM_THREADS=8" in shown.stdout
    data = iso.show_json("-p", "serial", extra_env=inherited)
    assert {"name": "OMP_NUM_THREADS", "inherited": "8", "value": "1"} in data["inherited_overrides"]


def test_dry_run_executes_nothing(iso: Isolated) -> None:
    marker = iso.work / "MARKER"
    result = iso.run("run", "--dry-run", "--", "touch", str(marker))
    assert result.returncode == 0, result.stderr
    assert not marker.exists()
    assert result.stdout.rstrip().endswith(f"touch {marker}")
    assert "OMP_NUM_THREADS" in result.stdout


# --- every error: one line, right exit code, and the command never ran ----------------


def _write(iso: Isolated, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = iso.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


USER = "config/tcap/profiles"

# (id, files relative to iso.root, tcap args before the command, substrings the message must contain)
ERROR_CASES = [
    ("bad-toml", {"bad.toml": 'description = "x"\nblas = \n'}, ["-p", "{root}/bad.toml"],
     ["{root}/bad.toml:2:", "invalid TOML"]),
    ("bad-toml-by-name", {f"{USER}/broken.toml": 'threads = 1\n[env\n'}, ["-p", "broken"],
     ["broken.toml:2:", "invalid TOML"]),
    ("unknown-key", {"typo.toml": "# comment\ntreads = 2\n"}, ["-p", "{root}/typo.toml"],
     ["{root}/typo.toml:2:", "unknown key 'treads'", "did you mean 'threads'"]),
    ("bad-value-zero", {"zero.toml": "blas = 0\n"}, ["-p", "{root}/zero.toml"],
     ["{root}/zero.toml:1:", "blas", ">= 1"]),
    ("bad-value-expr", {"expr.toml": '\n\nopenmp = "cores / 2"\n'}, ["-p", "{root}/expr.toml"],
     ["{root}/expr.toml:3:", "unknown name 'cores'"]),
    ("bad-value-verify", {"v.toml": 'verify = "maybe"\n'}, ["-p", "{root}/v.toml"],
     ["{root}/v.toml:1:", "verify"]),
    ("bad-value-env-true", {"e.toml": "[env]\nFOO = true\n"}, ["-p", "{root}/e.toml"],
     ["{root}/e.toml:2:", "env.FOO"]),
    ("bad-value-cpus", {"c.toml": 'cpus = "0-x"\n'}, ["-p", "{root}/c.toml"],
     ["{root}/c.toml:1:", "cpus"]),
    ("extends-cycle", {f"{USER}/a.toml": 'extends = "b"\n', f"{USER}/b.toml": 'extends = "a"\n'}, ["-p", "a"],
     ["extends cycle: a -> b -> a", "b.toml:1:"]),
    ("extends-missing", {f"{USER}/child.toml": 'description = "c"\nextends = "nosuch"\n'}, ["-p", "child"],
     ["child.toml:2:", "no profile named 'nosuch'"]),
    ("missing-profile", {}, ["-p", "nosuch"], ["no profile named 'nosuch'"]),
    ("missing-profile-file", {}, ["-p", "{root}/none.toml"], ["profile file not found", "{root}/none.toml"]),
    ("cpus-flag-outside", {}, ["--cpus", f"0-{max(63, OUTSIDE)}"], ["outside the usable set"]),
    ("cpus-flag-first-too-many", {}, ["--cpus", f"first:{len(AFFINITY) + 1}"], [f"first:{len(AFFINITY) + 1}"]),
    ("cpus-profile-outside", {"five.toml": f'description = "d"\ncpus = "{OUTSIDE}"\n'}, ["-p", "{root}/five.toml"],
     ["{root}/five.toml:2:", f"CPU {OUTSIDE} outside the usable set"]),
    ("cpus-flag-garbage", {}, ["--cpus", "lots"], ["--cpus"]),
    ("threads-zero", {}, ["--threads", "0"], ["--threads", ">= 1"]),
    ("threads-abc", {}, ["--threads", "abc"], ["--threads", "unknown name 'abc'"]),
    ("workers-empty", {}, ["--workers="], ["--workers"]),
    ("blas-expr", {}, ["--blas", "cpus/"], ["--blas"]),
    ("verify-bad", {}, ["--verify", "sometimes"], ["--verify"]),
    ("set-bad", {}, ["--set", "1X=2"], ["--set"]),
    ("set-no-eq", {}, ["--set", "X"], ["--set"]),
    ("unknown-option", {}, ["--thread", "2"], ["unknown option --thread", "did you mean '--threads'"]),
    ("flag-takes-no-value", {}, ["--dry-run=yes"], ["--dry-run takes no value"]),
]


@pytest.mark.parametrize(
    ("files", "args", "needles"),
    [pytest.param(files, args, needles, id=case_id) for case_id, files, args, needles in ERROR_CASES],
)
@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_errors_are_one_line_exit_2_and_nothing_runs(iso: Isolated, files, args, needles, dry_run: bool) -> None:
    _write(iso, files)
    root = str(iso.root)
    marker = iso.work / "MARKER"
    args = [a.replace("{root}", root) for a in args]
    extra = ["--dry-run"] if dry_run else []
    result = iso.run("run", *extra, *args, "--", "touch", str(marker))
    line = iso.error_line(result, 2)
    for needle in needles:
        assert needle.replace("{root}", root) in line, line
    assert not marker.exists()
    assert result.stdout == ""


def test_unknown_option_value_still_does_not_run(iso: Isolated) -> None:
    # `--bogus` before the command: an error, not the start of the command.
    marker = iso.work / "MARKER"
    result = iso.run("run", "--bogus", "touch", str(marker))
    assert "unknown option --bogus" in iso.error_line(result, 2)
    assert not marker.exists()


@pytest.mark.parametrize("args", [[], ["--"], ["--threads", "2"], ["--threads", "2", "--"], ["--dry-run"]])
def test_missing_command(iso: Isolated, args: list[str]) -> None:
    result = iso.run("run", *args)
    assert "missing the command" in iso.error_line(result, 2)


def test_flag_missing_its_value(iso: Isolated) -> None:
    result = iso.run("run", "--threads")
    assert "--threads needs a value" in iso.error_line(result, 2)


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
@pytest.mark.parametrize("command", ["tcap-no-such-command-xyz", "./no-such-file", "/nonexistent/dir/cmd"])
def test_command_not_found_is_127(iso: Isolated, command: str, dry_run: bool) -> None:
    extra = ["--dry-run"] if dry_run else []
    result = iso.run("run", *extra, "--", command, "arg")
    line = iso.error_line(result, 127)
    assert "command not found" in line and command in line


def test_command_not_found_with_empty_path(iso: Isolated) -> None:
    result = iso.run("run", "--", "sh", "-c", "true", extra_env={"PATH": "/nonexistent"})
    assert "not on PATH" in iso.error_line(result, 127)


def _not_executable(iso: Isolated) -> Path:
    path = iso.work / "script.sh"
    path.write_text(f"#!/bin/sh\ntouch {iso.work / 'MARKER'}\n")
    path.chmod(0o644)
    return path


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_file_without_x_bit_is_126(iso: Isolated, dry_run: bool) -> None:
    path = _not_executable(iso)
    extra = ["--dry-run"] if dry_run else []
    result = iso.run("run", *extra, "--", str(path))
    assert "permission denied" in iso.error_line(result, 126)
    assert not (iso.work / "MARKER").exists()


def test_file_without_x_bit_on_path_is_126(iso: Isolated) -> None:
    _not_executable(iso)
    env_path = f"{iso.work}:{iso.env.get('PATH', '')}"
    result = iso.run("run", "--", "script.sh", extra_env={"PATH": env_path})
    iso.error_line(result, 126)
    assert not (iso.work / "MARKER").exists()


def test_non_executable_earlier_on_path_loses_to_an_executable_later(iso: Isolated) -> None:
    first, second = iso.work / "first", iso.work / "second"
    first.mkdir()
    second.mkdir()
    (first / "tool").write_text("#!/bin/sh\necho wrong\n")
    (first / "tool").chmod(0o644)
    (second / "tool").write_text("#!/bin/sh\necho right\n")
    (second / "tool").chmod(0o755)
    result = iso.run("run", "--", "tool", extra_env={"PATH": f"{first}:{second}:/usr/bin:/bin"})
    assert (result.returncode, result.stdout) == (0, "right\n")


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_directory_is_126(iso: Isolated, dry_run: bool) -> None:
    directory = iso.work / "adir"
    directory.mkdir()
    extra = ["--dry-run"] if dry_run else []
    result = iso.run("run", *extra, "--", str(directory))
    iso.error_line(result, 126)


def test_file_without_shebang_is_126(iso: Isolated) -> None:
    path = iso.work / "garbage"
    path.write_bytes(b"\x00\x01\x02 not a program\n")
    path.chmod(0o755)
    result = iso.run("run", "--", str(path))
    assert "exec format error" in iso.error_line(result, 126)


# --- the plan cache -------------------------------------------------------------------


def _cache_file(iso: Isolated) -> Path:
    """The plan cache's directory (one file per entry in it)."""
    files = list(iso.cache_dir.glob("plans-*"))
    assert len(files) == 1, files
    return files[0]


def test_cache_second_run_is_a_hit_with_the_same_env(iso: Isolated) -> None:
    # The very first launch of an interpreter records its libraries' build
    # facts (a dependency of the plan): the launch after it resolves again.
    probe(iso, "-p", "kmeans", "--workers", "2")
    first = probe(iso, "-p", "kmeans", "--workers", "2")
    cache = _cache_file(iso)
    before = cache.stat()
    second = probe(iso, "-p", "kmeans", "--workers", "2")
    after = cache.stat()
    assert second["env"] == first["env"]
    assert sorted(map(str, second["pools"])) == sorted(map(str, first["pools"]))
    # A hit writes nothing into the cache.
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    # Different flags are a different entry with different values.
    third = probe(iso, "-p", "kmeans", "--workers", "1")
    assert third["env"]["LOKY_MAX_CPU_COUNT"] == "1"
    assert third["env"]["OMP_NUM_THREADS"] is None  # all the CPUs: libgomp's own choice


def test_cache_invalidated_when_the_profile_changes(iso: Isolated) -> None:
    iso.write_profile("mine", 'blas = 1\n[env]\nTCAP_E2E_MARK = "one"\n')
    first = probe(iso, "-p", "mine")
    assert (first["env"]["OPENBLAS_NUM_THREADS"], first["env"]["TCAP_E2E_MARK"]) == ("1", "one")
    # Same size, same inode: only the mtime changes.
    with open(iso.user_profiles / "mine.toml", "r+") as f:
        f.write('blas = 2\n[env]\nTCAP_E2E_MARK = "two"\n')
    second = probe(iso, "-p", "mine")
    assert (second["env"]["OPENBLAS_NUM_THREADS"], second["env"]["TCAP_E2E_MARK"]) == ("2", "two")


def test_cache_invalidated_when_a_parent_profile_changes(iso: Isolated) -> None:
    iso.write_profile("parent", "openmp = 1\n")
    iso.write_profile("child", 'extends = "parent"\n')
    assert probe(iso, "-p", "child")["env"]["OMP_NUM_THREADS"] == "1"
    iso.write_profile("parent", "openmp = 2\n")
    assert probe(iso, "-p", "child")["env"]["OMP_NUM_THREADS"] == "2"


def test_cache_invalidated_by_a_path_profile_edit(iso: Isolated) -> None:
    path = iso.root / "p.toml"
    path.write_text("threads = 1\n")
    assert probe(iso, "-p", str(path))["env"]["OMP_NUM_THREADS"] == "1"
    path.write_text("threads = 2\n# longer\n")
    assert probe(iso, "-p", str(path))["env"]["OMP_NUM_THREADS"] == "2"


def test_user_profile_shadowing_a_builtin_takes_over(iso: Isolated) -> None:
    builtin = probe(iso, "-p", "serial")
    assert builtin["env"]["OMP_NUM_THREADS"] == "1"
    assert builtin["env"]["TCAP_E2E_MARK"] is None
    iso.write_profile("serial", 'threads = 2\n[env]\nTCAP_E2E_MARK = "user"\n')
    user = probe(iso, "-p", "serial")
    assert user["env"]["OMP_NUM_THREADS"] == "2"
    assert user["env"]["TCAP_E2E_MARK"] == "user"
    # Removing it brings the built-in back.
    (iso.user_profiles / "serial.toml").unlink()
    again = probe(iso, "-p", "serial")
    assert again["env"]["OMP_NUM_THREADS"] == "1"
    assert again["env"]["TCAP_E2E_MARK"] is None


def test_site_profile_shadows_builtin_and_user_shadows_site(iso: Isolated) -> None:
    probe(iso, "-p", "pool")  # fill the cache
    site = iso.site / "profiles"
    site.mkdir()
    iso.write_profile("pool", '[env]\nTCAP_E2E_MARK = "site"\n', directory=site)
    assert probe(iso, "-p", "pool")["env"]["TCAP_E2E_MARK"] == "site"
    iso.write_profile("pool", '[env]\nTCAP_E2E_MARK = "user"\n')
    assert probe(iso, "-p", "pool")["env"]["TCAP_E2E_MARK"] == "user"


def test_profile_extending_its_own_name_gets_the_builtin(iso: Isolated) -> None:
    iso.write_profile("kmeans", 'extends = "kmeans"\n[env]\nTCAP_E2E_MARK = "wrapped"\n')
    report = probe(iso, "-p", "kmeans", "--workers", "2")
    assert report["env"]["TCAP_E2E_MARK"] == "wrapped"
    assert report["env"]["OPENBLAS_NUM_THREADS"] == "1"  # from the built-in kmeans


def test_no_cache_env_disables_the_cache(iso: Isolated) -> None:
    probe(iso, extra_env={"TCAP_NO_CACHE": "1"})
    assert not iso.cache_dir.exists() or not list(iso.cache_dir.glob("plans-*"))


def test_corrupt_cache_is_a_miss(iso: Isolated) -> None:
    first = probe(iso, "--threads", "1")
    entries = list(_cache_file(iso).iterdir())
    assert entries
    for entry in entries:
        entry.write_bytes(b"\x00garbage")
    second = probe(iso, "--threads", "1")
    assert second["env"] == first["env"]


def test_cache_in_unwritable_place_still_runs(iso: Isolated) -> None:
    blocker = iso.root / "blocker"
    blocker.write_text("a file where the cache directory should be")
    report = probe(iso, "--threads", "1", extra_env={"XDG_CACHE_HOME": str(blocker)})
    assert report["env"]["OMP_NUM_THREADS"] == "1"


def test_errors_are_not_cached(iso: Isolated) -> None:
    path = iso.write_profile("flaky", "threads = 0\n")
    iso.error_line(iso.run("run", "-p", "flaky", "--", "true"), 2)
    path.write_text("threads = 1\n")
    assert probe(iso, "-p", "flaky")["env"]["OMP_NUM_THREADS"] == "1"


def test_sys_executable_is_what_we_think(tcap_exe: Path) -> None:
    assert tcap_exe.parent == Path(sys.executable).parent

"""Many-core machines as data (tests/machines), `tcap show` and `tcap doctor`
on them against readable golden files (tests/golden), and the recording of
native library build limits by doctor and by the probe.

The machines are fake (a /proc and /sys tree under TCAP_SYSROOT); tcap, the
interpreter doctor inspects and its numpy/scipy/scikit-learn are real.
Regenerate the golden files with TCAP_UPDATE_GOLDEN=1 after a deliberate
change, and read the diff.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from conftest import PYTHON, Isolated
from machines import NAMES, build
from tcap.search import builtin_dir

GOLDEN = Path(__file__).parent / "golden"
PROFILES = ("default", "kmeans", "physical")
HAZARDS = {"workstation-128": 1, "server-2s64": 0, "container-64q4": 1}


def normalise(text: str) -> str:
    """The parts of the output that depend on this checkout and its wheels."""
    text = text.replace(str(Path(builtin_dir())), "<profiles>")
    text = re.sub(r"python (\S+) \(\d+\.\d+\.\d+\)", "python <python> (<version>)", text)
    text = text.replace(PYTHON, "<python>")
    text = re.sub(r"\S*/site-packages/\S+", "<library file>", text)
    text = re.sub(r"(OpenBLAS|MKL|BLIS) \d+(\.\d+)*", r"\1 <version>", text)
    text = re.sub(r"facts recorded   \S+", "facts recorded   <cache>/libraries/<interpreter>.json", text)
    return text


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / f"{name}.txt"
    text = normalise(text)
    if os.environ.get("TCAP_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"no golden file {path}: run with TCAP_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{path} differs (TCAP_UPDATE_GOLDEN=1 to accept the change)"


@pytest.fixture
def machine_env(iso: Isolated, tmp_path: Path):
    def make(name: str) -> dict[str, str]:
        return {"TCAP_SYSROOT": str(build(name, tmp_path / name))}

    return make


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("machine", NAMES)
def test_show_on_machines_before_any_library_is_known(iso: Isolated, machine_env, machine: str, profile: str):
    result = iso.run("show", "-p", profile, "--python", PYTHON, extra_env=machine_env(machine))
    assert result.returncode == 0, result.stderr
    check_golden(f"show-{machine}-{profile}", result.stdout)


@pytest.mark.parametrize("machine", NAMES)
def test_doctor_on_machines_then_show_kmeans(iso: Isolated, machine_env, machine: str):
    env = machine_env(machine)
    result = iso.run("doctor", "--python", PYTHON, extra_env=env)
    # The workstation has more CPUs than numpy's OpenBLAS is built for, the
    # container a quota the libraries miscount; the server is fine as it is.
    assert result.returncode == HAZARDS[machine], (result.stdout, result.stderr)
    assert result.stderr == ""
    check_golden(f"doctor-{machine}", result.stdout)
    # doctor recorded numpy's OpenBLAS: the next plan respects its limit.
    shown = iso.run("show", "-p", "kmeans", "--python", PYTHON, extra_env=env)
    check_golden(f"show-{machine}-kmeans-known", shown.stdout)


def test_kmeans_on_128_cpus_with_numpy_openblas_known(iso: Isolated, machine_env):
    env = machine_env("workstation-128")
    before = iso.show_json("-p", "kmeans", "--python", PYTHON, extra_env=env)
    assert before["caps"]["openmp"] == 128
    assert iso.run("doctor", "--python", PYTHON, extra_env=env).returncode == 1
    after = iso.show_json("-p", "kmeans", "--python", PYTHON, extra_env=env)
    env_rows = {name: (value, why) for name, value, why in after["env"]}
    assert env_rows["OMP_NUM_THREADS"][0] == "64"
    assert re.search(r"numpy's OpenBLAS [\d.]+ is built for at most 64 threads", env_rows["OMP_NUM_THREADS"][1])
    assert after["caps"]["openmp"] == 64
    assert env_rows["OPENBLAS_NUM_THREADS"][0] == "1"
    text = iso.run("doctor", "-p", "kmeans", "--python", PYTHON, extra_env=env).stdout
    assert "are built for at most 64 threads, but 128 CPUs" in text
    assert f"fix: tcap run -p kmeans -- {PYTHON} fit.py" in text


def test_doctor_here_lists_numpy_and_scipy_openblas_with_their_limits(iso: Isolated):
    result = iso.run("doctor", "--json", "--python", PYTHON)
    assert result.returncode in (0, 1), result.stderr
    report = json.loads(result.stdout)
    owners = {lib["owner"]: lib for lib in report["libraries"] if lib["internal_api"] == "openblas"}
    assert {"numpy", "scipy"} <= set(owners)
    for lib in owners.values():
        assert lib["max_threads"] == 64  # their wheels' config string says MAX_THREADS=64
        assert "MAX_THREADS=64" in lib["config"]
    assert any(lib["internal_api"] == "openmp" for lib in report["libraries"])  # scikit-learn's libgomp
    assert report["machine"]["usable"] == len(os.sched_getaffinity(0))
    # With fewer CPUs than 64 here, no hazard: exit 0 and an empty list.
    if len(os.sched_getaffinity(0)) < 64 and not report["hazards"]:
        assert result.returncode == 0
    # doctor never loads the libraries in tcap's own process.
    assert report["python"]["imported"][:2] == ["numpy", "scipy"]
    assert Path(report["python"]["recorded_in"]).is_file()


def test_doctor_names_an_inherited_variable_over_the_cpus(iso: Isolated):
    result = iso.run("doctor", "--python", PYTHON, extra_env={"OMP_NUM_THREADS": "512"})
    assert result.returncode == 1
    assert "OMP_NUM_THREADS=512 in this environment" in result.stdout
    assert f"fix: tcap run -- {PYTHON} fit.py" in result.stdout


def test_doctor_usage_errors_exit_2_and_start_nothing(iso: Isolated):
    line = iso.error_line(iso.run("doctor", "--python", str(iso.work / "nope")), 2)
    assert "cannot run" in line
    not_python = iso.work / "notpython"
    not_python.write_text("#!/bin/sh\necho hello\n")
    not_python.chmod(0o755)
    line = iso.error_line(iso.run("doctor", "--python", str(not_python)), 2)
    assert "could not list its native libraries" in line
    iso.error_line(iso.run("doctor", "stray"), 2)
    iso.error_line(iso.run("doctor", "-p", "no-such-profile"), 2)


def test_the_probe_records_libraries_and_the_next_launch_reads_them(iso: Isolated):
    store = iso.cache / "tcap" / "libraries"
    program = "import numpy, time; time.sleep(0.6)"
    result = iso.run("run", "--", PYTHON, "-c", program)
    assert result.returncode == 0, result.stderr
    [recorded] = list(store.glob("*.json"))
    data = json.loads(recorded.read_text())
    assert data["executable"] == PYTHON
    [numpy_blas] = [lib for lib in data["libraries"] if lib["owner"] == "numpy"]
    assert numpy_blas["max_threads"] == 64 and numpy_blas["internal_api"] == "openblas"
    # A second launch finds nothing new: the file is not rewritten.
    mtime = recorded.stat().st_mtime_ns
    assert iso.run("run", "--", PYTHON, "-c", program).returncode == 0
    assert recorded.stat().st_mtime_ns == mtime
    # A replaced library file (another size or mtime) is not trusted.
    numpy_blas["size"] += 1
    recorded.write_text(json.dumps(data))
    shown = iso.run("show", "--json", "--python", PYTHON)
    assert shown.returncode == 0


def test_a_known_limit_lowers_the_cap_at_launch_and_the_probe_warns_when_unknown(iso: Isolated):
    """On this 2-CPU machine, ask for more OpenMP threads than a (doctored)
    recorded limit: the launch caps OMP_NUM_THREADS at it."""
    assert iso.run("doctor", "--python", PYTHON).returncode in (0, 1)
    [recorded] = list((iso.cache / "tcap" / "libraries").glob("*.json"))
    data = json.loads(recorded.read_text())
    shown = iso.show_json("--openmp", "100", "--python", PYTHON)
    assert {n: v for n, v, _ in shown["env"]}["OMP_NUM_THREADS"] == "64"
    assert any("lowered to 64" in note for note in shown["notes"])
    # The plan cache depends on the store: a run picks the limit up too.
    out = iso.run("run", "--openmp", "100", "--", PYTHON, "-c", "import os; print(os.environ['OMP_NUM_THREADS'])")
    assert out.stdout.strip() == "64", out.stderr
    # Without the record, the first run's probe says so as soon as it sees numpy's OpenBLAS.
    recorded.unlink()
    probe = iso.run("run", "--openmp", "100", "--", PYTHON, "-c", "import numpy, time; time.sleep(0.6)")
    assert probe.returncode == 0
    assert re.search(r"tcap: warning: pid \d+ .*numpy's OpenBLAS [\d.]+ is built for at most 64 threads, "
                     r"but the openmp cap is 100", probe.stderr), probe.stderr
    assert json.loads(recorded.read_text())["libraries"]
    del data


def test_interpreter_of_a_command(tmp_path: Path):
    from tcap.libraries import interpreter_of

    env = {"PATH": str(Path(PYTHON).parent)}
    assert interpreter_of(["python", "x.py"], env) == str(Path(PYTHON).parent / "python")
    assert interpreter_of([PYTHON, "-c", "pass"], env) == PYTHON
    script = tmp_path / "tool"
    script.write_text(f"#!{PYTHON}\nprint(1)\n")
    script.chmod(0o755)
    assert interpreter_of([str(script)], env) == PYTHON
    env_script = tmp_path / "tool2"
    env_script.write_text("#!/usr/bin/env python\nprint(1)\n")
    env_script.chmod(0o755)
    assert interpreter_of([str(env_script)], env) == str(Path(PYTHON).parent / "python")
    assert interpreter_of(["sh", "-c", "true"], {"PATH": "/bin:/usr/bin"}) is None
    assert interpreter_of(["no-such-command"], env) is None


"""The commands besides ``run`` (show, env, profiles, help, version), as subprocesses.

Each test runs the installed ``tcap`` console script in an isolated
environment (see conftest.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import tcap
from conftest import PYTHON, TCAP, Isolated
from tcap.search import builtin_dir
from tcap.variables import CAP_KEYS, VARIABLES

AFFINITY = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
BUILTINS = sorted(p.stem for p in Path(builtin_dir()).glob("*.toml"))


def line_of(path: str | Path, key: str) -> int:
    """The 1-based line where ``key =`` is assigned in ``path``."""
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if re.match(rf"^\s*{re.escape(key)}\s*=", line):
            return number
    raise AssertionError(f"{key} not in {path}")


# --- show --------------------------------------------------------------------------


def test_builtin_profiles_are_the_expected_ones() -> None:
    assert BUILTINS == ["default", "kmeans", "physical", "pool", "serial"]


@pytest.mark.parametrize("profile", BUILTINS)
def test_show_json_lists_every_variable_with_value_and_why(iso: Isolated, profile: str) -> None:
    data = iso.show_json("-p", profile)
    assert data["profile"] == profile
    assert Path(data["profile_path"]) == Path(builtin_dir()) / f"{profile}.toml"
    names = [name for name, _, _ in data["env"]]
    order = [v.name for v in VARIABLES]
    assert names == [n for n in order if n in names]
    # Every variable is either set or left alone, with a reason either way.
    assert sorted(names + [name for name, _, _ in data["left_alone"]]) == sorted(order)
    for name, value, why in data["env"] + data["left_alone"]:
        assert isinstance(value, str) and value.isdigit() and int(value) >= 1, (name, value)
        assert isinstance(why, str) and why, name
    assert all(why.startswith("left alone") for _, _, why in data["left_alone"])
    # Every key has a cap but one that only an explicit setting sizes (arrow_io).
    assert set(CAP_KEYS) - {v.library for v in VARIABLES if not v.by_threads} <= set(data["caps"])
    assert data["verify"] in ("off", "warn", "strict", "enforce")
    assert data["inherited_overrides"] == []
    if AFFINITY:
        assert data["cpu_set"] is not None
        assert set(data["cpu_set"]) <= set(AFFINITY)


def test_show_json_values_for_known_profiles(iso: Isolated) -> None:
    cpus = len(AFFINITY)
    # Unconstrained here: the default sets nothing, the libraries pick the CPUs.
    assert iso.planned_env() == {}
    default = iso.takes()
    assert default["OMP_NUM_THREADS"] == str(cpus)
    assert default["OPENBLAS_NUM_THREADS"] == str(cpus)
    assert default["LOKY_MAX_CPU_COUNT"] == str(cpus)
    serial = iso.planned_env("-p", "serial")
    assert all(serial[v.name] == "1" for v in VARIABLES if v.basis == "threads" and v.by_threads)
    kmeans = iso.show_json("-p", "kmeans", "--workers", "2")
    assert kmeans["workers"] == 2
    assert kmeans["caps"]["blas"] == 1
    assert kmeans["caps"]["openmp"] == max(1, cpus // 2)
    lone = iso.show_json("-p", "kmeans")
    assert lone["workers"] is None and lone["caps"]["openmp"] == cpus and lone["caps"]["blas"] == 1
    pool = iso.show_json("-p", "pool")
    assert pool["workers"] == cpus
    assert pool["caps"]["openmp"] == 1 and pool["caps"]["blas"] == 1


def test_show_json_flags(iso: Isolated) -> None:
    data = iso.show_json("--threads", "3", "--cpus", "first:1", "--verify", "off", "--set", "FOO=bar baz")
    env = {name: (value, why) for name, value, why in data["env"]}
    assert env["OMP_NUM_THREADS"] == ("3", "flag --threads 3")
    assert env["FOO"] == ("bar baz", "flag --set FOO=bar baz")
    assert data["verify"] == "off"
    assert data["cpus"] == 1
    if AFFINITY:
        assert data["cpu_set"] == AFFINITY[:1]
        assert data["pin"] == (None if len(AFFINITY) == 1 else AFFINITY[:1])


def test_show_json_expression_flag(iso: Isolated) -> None:
    data = iso.show_json("--threads", "max(1, cpus - 1)", "--blas", "cpus*2")
    env = {name: value for name, value, _ in data["env"]}
    cpus = len(AFFINITY)
    assert env["OMP_NUM_THREADS"] == str(max(1, cpus - 1))
    assert env["OPENBLAS_NUM_THREADS"] == str(cpus * 2)


def test_show_text_names_file_and_line_of_profile_values(iso: Isolated) -> None:
    kmeans = Path(builtin_dir()) / "kmeans.toml"
    pool = Path(builtin_dir()) / "pool.toml"
    result = iso.run("show", "-p", "kmeans")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.split()}
    assert f"{kmeans}:{line_of(kmeans, 'blas')} blas = 1" in rows["OPENBLAS_NUM_THREADS"]
    assert rows["OMP_NUM_THREADS"].split()[1] == "-" and "left alone: OpenMP takes" in rows["OMP_NUM_THREADS"]
    assert f"profile   kmeans  ({kmeans})" in result.stdout
    result = iso.run("show", "-p", "pool")
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.split()}
    assert f"{pool}:{line_of(pool, 'workers')} workers" in rows["LOKY_MAX_CPU_COUNT"]


def test_show_text_user_profile_lines(iso: Isolated) -> None:
    path = iso.write_profile("mine", '# a comment\ndescription = "mine"\n\nopenmp = 2\n[env]\nFOO = "x"\n')
    result = iso.run("show", "-p", "mine")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.split()}
    assert f"{path}:4 openmp = 2" in rows["OMP_NUM_THREADS"]
    assert f"{path}:6 env.FOO = 'x'" in rows["FOO"]
    assert rows["OMP_NUM_THREADS"].split()[1] == "2"


def test_show_text_names_flags(iso: Isolated) -> None:
    result = iso.run("show", "-p", "kmeans", "--threads", "1")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.split()}
    assert rows["OMP_NUM_THREADS"].split()[1] == "1"
    assert "flag --threads 1" in rows["OMP_NUM_THREADS"]
    assert "flag --threads 1" in rows["OPENBLAS_NUM_THREADS"]
    # The flag replaces the profile's narrower blas = 1, and says so.
    kmeans = Path(builtin_dir()) / "kmeans.toml"
    assert f"note: flag --threads 1 replaces {kmeans}:{line_of(kmeans, 'blas')} blas = 1" in result.stdout


def test_show_mentions_unset_variables(iso: Isolated) -> None:
    path = iso.write_profile("unset", "[env]\nOPENBLAS_NUM_THREADS = false\n")
    result = iso.run("show", "-p", "unset")
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.split()}
    assert rows["OPENBLAS_NUM_THREADS"].split()[1] == "(unset)"
    assert f"{path}:2" in rows["OPENBLAS_NUM_THREADS"]
    env = iso.planned_env("-p", "unset")
    assert env["OPENBLAS_NUM_THREADS"] is None


def test_show_rejects_a_command(iso: Isolated) -> None:
    result = iso.run("show", "python")
    assert "unexpected argument 'python'" in iso.error_line(result, 2)


def test_show_errors_are_one_line(iso: Isolated) -> None:
    iso.write_profile("bad", "threads = 1\nthreads = 2\n")
    line = iso.error_line(iso.run("show", "-p", "bad"), 2)
    assert "bad.toml:2:" in line


def test_show_to_a_full_disk_fails_cleanly(iso: Isolated) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    with open("/dev/full", "w") as full:
        result = subprocess.run([str(TCAP), "show"], env=iso.env, stdout=full, stderr=subprocess.PIPE, text=True)
    assert result.returncode == 74  # an I/O error, named
    assert result.stderr.startswith("tcap: error:") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


# --- profiles ------------------------------------------------------------------------


def test_profiles_json_lists_builtins(iso: Isolated) -> None:
    result = iso.run("profiles", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    listed = {p["name"]: p for p in data["profiles"]}
    assert sorted(listed) == BUILTINS
    for name, item in listed.items():
        assert item["source"] == "built-in"
        assert item["shadowed_by"] is None
        assert item["error"] is None
        assert item["description"]
        assert Path(item["path"]) == Path(builtin_dir()) / f"{name}.toml"
    assert [d["source"] for d in data["search_path"]] == ["user", "site", "built-in"]
    assert data["search_path"][0]["path"] == str(iso.config / "tcap" / "profiles")
    assert data["search_path"][1]["path"] == str(iso.site / "profiles")


def test_profiles_json_marks_shadowed_builtin(iso: Isolated) -> None:
    user = iso.write_profile("serial", 'description = "my serial"\nthreads = 2\n')
    data = json.loads(iso.run("profiles", "--json").stdout)
    serials = [p for p in data["profiles"] if p["name"] == "serial"]
    assert [p["source"] for p in serials] == ["user", "built-in"]
    assert serials[0]["shadowed_by"] is None
    assert serials[0]["description"] == "my serial"
    assert serials[1]["shadowed_by"] == str(user)
    others = [p for p in data["profiles"] if p["name"] != "serial"]
    assert all(p["shadowed_by"] is None for p in others)
    text = iso.run("profiles").stdout
    assert f"[shadowed by {user}]" in text


def test_profiles_shows_broken_profile_with_its_error(iso: Isolated) -> None:
    iso.write_profile("broken", 'description = "b"\nblas = "lots of"\n')
    iso.write_profile("badtoml", "x = [\n")
    iso.write_profile("typo", "treads = 1\n")
    for args in (["profiles", "--json"], ["profiles"]):
        result = iso.run(*args)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
    data = json.loads(iso.run("profiles", "--json").stdout)
    listed = {p["name"]: p for p in data["profiles"]}
    assert "broken.toml:2:" in listed["broken"]["error"]
    assert "badtoml.toml:" in listed["badtoml"]["error"] and "invalid TOML" in listed["badtoml"]["error"]
    assert "did you mean 'threads'" in listed["typo"]["error"]
    assert all(listed[name]["error"] is None for name in BUILTINS)
    text = iso.run("profiles").stdout
    assert re.search(r"^broken\s+user\s+BROKEN: .*broken\.toml:2:", text, re.M)


def test_profiles_unreadable_file_is_listed_not_fatal(iso: Isolated) -> None:
    path = iso.write_profile("secret", "threads = 1\n")
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root: chmod 0 does not stop reading")
        result = iso.run("profiles", "--json")
        assert result.returncode == 0, result.stderr
        listed = {p["name"]: p for p in json.loads(result.stdout)["profiles"]}
        assert "cannot read profile" in listed["secret"]["error"]
    finally:
        path.chmod(0o644)


def test_profiles_includes_tcap_profile_path(iso: Isolated) -> None:
    extra = iso.root / "extra"
    extra.mkdir()
    (extra / "default.toml").write_text('description = "from path"\nthreads = 1\n')
    result = iso.run("profiles", "--json", extra_env={"TCAP_PROFILE_PATH": str(extra)})
    data = json.loads(result.stdout)
    defaults = [p for p in data["profiles"] if p["name"] == "default"]
    assert [p["source"] for p in defaults] == ["TCAP_PROFILE_PATH", "built-in"]
    assert defaults[1]["shadowed_by"] == str(extra / "default.toml")
    # and the default profile is now that one
    assert iso.planned_env(extra_env={"TCAP_PROFILE_PATH": str(extra)})["OMP_NUM_THREADS"] == "1"


def test_profiles_takes_no_plan_options(iso: Isolated) -> None:
    assert "unknown option --threads" in iso.error_line(iso.run("profiles", "--threads", "2"), 2)


# --- env ------------------------------------------------------------------------------

HOSTILE = {
    "T_QUOTE": "it's \"quoted\" ''",
    "T_SUBST": "$(touch {marker}_subst)",
    "T_BACKTICK": "`touch {marker}_tick`",
    "T_SEMI": "a; touch {marker}_semi; b",
    "T_BACKSLASH": "back\\slash \\' \\\\ \\n end\\",
    "T_SPACES": "  two  spaces\tand tab  ",
    "T_NEWLINE": "line one\nline two\n",
    "T_DOLLAR": "$HOME ${HOME} $0 $$ !! !event %s %n",
    "T_GLOB": "* ? [a-z] ~ ~root",
    "T_FISH": "(touch {marker}_fish) {a,b} $status \\\\' ",
    "T_UNICODE": "caf\u00e9 \u2603 \u00a0",
    "T_EMPTY": "",
    "T_LEADING_DASH": "-e -n --",
}


def hostile_profile(iso: Isolated) -> tuple[Path, dict[str, str], Path]:
    marker = iso.work / "PWNED"
    values = {name: value.replace("{marker}", str(marker)) for name, value in HOSTILE.items()}
    lines = ["threads = 1", "[env]"]
    # A JSON string is a valid TOML basic string.
    lines += [f"{name} = {json.dumps(value)}" for name, value in values.items()]
    lines += ["T_NUMBER = 3", "T_FLOAT = 1.5", "T_UNSET = false"]
    path = iso.write_profile("hostile", "\n".join(lines) + "\n")
    values.update(T_NUMBER="3", T_FLOAT="1.5")
    return path, values, marker


def shell_values(shell: str, iso: Isolated, names: list[str], *tcap_args: str) -> list[str]:
    """Evaluate ``tcap env`` in a real ``shell`` and read ``names`` back, NUL-separated."""
    if shell == "fish":
        reads = "; ".join(f"printf '%s\\0' \"${name}\"" for name in names)
        script = f'"$TCAP_EXE" env --shell fish {" ".join(tcap_args)} | source; {reads}'
    else:
        refs = " ".join(f'"${{{name}-(unset)}}"' for name in names)
        script = f'eval "$("$TCAP_EXE" env --shell {shell} {" ".join(tcap_args)})"; printf \'%s\\0\' {refs}'
    env = dict(iso.env, TCAP_EXE=str(TCAP), T_UNSET="inherited")
    result = subprocess.run(
        [shutil.which(shell) or shell, "-c", script], env=env, cwd=iso.work, capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b"", result.stderr.decode()
    out = result.stdout.decode("utf-8")
    assert out.endswith("\0")
    return out[:-1].split("\0")


SHELLS = [
    pytest.param(shell, marks=pytest.mark.skipif(shutil.which(shell) is None, reason=f"{shell} not installed"))
    for shell in ("sh", "bash", "zsh", "fish")
]


@pytest.mark.parametrize("shell", SHELLS)
def test_env_values_arrive_byte_for_byte_and_nothing_runs(iso: Isolated, shell: str) -> None:
    path, values, marker = hostile_profile(iso)
    names = [*values, "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"]
    got = shell_values(shell, iso, names, "-p", str(path))
    assert dict(zip(names, got)) == {**values, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    assert list(iso.work.glob("PWNED*")) == []
    assert not marker.exists()


@pytest.mark.parametrize("shell", [p for p in SHELLS if p.values[0] != "fish"])
def test_env_unsets_false_variables(iso: Isolated, shell: str) -> None:
    path, _, _ = hostile_profile(iso)
    assert shell_values(shell, iso, ["T_UNSET"], "-p", str(path)) == ["(unset)"]


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish not installed")
def test_env_fish_unsets_false_variables(iso: Isolated) -> None:
    path, _, _ = hostile_profile(iso)
    script = f'"$TCAP_EXE" env --shell fish -p {path} | source; set -q T_UNSET; and echo set; or echo unset'
    env = dict(iso.env, TCAP_EXE=str(TCAP), T_UNSET="inherited")
    result = subprocess.run(["fish", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert result.stdout == "unset\n", result.stderr


@pytest.mark.parametrize("shell", [p for p in SHELLS if p.values[0] != "fish"])
def test_env_values_follow_the_plan(iso: Isolated, shell: str) -> None:
    planned = iso.planned_env("-p", "kmeans", "--workers", "2")
    names = [v.name for v in VARIABLES if v.by_threads]  # ARROW_IO_THREADS: only arrow_io sets it
    got = shell_values(shell, iso, names, "-p", "kmeans", "--workers", "2")
    assert dict(zip(names, got)) == {name: planned[name] for name in names}


def test_env_set_flag_with_hostile_value(iso: Isolated) -> None:
    marker = iso.work / "PWNED_flag"
    value = f"'; touch {marker}; echo '"
    result = iso.run("env", "--shell", "sh", "--set", f"T_FLAG={value}")
    assert result.returncode == 0, result.stderr
    check = subprocess.run(
        ["sh", "-c", 'eval "$1"; printf %s "$T_FLAG"', "sh", result.stdout], capture_output=True, text=True
    )
    assert check.stdout == value
    assert not marker.exists()


def test_env_pinning_plan_is_a_comment(iso: Isolated) -> None:
    if len(AFFINITY) < 2:
        pytest.skip("needs 2 CPUs to pin to fewer")
    result = iso.run("env", "--shell", "sh", "--cpus", "first:1")
    assert result.returncode == 0, result.stderr
    comments = [line for line in result.stdout.splitlines() if line.startswith("#")]
    assert any(f"taskset -c {AFFINITY[0]}" in line for line in comments)
    # The plan left OpenMP to count the pinned CPU, but a shell cannot pin:
    # what the library would take under the pinning is exported instead.
    assert "export OMP_NUM_THREADS='1'" in result.stdout


def test_env_of_the_default_here_sets_nothing(iso: Isolated) -> None:
    result = iso.run("env", "--shell", "sh")
    assert result.returncode == 0, result.stderr
    assert "export" not in result.stdout
    assert "left to the libraries" in result.stdout


def test_env_shell_from_shell_variable(iso: Isolated) -> None:
    fish = iso.run("env", "-p", "serial", extra_env={"SHELL": "/usr/bin/fish"})
    assert "set -gx OMP_NUM_THREADS" in fish.stdout
    bash = iso.run("env", "-p", "serial", extra_env={"SHELL": "/bin/bash"})
    assert "export OMP_NUM_THREADS=" in bash.stdout
    unknown = iso.run("env", "-p", "serial", extra_env={"SHELL": "/usr/bin/nu"})
    assert unknown.returncode == 0 and "export OMP_NUM_THREADS=" in unknown.stdout


def test_env_rejects_unknown_shell(iso: Isolated) -> None:
    assert "--shell must be one of" in iso.error_line(iso.run("env", "--shell", "tcsh"), 2)


def test_env_rejects_missing_profile(iso: Isolated) -> None:
    assert "no profile named 'nope'" in iso.error_line(iso.run("env", "-p", "nope"), 2)


# --- help, version, dispatch ------------------------------------------------------------


@pytest.mark.parametrize(("args", "first"), [
    (["--help"], "usage: tcap COMMAND"), (["-h"], "usage: tcap COMMAND"), (["help"], "usage: tcap COMMAND"),
    (["run", "--help"], "usage: tcap run "), (["show", "-h"], "usage: tcap show "),
    (["env", "--help"], "usage: tcap env "), (["help", "doctor"], "usage: tcap doctor "),
])
def test_help(iso: Isolated, args: list[str], first: str) -> None:
    result = iso.run(*args)
    assert result.returncode == 0
    assert result.stdout.startswith(first)
    assert "plan options" in result.stdout
    assert result.stderr == ""


def test_version(iso: Isolated) -> None:
    result = iso.run("--version")
    assert (result.returncode, result.stdout, result.stderr) == (0, f"tcap {tcap.__version__}\n", "")


def test_unknown_command(iso: Isolated) -> None:
    line = iso.error_line(iso.run("shwo"), 2)
    assert "unknown command 'shwo'" in line and "did you mean 'show'" in line


def test_no_command(iso: Isolated) -> None:
    assert "missing command" in iso.error_line(iso.run(), 2)


def test_python_dash_m_tcap(iso: Isolated) -> None:
    via_module = subprocess.run(
        [PYTHON, "-m", "tcap", "show", "-p", "serial"], env=iso.env, capture_output=True, text=True, timeout=60
    )
    via_script = iso.run("show", "-p", "serial")
    assert via_module.returncode == 0, via_module.stderr
    assert via_module.stdout == via_script.stdout
    assert "OMP_NUM_THREADS" in via_module.stdout
    bad = subprocess.run([PYTHON, "-m", "tcap", "bogus"], env=iso.env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("tcap: error:")


def test_profile_glued_to_short_option(iso: Isolated) -> None:
    assert iso.show_json("-pserial")["profile"] == "serial"
    assert iso.show_json("--profile=serial")["profile"] == "serial"


def test_invalid_profile_name(iso: Isolated) -> None:
    assert "invalid profile name" in iso.error_line(iso.run("show", "-p", "-x"), 2)

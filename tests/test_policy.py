"""The site policy (``$TCAP_SITE_DIR/policy.toml``), end to end.

Every test runs the installed ``tcap`` in an isolated environment (see
conftest.py) with a policy file written into that environment's site
directory, and checks what ``tcap show`` says and what a launched program
really gets: its environment and its CPU affinity. CPU bookings (the
policy's ``max_cpus`` books CPUs like ``cpus = "auto:N"``) go to a private
directory of the test.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from conftest import PYTHON, Isolated
from tcap.cache import cache_file
from tcap.variables import VARIABLES

AFFINITY = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
pytestmark = pytest.mark.skipif(len(AFFINITY) < 2, reason="needs Linux CPU affinity and at least 2 usable CPUs")
FIRST, SECOND = (AFFINITY + [0, 0])[:2]

#: Variables sized by a thread cap (the policy's max_threads applies to them).
THREAD_VARS = [v.name for v in VARIABLES if v.basis == "threads" and v.by_threads]
WORKER_VARS = [v.name for v in VARIABLES if v.basis == "workers"]

# What the launched program reports about itself, as one JSON line.
REPORT = (
    "import json, os, sys\n"
    "stat = open('/proc/self/stat', 'rb').read().rpartition(b')')[2].split()\n"
    "print(json.dumps({'pid': os.getpid(), 'start': int(stat[19]), 'cpus': sorted(os.sched_getaffinity(0)),\n"
    "    'env': {name: os.environ.get(name) for name in sys.argv[1:]},\n"
    "    'bookings': sorted(n for n in os.listdir(os.environ['TCAP_BOOKINGS_DIR']) if not n.startswith('.'))\n"
    "        if os.path.isdir(os.environ['TCAP_BOOKINGS_DIR']) else None}))\n"
)


@pytest.fixture(autouse=True)
def private_bookings(iso: Isolated) -> Path:
    """Every launch books CPUs in a directory of this test only."""
    path = iso.root / "bookings"
    iso.env["TCAP_BOOKINGS_DIR"] = str(path)
    return path


def write_policy(iso: Isolated, text: str) -> Path:
    path = iso.site / "policy.toml"
    path.write_text(text)
    return path


def report(iso: Isolated, *tcap_args: str, names: list[str] | None = None) -> dict:
    """``tcap run TCAP_ARGS -- python REPORT`` and what the child said."""
    result = iso.run("run", *tcap_args, "--", PYTHON, "-c", REPORT, *(names or []))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def show_rows(text: str) -> dict[str, tuple[str, str]]:
    """The VARIABLE table of ``tcap show``: name -> (value, why)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("VARIABLE"))
    rows = {}
    for line in lines[start + 1 :]:
        if line.startswith("note: ") or not line.strip():
            break
        name, value, why = re.match(r"^(\S+)\s+(\S+)\s+(.*)$", line).groups()  # type: ignore[union-attr]
        rows[name] = (value, why)
    return rows


def show_notes(text: str) -> list[str]:
    return [line[len("note: "):] for line in text.splitlines() if line.startswith("note: ")]


# --- max_threads ------------------------------------------------------------------


def test_max_threads_caps_a_flag_and_says_so(iso: Isolated) -> None:
    policy = write_policy(iso, "# the site's ceiling\nmax_threads = 8\n")
    capped_by = f"capped to 8 by policy {policy}:2 max_threads = 8"

    data = iso.show_json("--threads", "64")
    env = {name: (value, why) for name, value, why in data["env"]}
    for name in THREAD_VARS:
        assert env[name] == ("8", f"flag --threads 64; {capped_by}"), name
    for name in WORKER_VARS:  # process counts are not thread caps: loky counts the CPUs itself
        assert name not in env, name
    assert set(data["caps"].values()) == {8}
    assert all(capped_by in data["why"][key] for key in data["caps"])
    assert [n for n in data["notes"] if "max_threads" in n] == [
        f"policy {policy}:2 max_threads = 8 capped: " + ", ".join(data["caps"])
    ]

    text = iso.run("show", "--threads", "64")
    assert text.returncode == 0, text.stderr
    rows = show_rows(text.stdout)
    for name in THREAD_VARS:
        assert rows[name] == ("8", f"flag --threads 64; {capped_by}"), name
    assert any(n.startswith(f"policy {policy}:2 max_threads = 8 capped: threads, blas, openmp")
               for n in show_notes(text.stdout))

    child = report(iso, "--threads", "64", names=THREAD_VARS)
    assert child["env"] == {name: "8" for name in THREAD_VARS}


def test_max_threads_leaves_values_within_the_ceiling_alone(iso: Isolated) -> None:
    write_policy(iso, "max_threads = 8\n")
    for flag in ("4", "8"):
        data = iso.show_json("--threads", flag)
        assert set(data["caps"].values()) == {int(flag)}
        assert all("policy" not in why for _name, _value, why in data["env"]), data["env"]
        assert not any("max_threads" in note for note in data["notes"])
    # The default profile's caps (the usable CPUs) are below the ceiling too.
    default = iso.show_json()
    assert set(default["caps"].values()) == {min(len(AFFINITY), 8)}
    child = report(iso, "--threads", "3", names=["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"])
    assert child["env"] == {"OMP_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": "3"}


def test_max_threads_caps_profile_keys_and_env_values(iso: Isolated) -> None:
    policy = write_policy(iso, "max_threads = 8\n")
    profile = iso.write_profile(
        "big",
        "blas = 4\n"                         # 1: within the ceiling
        "openmp = 16\n"                      # 2: over it
        "numba = 8\n"                        # 3: at it
        "rayon = 'cpus * 40'\n"              # 4: an expression over it
        "[env]\n"                            # 5
        "OPENBLAS_NUM_THREADS = \"32\"\n"    # 6: a thread variable over it
        "BLOSC_NTHREADS = \"5\"\n"           # 7: one within it
        "MY_APP_THREADS = \"64\"\n",         # 8: not a variable tcap knows
    )
    capped_by = f"capped to 8 by policy {policy}:1 max_threads = 8"
    data = iso.show_json("-p", "big")
    env = {name: (value, why) for name, value, why in data["env"]}

    assert env["OMP_NUM_THREADS"] == ("8", f"{profile}:2 openmp = 16; {capped_by}")
    assert env["OPENBLAS_NUM_THREADS"] == ("8", f"{profile}:6 env.OPENBLAS_NUM_THREADS = '32'; {capped_by}")
    assert env["RAYON_NUM_THREADS"][0] == "8" and env["RAYON_NUM_THREADS"][1].endswith(capped_by)
    assert env["MKL_NUM_THREADS"] == ("4", f"{profile}:1 blas = 4")
    assert env["GOTO_NUM_THREADS"] == ("4", f"{profile}:1 blas = 4")
    assert env["NUMBA_NUM_THREADS"] == ("8", f"{profile}:3 numba = 8")
    assert env["BLOSC_NTHREADS"] == ("5", f"{profile}:7 env.BLOSC_NTHREADS = '5'")
    assert env["MY_APP_THREADS"] == ("64", f"{profile}:8 env.MY_APP_THREADS = '64'")
    assert data["caps"]["openmp"] == 8 and data["caps"]["blas"] == 4 and data["caps"]["numba"] == 8
    assert data["caps"]["rayon"] == 8
    [note] = [n for n in data["notes"] if "max_threads" in n]
    capped = note.split(" capped: ")[1].split(", ")
    assert {"openmp", "rayon", "OPENBLAS_NUM_THREADS"} <= set(capped)
    assert not {"blas", "numba", "mkl", "BLOSC_NTHREADS", "MY_APP_THREADS"} & set(capped)

    rows = show_rows(iso.run("show", "-p", "big").stdout)
    assert rows["OPENBLAS_NUM_THREADS"] == ("8", env["OPENBLAS_NUM_THREADS"][1])
    assert rows["MKL_NUM_THREADS"] == ("4", f"{profile}:1 blas = 4")

    names = ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
             "RAYON_NUM_THREADS", "BLOSC_NTHREADS", "MY_APP_THREADS"]
    child = report(iso, "-p", "big", names=names)
    assert child["env"] == dict(zip(names, ["8", "8", "4", "8", "8", "5", "64"]))


def test_max_threads_caps_set_values_of_thread_variables_only(iso: Isolated) -> None:
    policy = write_policy(iso, "max_threads = 8\n")
    args = ("--set", "OMP_NUM_THREADS=64", "--set", "MKL_NUM_THREADS=3", "--set", "MY_APP_THREADS=64",
            "--set", "LOKY_MAX_CPU_COUNT=64")
    data = iso.show_json(*args)
    env = {name: (value, why) for name, value, why in data["env"]}
    assert env["OMP_NUM_THREADS"] == (
        "8", f"flag --set OMP_NUM_THREADS=64; capped to 8 by policy {policy}:1 max_threads = 8"
    )
    assert env["MKL_NUM_THREADS"] == ("3", "flag --set MKL_NUM_THREADS=3")
    assert env["MY_APP_THREADS"] == ("64", "flag --set MY_APP_THREADS=64")
    # A process count, not a thread cap: max_cpus is the ceiling for those.
    assert env["LOKY_MAX_CPU_COUNT"] == ("64", "flag --set LOKY_MAX_CPU_COUNT=64")
    assert data["notes"] == [f"policy {policy}:1 max_threads = 8 capped: OMP_NUM_THREADS"]

    text = iso.run("show", *args).stdout
    assert show_rows(text)["OMP_NUM_THREADS"] == env["OMP_NUM_THREADS"]
    assert show_notes(text) == data["notes"]

    names = ["OMP_NUM_THREADS", "MKL_NUM_THREADS", "MY_APP_THREADS", "OPENBLAS_NUM_THREADS"]
    child = report(iso, *args, names=names)
    # OpenBLAS is left alone: it follows OMP_NUM_THREADS=8, held to its CPUs.
    assert child["env"] == {"OMP_NUM_THREADS": "8", "MKL_NUM_THREADS": "3", "MY_APP_THREADS": "64",
                            "OPENBLAS_NUM_THREADS": None}


def test_max_threads_reaches_tcap_env(iso: Isolated) -> None:
    write_policy(iso, "max_threads = 2\n")
    result = iso.run("env", "--shell", "sh", "--threads", "64", "--set", "NUMBA_NUM_THREADS=99")
    assert result.returncode == 0, result.stderr
    assert "export OMP_NUM_THREADS='2'\n" in result.stdout
    assert "export NUMBA_NUM_THREADS='2'\n" in result.stdout
    assert "64" not in result.stdout and "99" not in result.stdout


def test_max_threads_cannot_be_escaped_by_unsetting_a_variable(iso: Isolated) -> None:
    # Unset, OMP_NUM_THREADS leaves libgomp one thread per CPU: more than a
    # ceiling of 1 on any machine with 2 CPUs.
    write_policy(iso, "max_threads = 1\n")
    iso.write_profile("unset", "[env]\nOMP_NUM_THREADS = false\n")
    assert iso.planned_env("-p", "unset")["OMP_NUM_THREADS"] == "1"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("64,2", "8,2"),  # OpenMP's threads per nesting level: libgomp starts 64 for "64,2"
        ("4,16", "4,8"),
        ("4,2", "4,2"),
        (" 64", "8"),  # libgomp and OpenBLAS skip the blank
        ("064", "8"),
        ("+64", "8"),  # libgomp reads it as 64
    ],
)
def test_max_threads_caps_values_a_library_reads_as_numbers(iso: Isolated, value: str, expected: str) -> None:
    write_policy(iso, "max_threads = 8\n")
    planned = iso.planned_env("--set", f"OMP_NUM_THREADS={value}")
    assert planned["OMP_NUM_THREADS"] == expected


# --- allowed_cpus and max_cpus --------------------------------------------------------


def test_allowed_cpus_restricts_the_child(iso: Isolated) -> None:
    policy = write_policy(iso, f'allowed_cpus = "{SECOND}"\n')
    data = iso.show_json()
    assert data["cpu_set"] == [SECOND] and data["pin"] == [SECOND] and data["cpus"] == 1
    assert f"restricted to {SECOND} by policy {policy}:1 allowed_cpus" in data["why"]["cpu_set"]
    assert any(n.startswith(f"policy {policy}:1 allowed_cpus = '{SECOND}': ") and n.endswith(" left out")
               for n in data["notes"]), data["notes"]
    child = report(iso, names=["OMP_NUM_THREADS"])
    assert child["cpus"] == [SECOND]
    assert child["env"] == {"OMP_NUM_THREADS": None}  # left to libgomp: it counts its 1 CPU
    # An explicit set is intersected too.
    assert report(iso, "--cpus", f"{FIRST},{SECOND}")["cpus"] == [SECOND]


def test_allowed_cpus_ranges_keep_only_usable_cpus(iso: Isolated) -> None:
    # CPUs the machine does not have are simply not in the intersection.
    write_policy(iso, f'allowed_cpus = "{SECOND}-{SECOND + 1000}"\n')
    assert report(iso)["cpus"] == [c for c in AFFINITY if c >= SECOND]


@pytest.mark.parametrize("where", ["profile", "flag"])
def test_cpus_outside_allowed_cpus_is_an_error_naming_the_policy(iso: Isolated, where: str) -> None:
    policy = write_policy(iso, f'allowed_cpus = "{SECOND}"\n')
    marker = iso.work / "marker"
    if where == "profile":
        iso.write_profile("first", f'cpus = "{FIRST}"\n')
        args = ["-p", "first"]
    else:
        args = ["--cpus", str(FIRST)]
    result = iso.run("run", *args, "--", "touch", str(marker))
    line = iso.error_line(result, 2)
    assert line.startswith(f"tcap: error: {policy}: allowed_cpus: none of the CPUs {FIRST} is allowed"), line
    assert not marker.exists()


def test_allowed_cpus_matching_no_usable_cpu_is_an_error(iso: Isolated) -> None:
    policy = write_policy(iso, f'allowed_cpus = "{max(AFFINITY) + 1000}"\n')
    marker = iso.work / "marker"
    line = iso.error_line(iso.run("run", "--", "touch", str(marker)), 2)
    assert line.startswith(f"tcap: error: {policy}: allowed_cpus: none of the CPUs"), line
    assert not marker.exists()


def is_booking_of(name: str, child: dict) -> bool:  # type: ignore[type-arg]
    """Whether booking ``name`` is the child's: its pid and start time (with
    the uid before them and a random suffix after, when placement adds them)."""
    return re.fullmatch(rf"(\d+-)?{child['pid']}-{child['start']}(-[0-9a-f]+)?", name) is not None


def test_allowed_cpus_restricts_auto_placement(iso: Isolated) -> None:
    write_policy(iso, f'allowed_cpus = "{SECOND}"\n')
    data = iso.show_json("--cpus", "auto:1")
    assert (data["cpu_set"], data["pin"], data["place"]) == ([SECOND], None, 1)  # booked among the allowed
    child = report(iso, "--cpus", "auto:1")
    assert child["cpus"] == [SECOND]
    [name] = child["bookings"]
    assert is_booking_of(name, child)
    # auto:2 asks for more than the one CPU the policy leaves.
    line = iso.error_line(iso.run("run", "--cpus", "auto:2", "--", "true"), 2)
    assert "auto:2 asks for more than the 1 CPU" in line, line


def test_max_cpus_keeps_the_first_cpus_of_an_explicit_set(iso: Isolated) -> None:
    policy = write_policy(iso, "max_cpus = 1\n")
    for spec in (f"{FIRST},{SECOND}", "first:2"):
        data = iso.show_json("--cpus", spec)
        assert (data["cpu_set"], data["pin"], data["place"], data["cpus"]) == ([FIRST], [FIRST], None, 1)
        assert f"first 1 kept by policy {policy}:1 max_cpus = 1" in data["why"]["cpu_set"]
        assert any(re.fullmatch(rf"policy {re.escape(str(policy))}:1 max_cpus = 1: 2 CPUs reduced to (CPU )?{FIRST}",
                                note) for note in data["notes"]), data["notes"]
        child = report(iso, "--cpus", spec, names=["OMP_NUM_THREADS"])
        assert child["cpus"] == [FIRST]
        assert child["env"] == {"OMP_NUM_THREADS": None}  # left to libgomp: it counts its 1 CPU
        assert not child["bookings"]  # an explicit set is pinned, not booked


@pytest.mark.parametrize("args", [(), ("--cpus", "all")], ids=["no-choice", "all"])
def test_max_cpus_without_a_choice_books_cpus(iso: Isolated, private_bookings: Path, args: tuple[str, ...]) -> None:
    policy = write_policy(iso, "max_cpus = 1\n")
    data = iso.show_json(*args)
    assert data["place"] == 1 and data["pin"] is None and data["cpus"] == 1
    assert data["cpu_set"] == AFFINITY
    assert f"auto:1 by policy {policy}:1 max_cpus = 1" in data["why"]["cpu_set"]
    text = iso.run("show", *args).stdout
    assert "1 of them booked at launch, free ones first, on_full = share" in text

    child = report(iso, *args, names=["OMP_NUM_THREADS"])
    assert len(child["cpus"]) == 1 and child["cpus"][0] in AFFINITY
    assert child["env"] == {"OMP_NUM_THREADS": None}  # left to libgomp: it counts its 1 CPU
    # While it ran, its booking existed, named for its pid and start time, holding its CPU.
    [name] = child["bookings"]
    assert is_booking_of(name, child)
    assert json.loads((private_bookings / name).read_text())["cpus"] == child["cpus"]


def test_max_cpus_reduces_auto_placement(iso: Isolated) -> None:
    policy = write_policy(iso, "max_cpus = 1\n")
    data = iso.show_json("--cpus", "auto:2")
    assert data["place"] == 1
    assert f"policy {policy}:1 max_cpus = 1: auto:2 reduced to auto:1" in data["notes"]
    assert len(report(iso, "--cpus", "auto:2")["cpus"]) == 1


def test_max_cpus_at_or_above_the_set_changes_nothing(iso: Isolated) -> None:
    write_policy(iso, f"max_cpus = {len(AFFINITY)}\n")
    data = iso.show_json()
    assert (data["cpu_set"], data["pin"], data["place"]) == (AFFINITY, None, None)
    assert data["notes"] == []
    assert report(iso)["cpus"] == AFFINITY


# --- default_profile ------------------------------------------------------------------


def test_default_profile_is_used_without_p_and_p_still_wins(iso: Isolated) -> None:
    iso.write_profile("site-serial", 'description = "one thread"\nthreads = 1\n')
    iso.write_profile("two", "threads = 2\n")

    # Before there is a policy (and with it in the plan cache): the built-in
    # default, which leaves OpenMP alone on this unconstrained machine.
    assert report(iso, names=["OMP_NUM_THREADS"])["env"]["OMP_NUM_THREADS"] is None
    write_policy(iso, 'default_profile = "site-serial"\n')
    data = iso.show_json()
    assert data["profile"] == "site-serial"
    assert data["profile_path"] == str(iso.user_profiles / "site-serial.toml")
    assert report(iso, names=["OMP_NUM_THREADS"])["env"]["OMP_NUM_THREADS"] == "1"

    assert iso.show_json("-p", "two")["profile"] == "two"
    assert report(iso, "-p", "two", names=["OMP_NUM_THREADS"])["env"]["OMP_NUM_THREADS"] == "2"
    assert iso.show_json("-p", "default")["profile"] == "default"
    assert report(iso, "-p", "default", names=["OMP_NUM_THREADS"])["env"]["OMP_NUM_THREADS"] is None
    assert report(iso, names=["OMP_NUM_THREADS"])["env"]["OMP_NUM_THREADS"] == "1"


@pytest.mark.parametrize("first", ["-p default", "no -p"])
def test_p_default_and_no_p_are_not_one_cache_entry(iso: Isolated, first: str) -> None:
    iso.write_profile("site-serial", "threads = 1\n")
    write_policy(iso, 'default_profile = "site-serial"\n')
    site_default = ()
    builtin_default = ("-p", "default")
    order = [builtin_default, site_default] if first == "-p default" else [site_default, builtin_default]
    seen = {args: report(iso, *args, names=["OMP_NUM_THREADS"])["env"]["OMP_NUM_THREADS"] for args in order}
    assert seen == {site_default: "1", builtin_default: None}


def test_default_profile_that_does_not_exist_is_an_error_unless_p_is_given(iso: Isolated) -> None:
    write_policy(iso, 'default_profile = "nowhere"\n')
    marker = iso.work / "marker"
    line = iso.error_line(iso.run("run", "--", "touch", str(marker)), 2)
    assert "no profile named 'nowhere'" in line
    assert not marker.exists()
    assert iso.run("run", "-p", "default", "--", "touch", str(marker)).returncode == 0
    assert marker.exists()


# --- broken policies ------------------------------------------------------------------

BROKEN = [
    ("# site\nmax_thread = 4\n", 2, "unknown key 'max_thread' (did you mean 'max_threads'?)"),
    ("max_threads = 0\n", 1, "max_threads: expected an integer from 1 to 8192, not 0"),
    ('max_threads = "8"\n', 1, "max_threads: expected an integer from 1 to 8192, not '8'"),
    ("max_threads = true\n", 1, "max_threads: expected an integer from 1 to 8192, not True"),
    ("max_threads = 2.5\n", 1, "max_threads: expected an integer from 1 to 8192, not 2.5"),
    ("max_cpus = -1\n", 1, "max_cpus: expected an integer from 1 to 8192, not -1"),
    ("max_threads = 8193\n", 1, "max_threads: expected an integer from 1 to 8192, not 8193"),
    ("wait_timeout = inf\n", 1, "wait_timeout: expected a number of seconds from 0 to 604800 (a week), not inf"),
    ('allowed_cpus = "x"\n', 1, "allowed_cpus: CPU 'x' is not a number"),
    ('allowed_cpus = "3-1"\n', 1, "allowed_cpus: range 3-1 runs backwards"),
    ("allowed_cpus = 3\n", 1, "allowed_cpus: expected a CPU list string"),
    ('on_full = "maybe"\n', 1, "on_full: expected one of share, wait, error, not 'maybe'"),
    ("wait_timeout = -1\n", 1, "wait_timeout: expected a number of seconds from 0 to 604800 (a week), not -1"),
    ('default_profile = "../etc/x"\n', 1, "default_profile: expected a profile name"),
    ("max_cpus = 2\nmax_threads = 8 8\non_full = 'wait'\n", 2, "invalid TOML: "),
    ("max_threads = 8\nmax_threads = 4\n", 2, "invalid TOML: "),
]


@pytest.mark.parametrize(("text", "line", "message"), BROKEN, ids=[m.split(":")[0] + f"-{i}" for i, (_, _, m)
                                                                 in enumerate(BROKEN)])
def test_broken_policy_is_one_line_error_and_nothing_runs(iso: Isolated, text: str, line: int, message: str) -> None:
    policy = write_policy(iso, text)
    marker = iso.work / "marker"
    for command in (["run", "--", "touch", str(marker)], ["show"], ["env"], ["run", "--dry-run", "--", "true"]):
        error = iso.error_line(iso.run(*command), 2)
        assert error.startswith(f"tcap: error: {policy}:{line}: {message}"), (command, error)
    assert not marker.exists()


def test_wait_timeout_nan_is_an_error(iso: Isolated) -> None:
    policy = write_policy(iso, 'on_full = "wait"\nwait_timeout = nan\n')
    error = iso.error_line(iso.run("show"), 2)
    assert error.startswith(f"tcap: error: {policy}:2: wait_timeout: "), error


def test_wait_timeout_accepts_integers_and_fractions(iso: Isolated) -> None:
    for value in ("0", "1.5", "600", "604800"):
        write_policy(iso, f'on_full = "wait"\nwait_timeout = {value}\n')
        data = iso.show_json("--cpus", "auto:1")
        assert (data["on_full"], data["wait_timeout"]) == ("wait", float(value))


def test_policy_that_is_a_directory_is_an_error(iso: Isolated) -> None:
    policy = iso.site / "policy.toml"
    policy.mkdir()
    marker = iso.work / "marker"
    error = iso.error_line(iso.run("run", "--", "touch", str(marker)), 2)
    assert error == f"tcap: error: {policy}: cannot read policy: a directory, not a regular file"
    assert not marker.exists()


def test_policy_that_is_a_dangling_symlink_is_an_error(iso: Isolated) -> None:
    # It exists as a name, so it is not "no policy": a ceiling that vanished
    # must not silently become no ceiling.
    policy = iso.site / "policy.toml"
    policy.symlink_to(iso.root / "moved-away.toml")
    marker = iso.work / "marker"
    error = iso.error_line(iso.run("run", "--", "touch", str(marker)), 2)
    assert error == f"tcap: error: {policy}: cannot read policy: No such file or directory"
    assert not marker.exists()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_policy_is_an_error(iso: Isolated) -> None:
    policy = write_policy(iso, "max_threads = 1\n")
    policy.chmod(0)
    marker = iso.work / "marker"
    error = iso.error_line(iso.run("run", "--", "touch", str(marker)), 2)
    assert error == f"tcap: error: {policy}: cannot read policy: Permission denied"
    assert not marker.exists()


def test_policy_that_is_not_utf8_is_an_error(iso: Isolated) -> None:
    policy = iso.site / "policy.toml"
    policy.write_bytes(b"max_threads = 1 # \xff\n")
    marker = iso.work / "marker"
    error = iso.error_line(iso.run("run", "--", "touch", str(marker)), 2)
    assert error == f"tcap: error: {policy}:1: not UTF-8 text (byte 19)"
    assert not marker.exists()


def test_empty_policy_is_no_ceiling(iso: Isolated) -> None:
    write_policy(iso, "# nothing decided yet\n")
    data = iso.show_json("--threads", "64")
    assert set(data["caps"].values()) == {64}
    assert data["notes"] == []


# --- the plan cache -------------------------------------------------------------------


def test_cached_runs_follow_policy_changes(iso: Isolated) -> None:
    cache = Path(cache_file(iso.env) or "")
    marker = iso.work / "marker"

    def omp() -> str:
        return report(iso, "--threads", "64", names=["OMP_NUM_THREADS"])["env"]["OMP_NUM_THREADS"]

    def cache_identity() -> tuple[int, int]:
        st = cache.stat()
        return (st.st_ino, st.st_mtime_ns)

    assert omp() == "64"
    stored = cache_identity()
    assert omp() == "64"
    assert cache_identity() == stored, "the second run should have been a cache hit"

    policy = write_policy(iso, "max_threads = 8\n")  # added
    assert omp() == "8"
    assert cache_identity() != stored
    stored = cache_identity()
    assert omp() == "8"
    assert cache_identity() == stored, "an unchanged policy should keep the cache hit"

    with policy.open("w") as f:  # edited in place: same inode, another size
        f.write("max_threads = 16\n")
    assert omp() == "16"

    before = policy.stat()
    with policy.open("w") as f:  # edited in place: same inode, same size
        f.write("max_threads = 12\n")
    after = policy.stat()
    assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size)
    if after.st_mtime_ns == before.st_mtime_ns:  # a coarse clock: as an edit a moment later
        os.utime(policy, ns=(after.st_atime_ns, after.st_mtime_ns + 10_000_000))
    assert omp() == "12"

    policy.write_text("max_threads = 0\n")  # broken: never the last good plan
    assert iso.error_line(iso.run("run", "--threads", "64", "--", "touch", str(marker)), 2)
    assert not marker.exists()

    policy.unlink()  # removed
    assert omp() == "64"


def test_cached_runs_follow_a_policy_that_restricts_cpus(iso: Isolated) -> None:
    assert report(iso)["cpus"] == AFFINITY
    assert report(iso)["cpus"] == AFFINITY
    write_policy(iso, f'allowed_cpus = "{SECOND}"\n')
    assert report(iso)["cpus"] == [SECOND]
    (iso.site / "policy.toml").unlink()
    assert report(iso)["cpus"] == AFFINITY


def test_policy_of_another_site_dir_is_not_read(iso: Isolated, tmp_path: Path) -> None:
    write_policy(iso, "max_threads = 1\n")
    other = tmp_path / "other-site"
    other.mkdir()
    result = iso.run("show", "--json", "--threads", "64", extra_env={"TCAP_SITE_DIR": str(other)})
    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout)["caps"].values()) == {64}
    assert set(iso.show_json("--threads", "64")["caps"].values()) == {1}


def test_without_a_policy_nothing_is_capped_or_booked(iso: Isolated, private_bookings: Path) -> None:
    data = iso.show_json("--threads", "64")
    assert set(data["caps"].values()) == {64} and data["notes"] == []
    child = report(iso, names=["OMP_NUM_THREADS"])
    assert child["cpus"] == AFFINITY
    assert child["env"] == {"OMP_NUM_THREADS": None}  # the default leaves it to libgomp here
    assert child["bookings"] is None and not private_bookings.exists()  # nothing booked, no directory made

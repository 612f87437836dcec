"""Hostile input on the launch path: caches and library facts other users
can reach, malformed frozen plans, and commands exec cannot run. Each case
gives its documented exit code and one line, quickly, or behaves correctly;
with real Unix users (tests/users.py), nothing of another user's changes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import PYTHON, TCAP, Isolated
from tcap._inspect import store_file
from tcap.cache import cache_file, entry_path
from users import User

HANG = 20  # seconds: a case that passes runs in well under one


def env_of(program_output: str) -> dict[str, str]:
    return json.loads(program_output.strip().splitlines()[-1])  # type: ignore[no-any-return]


PRINT_ENV = "import json, os; print(json.dumps({k: v for k, v in os.environ.items() if 'THREADS' in k}))"


# --- commands exec cannot run -----------------------------------------------------


@pytest.fixture
def work(iso: Isolated) -> Path:
    return iso.work


@pytest.mark.parametrize("report", [False, True], ids=["exec", "supervised"])
def test_a_symlink_loop_is_126(iso: Isolated, work: Path, report: bool) -> None:
    (work / "loop").symlink_to("loop")
    result = iso.run("run", *(["--report"] if report else []), "--", "./loop", timeout=HANG)
    assert "symbolic links" in iso.error_line(result, 126)


@pytest.mark.parametrize("report", [False, True], ids=["exec", "supervised"])
def test_a_missing_interpreter_is_named(iso: Isolated, work: Path, report: bool) -> None:
    script = work / "script"
    script.write_text("#!/nonexistent/bin/python9\nprint(1)\n")
    script.chmod(0o755)
    line = iso.error_line(iso.run("run", *(["--report"] if report else []), "--", "./script", timeout=HANG), 126)
    assert "/nonexistent/bin/python9" in line and "not found" not in line


@pytest.mark.parametrize("report", [False, True], ids=["exec", "supervised"])
def test_an_empty_command_is_127(iso: Isolated, report: bool) -> None:
    iso.error_line(iso.run("run", *(["--report"] if report else []), "--", "", timeout=HANG), 127)


@pytest.mark.parametrize("report", [False, True], ids=["exec", "supervised"])
def test_a_name_too_long_is_126(iso: Isolated, report: bool) -> None:
    line = iso.error_line(iso.run("run", *(["--report"] if report else []), "--", "./" + "a" * 300, timeout=HANG), 126)
    assert "too long" in line


@pytest.mark.parametrize("report", [False, True], ids=["exec", "supervised"])
def test_an_executable_fifo_is_126_without_blocking(iso: Isolated, work: Path, report: bool) -> None:
    """Reading its #! line (which interpreter the launch starts) must not
    open the FIFO and wait for a writer."""
    fifo = work / "prog.py"
    os.mkfifo(fifo, 0o755)
    line = iso.error_line(iso.run("run", *(["--report"] if report else []), "--", "./prog.py", timeout=HANG), 126)
    assert "a FIFO, not a program" in line


def test_a_program_being_written_is_126(iso: Isolated, work: Path) -> None:
    program = work / "busy"
    shutil.copy("/bin/true", program)
    with open(program, "ab"):  # open for writing: exec says "text file busy"
        line = iso.error_line(iso.run("run", "--", str(program), timeout=HANG), 126)
    assert "busy" in line.lower()


def test_an_environment_too_long_for_the_system_is_126(iso: Isolated) -> None:
    """A profile's [env] that the command's exec cannot carry (E2BIG): the
    stack limit makes the system's limit 256 KiB, the profile adds 320 KiB."""
    import resource

    entries = "".join(f'TCAP_BIG_{i} = "{"x" * 4000}"\n' for i in range(80))
    iso.write_profile("big", "[env]\n" + entries)

    def small_stack() -> None:
        resource.setrlimit(resource.RLIMIT_STACK, (1 << 20, resource.getrlimit(resource.RLIMIT_STACK)[1]))

    result = subprocess.run([str(TCAP), "run", "-p", "big", "--", "/bin/true"], env=iso.env, capture_output=True,
                            text=True, timeout=HANG, preexec_fn=small_stack)
    assert "too long" in iso.error_line(result, 126)


def test_a_deleted_working_directory_is_named(iso: Isolated, tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    process = subprocess.Popen(
        ["sh", "-c", f'cd "{gone}" && rmdir "{gone}" && exec "$0" run -p ./x.toml -- true', str(TCAP)],
        env=iso.env, stderr=subprocess.PIPE, text=True)
    _, stderr = process.communicate(timeout=HANG)
    assert process.returncode == 74, stderr
    assert stderr == "tcap: error: the current directory no longer exists (cd to another one)\n"


@pytest.mark.parametrize("module", ["tcap.cli", "tcap.grammar", "tcap.commands"])
def test_ctrl_c_while_tcap_imports_prints_no_traceback(iso: Isolated, module: str) -> None:
    """Ctrl-C landing while the tcap command imports ``module`` (an import
    hook sends it at that moment): tcap ends as the signal says, quietly."""
    program = f"""
import os, signal, sys
class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, Interrupt())
sys.argv = ["tcap", "run", "--", "true"]
from tcap import _entry
sys.exit(_entry())
"""
    result = subprocess.run([PYTHON, "-c", program], env=iso.env, capture_output=True, text=True, timeout=HANG)
    assert result.stderr == ""
    assert result.returncode in (130, -signal.SIGINT)


# --- frozen plans (--plan) ----------------------------------------------------------

GOOD = {"recipe": {"env": [["OMP_NUM_THREADS", "1"]], "pin": None, "verify": "off", "bootstrap": None}}


@pytest.mark.parametrize("content", [
    "", "[]", "5", "null", '{"recipe": 5}', '{"recipe": []}', '{"recipe": {}}', '{"recipe": {"env": 3}}',
    '{"recipe": {"env": [3]}}', '{"recipe": {"env": [["A"]]}}', '{"recipe": {"env": [["A", 5]]}}',
    '{"recipe": {"env": [[5, "x"]]}}', '{"recipe": {"env": [], "pin": [1e400]}}',
    '{"recipe": {"env": [], "pin": [-1]}}', '{"recipe": {"env": [], "pin": "0"}}',
    '{"recipe": {"env": [], "place": {"count": 1e400, "allowed": [0]}}}',
    '{"recipe": {"env": [], "place": 7}}', '{"recipe": {"env": [], "verify": 1}}',
    '{"recipe": {"env": [], "bootstrap": 1}}', '{"recipe": {"env": [], "notes": [1]}}',
    '{"recipe": {"env": [], "cpus": NaN}}', "[" * 100_000 + "]" * 100_000, '{"recipe": ' + "1" * 5000 + "}",
    "\xff\xfe garbage",
])
def test_a_malformed_frozen_plan_is_one_line_and_exit_2(iso: Isolated, content: str) -> None:
    plan = iso.work / "plan.json"
    plan.write_bytes(content.encode("latin-1"))
    marker = iso.work / "ran"
    iso.error_line(iso.run("run", "--plan", str(plan), "--", "touch", str(marker), timeout=HANG), 2)
    assert not marker.exists()


def test_a_good_frozen_plan_runs(iso: Isolated) -> None:
    plan = iso.work / "plan.json"
    plan.write_text(json.dumps(GOOD))
    result = iso.run("run", "--plan", str(plan), "--", PYTHON, "-c", PRINT_ENV, timeout=HANG)
    assert result.returncode == 0, result.stderr
    assert env_of(result.stdout)["OMP_NUM_THREADS"] == "1"


@pytest.mark.parametrize("special", ["fifo", "/dev/zero", "directory", "huge"])
def test_a_frozen_plan_that_is_not_a_small_file_is_refused_at_once(iso: Isolated, special: str) -> None:
    path = iso.work / "plan.json"
    if special == "fifo":
        os.mkfifo(path)
    elif special == "directory":
        path.mkdir()
    elif special == "huge":
        with open(path, "wb") as f:
            f.truncate(3 << 30)
    else:
        path = Path(special)
    start = time.monotonic()
    line = iso.error_line(iso.run("run", "--plan", str(path), "--", "true", timeout=HANG), 2)
    assert time.monotonic() - start < HANG
    assert str(path) in line


def test_a_missing_frozen_plan_is_2(iso: Isolated) -> None:
    iso.error_line(iso.run("run", "--plan", str(iso.work / "none.json"), "--", "true", timeout=HANG), 2)


# --- the user's own cache ---------------------------------------------------------------


def test_a_corrupt_entry_of_the_users_own_plan_cache_is_a_miss(iso: Isolated) -> None:
    """A wrong-typed recipe, a FIFO, a huge file: each a miss, the launch right."""
    args = ("run", "--threads", "1", "--", PYTHON, "-c", PRINT_ENV)
    assert env_of(iso.run(*args, timeout=HANG).stdout)["OMP_NUM_THREADS"] == "1"
    directory = Path(cache_file(iso.env) or "")
    entries = list(directory.iterdir())
    assert entries
    import marshal

    for damage in ("wrong type", "fifo", "huge"):
        for entry in entries:
            entry.unlink()
            if damage == "fifo":
                os.mkfifo(entry, 0o600)
            elif damage == "huge":
                with open(entry, "wb") as f:
                    f.truncate(3 << 30)
                entry.chmod(0o600)
            else:
                entry.write_bytes(marshal.dumps((5, "key", (), {"env": "OMP_NUM_THREADS=64"})))
                entry.chmod(0o600)
        result = iso.run(*args, timeout=HANG)
        assert result.returncode == 0, (damage, result.stderr)
        assert env_of(result.stdout)["OMP_NUM_THREADS"] == "1", damage


@pytest.mark.parametrize("content", [
    '{"libraries": 5, "format": 1}', '{"format": 1, "libraries": [5, "x", null]}',
    '{"format": 1, "libraries": [{"filepath": 5}]}', '{"format": 1, "libraries": [{"filepath": "/x", "size": "big"}]}',
    '{"format": 1, "libraries": [{"filepath": "%s", "size": %d, "mtime_ns": %d, "max_threads": 1e400, '
    '"internal_api": "openblas"}]}', "[" * 100_000, "not json",
])
def test_a_wrong_typed_library_facts_entry_never_fails_a_launch(iso: Isolated, content: str) -> None:
    store = Path(store_file(str(iso.cache_dir / "libraries"), PYTHON))
    store.parent.mkdir(parents=True, mode=0o700)
    info = os.stat(PYTHON)
    if "%s" in content:
        content = content % (os.path.realpath(PYTHON), info.st_size, info.st_mtime_ns)
    store.write_text(content)
    store.chmod(0o600)
    result = iso.run("run", "--threads", "2", "--", PYTHON, "-c", PRINT_ENV, timeout=HANG)
    assert result.returncode == 0, result.stderr
    assert "internal error" not in result.stderr
    assert env_of(result.stdout)["OMP_NUM_THREADS"] == "2"


def test_a_fifo_as_library_facts_never_hangs(iso: Isolated) -> None:
    store = Path(store_file(str(iso.cache_dir / "libraries"), PYTHON))
    store.parent.mkdir(parents=True, mode=0o700)
    os.mkfifo(store, 0o600)
    result = iso.run("run", "--threads", "2", "--", PYTHON, "-c", PRINT_ENV, timeout=HANG)
    assert result.returncode == 0, result.stderr
    assert env_of(result.stdout)["OMP_NUM_THREADS"] == "2"
    show = iso.run("doctor", timeout=120)
    assert show.returncode in (0, 1), show.stderr  # a hazard is 1
    assert "internal error" not in show.stderr


# --- caches other users can reach (real users) ------------------------------------------


def test_library_facts_planted_by_another_user_do_not_steer_a_launch(users: tuple[User, ...],
                                                                     shared_tmp: Path) -> None:
    """With a shared XDG_CACHE_HOME, ben plants max_threads = 1 for the
    interpreter ana runs: ana's launch keeps her caps, and ben's file is his."""
    ana, ben, _ = users
    cache = shared_tmp / "cache"
    cache.mkdir()
    cache.chmod(0o1777)
    python = "/usr/bin/python3"
    info = os.stat(os.path.realpath(python))
    store = Path(store_file(str(cache / "tcap" / "libraries"), python))
    planted = json.dumps({"format": 1, "prefix": "/usr", "executable": python, "libraries": [{
        "internal_api": "openblas", "user_api": "blas", "prefix": "libopenblas", "filepath": os.path.realpath(python),
        "version": "6.6.6", "size": info.st_size, "mtime_ns": info.st_mtime_ns, "owner": "numpy",
        "config": "OpenBLAS 6.6.6 MAX_THREADS=1", "max_threads": 1}]})
    setup = ben.as_user("sh", "-c", f'mkdir -p "{store.parent}" && printf %s \'{planted}\' > "{store}"')
    subprocess.run(setup, check=True, env=ben.env(), timeout=HANG)
    assert store.stat().st_uid == ben.uid
    before = store.read_bytes()
    env = ana.env(XDG_CACHE_HOME=str(cache), TCAP_SITE_DIR=str(shared_tmp / "nosite"))
    result = ana.tcap("run", "--threads", "2", "--", python, "-c", PRINT_ENV, env=env, timeout=HANG)
    assert result.returncode == 0, result.stderr
    taken = env_of(result.stdout)
    assert taken["OMP_NUM_THREADS"] == "2" and "6.6.6" not in result.stderr, (taken, result.stderr)
    shown = ana.tcap("show", "--threads", "2", "--python", python, env=env, timeout=HANG)
    assert shown.returncode == 0 and "6.6.6" not in shown.stdout, shown.stdout
    assert store.read_bytes() == before and store.stat().st_uid == ben.uid


def test_a_fifo_planted_in_a_shared_cache_never_hangs_another_user(users: tuple[User, ...],
                                                                   shared_tmp: Path) -> None:
    ana, ben, _ = users
    cache = shared_tmp / "cache"
    cache.mkdir()
    cache.chmod(0o1777)
    python = "/usr/bin/python3"
    store = Path(store_file(str(cache / "tcap" / "libraries"), python))
    subprocess.run(ben.as_user("sh", "-c", f'mkdir -p "{store.parent}" && mkfifo "{store}"'), check=True,
                   env=ben.env(), timeout=HANG)
    env = ana.env(XDG_CACHE_HOME=str(cache), TCAP_SITE_DIR=str(shared_tmp / "nosite"))
    result = ana.tcap("run", "--threads", "2", "--", python, "-c", PRINT_ENV, env=env, timeout=HANG)
    assert result.returncode == 0, result.stderr
    assert env_of(result.stdout)["OMP_NUM_THREADS"] == "2"


def test_a_plan_cache_directory_made_by_another_user_is_not_used(users: tuple[User, ...],
                                                                  shared_tmp: Path) -> None:
    """ben makes ana's plan cache directory first (shared XDG_CACHE_HOME) and
    fills it with an entry of his: ana's launches ignore both and still run."""
    ana, ben, _ = users
    cache = shared_tmp / "cache"
    cache.mkdir()
    cache.chmod(0o1777)
    env = ana.env(XDG_CACHE_HOME=str(cache), TCAP_SITE_DIR=str(shared_tmp / "nosite"))
    plans = Path(cache_file(env) or "")
    subprocess.run(ben.as_user("sh", "-c", f'mkdir -p -m 777 "{plans}"'), check=True, env=ben.env(), timeout=HANG)
    for _ in range(2):
        result = ana.tcap("run", "--threads", "2", "--", "/usr/bin/python3", "-c", PRINT_ENV, env=env, timeout=HANG)
        assert result.returncode == 0, result.stderr
        assert env_of(result.stdout)["OMP_NUM_THREADS"] == "2"
    assert all(entry.stat().st_uid != ana.uid for entry in plans.iterdir())  # nothing written into ben's directory


def test_entry_names_are_stable_across_processes(iso: Isolated) -> None:
    key = ("0.1", "kmeans", (("threads", "2"),), ("/a",), None)
    here = entry_path("/d", key)
    program = f"from tcap.cache import entry_path; print(entry_path('/d', {key!r}))"
    there = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True).stdout.strip()
    assert here == there

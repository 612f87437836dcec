"""The front door, fuzzed: generated profile files, extends chains, policy
files, flag lists, and launcher, Slurm and cgroup environments (a described
machine through TCAP_SYSROOT) — valid and broken: random bytes, deep
nesting, huge numbers, odd Unicode, very long values.

The contract on every case: tcap either resolves a plan whose every exported
count respects the ceilings (tcap.bounds), or exits 2 with exactly one
line on stderr; never a traceback, never exit 125, never a hang (each case
runs under an alarm), never a half-written cache file. The in-process cases
call ``tcap.cli.main`` (the same code path as the console script, minus the
interpreter start); a smaller set runs the real ``tcap run``. Seeds are
fixed (``derandomize``), so a failure reproduces.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import PYTHON, Isolated
from tcap.bounds import MAX_CPU, MAX_THREADS
from tcap.cli import main
from tcap.recipe import THREAD_VARIABLES

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=400,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
#: Seconds one case may take before it counts as a hang.
ALARM = 5

KEYS = ["threads", "blas", "openmp", "openblas", "mkl", "numexpr", "numba", "polars", "workers", "cpus", "verify",
        "extends", "description", "alias", "env", "bogus"]
huge = st.sampled_from([0, -1, 1, 2, 4096, 4097, 10**9, 10**20, 2**64, 10**400])
odd_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
cpu_specs = st.one_of(
    st.sampled_from(["all", "physical", "rank", "first:1", "first:0", "auto:1", "auto:99999999999", "0-99999999999",
                     "0-4294967296", "1-0", "0-1:0", "0,,1", "0-8191", "0-8192", "٠-١", "0x1", ""]),
    st.builds(lambda a, b: f"{a}-{b}", huge, huge),
    odd_text,
)
expressions = st.one_of(
    st.sampled_from(["cpus", "cpus/2", "max(1, cpus - 2)", "cpus*1000000000", "cpus/0", "min()", "(" * 40 + "1" +
                     ")" * 40, "-" * 100 + "1", "9" * 30, "cpus*" * 60 + "1", "physical", "x", ""]),
    odd_text,
)
values = st.one_of(huge, cpu_specs, expressions, st.booleans(), st.floats(allow_nan=True),
                   st.lists(st.integers(), max_size=3), odd_text)


def toml_value(value: object) -> str:
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value).replace("inf", "inf").replace("nan", "nan")
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


@st.composite
def profile_texts(draw: st.DrawFn) -> bytes:
    """A profile file: mostly TOML tcap might be given, sometimes garbage."""
    kind = draw(st.sampled_from(["toml", "toml", "toml", "bytes", "bom", "deep", "long"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "deep":
        return ("threads = " + "[" * 500 + "]" * 500 + "\n").encode()
    if kind == "long":
        return f'description = "{"x" * 100000}"\nthreads = 2\n[env]\nX = "{"y" * 10000}"\n'.encode()
    lines = []
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=5, unique=True)):
        if key == "env":
            continue
        lines.append(f"{key} = {toml_value(draw(values))}")
    if draw(st.booleans()):
        lines.append("[env]")
        for name in draw(st.lists(st.sampled_from(sorted(THREAD_VARIABLES) + ["MALLOC_ARENA_MAX", "bad name"]),
                                  max_size=3, unique=True)):
            lines.append(f"{json.dumps(name)} = {toml_value(draw(values))}")
    text = "\n".join(lines) + "\n"
    return (b"\xef\xbb\xbf" if kind == "bom" else b"") + text.encode("utf-8", "surrogatepass")


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _alarm(signum: int, frame: object) -> None:
    raise TimeoutError(f"a case took more than {ALARM} s: tcap hangs")


def call(iso: Isolated, argv: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """tcap.cli.main(argv) in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(ALARM)
    try:
        with environment({**iso.env, **(env or {})}), contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return code, out.getvalue(), err.getvalue()


def check_contract(code: int, out: str, err: str) -> dict | None:
    """Exit 0 with a plan within the ceilings, or exit 2 with one error line."""
    if code != 0:
        assert code == 2, (code, err)
        assert err.count("\n") == 1 and err.startswith("tcap: error: "), err
        assert "Traceback" not in err and "internal error" not in err
        return None
    plan = json.loads(out)
    for name, value, _ in plan["env"]:
        if name in THREAD_VARIABLES and value is not None:
            counts = [int(part) for part in value.replace("+", "").split(",") if part.strip().isdigit()]
            assert all(1 <= count <= MAX_THREADS for count in counts), (name, value)
    assert 1 <= plan["cpus"] <= MAX_CPU + 1
    assert all(1 <= cap <= MAX_THREADS for cap in plan["caps"].values()), plan["caps"]
    return plan


@pytest.fixture
def fz(tmp_path: Path) -> Isolated:
    return Isolated(tmp_path)


@FUZZ
@given(text=profile_texts())
def test_profile_files(fz: Isolated, text: bytes):
    (fz.user_profiles / "fz.toml").write_bytes(text)
    check_contract(*call(fz, ["show", "-p", "fz", "--json"]))


@FUZZ
@given(chain=st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d", "missing", "a/b", "..", ""]), values),
                      min_size=1, max_size=6))
def test_extends_chains(fz: Isolated, chain: list[tuple[str, object]]):
    names = ["a", "b", "c", "d"]
    for index, name in enumerate(names):
        parent, value = chain[index % len(chain)]
        (fz.user_profiles / f"{name}.toml").write_text(f"extends = {json.dumps(parent)}\nthreads = "
                                                       f"{toml_value(value)}\n")
    check_contract(*call(fz, ["show", "-p", "a", "--json"]))


@FUZZ
@given(policy=st.dictionaries(st.sampled_from(["max_threads", "max_cpus", "allowed_cpus", "default_profile",
                                                "on_full", "wait_timeout", "bogus"]), values, max_size=4),
       garbage=st.booleans())
def test_policy_files(fz: Isolated, policy: dict[str, object], garbage: bool):
    text = "\n".join(f"{key} = {toml_value(value)}" for key, value in policy.items()) + "\n"
    (fz.site / "policy.toml").write_text("\x00[[[" + text if garbage else text)
    code, out, err = call(fz, ["show", "--json"])
    plan = check_contract(code, out, err)
    if plan is not None and isinstance(policy.get("max_threads"), int) and 1 <= policy["max_threads"] <= MAX_THREADS:
        assert all(cap <= policy["max_threads"] for cap in plan["caps"].values())


flag_values = st.one_of(huge.map(str), cpu_specs, expressions, odd_text)


@FUZZ
@given(flags=st.lists(st.tuples(st.sampled_from(["--threads", "--blas", "--openmp", "--workers", "--cpus", "--set",
                                                 "--verify", "-p", "--bogus"]), flag_values), max_size=5))
def test_flag_lists(fz: Isolated, flags: list[tuple[str, str]]):
    argv = ["show", "--json"]
    for option, value in flags:
        argv += [option, value]
    check_contract(*call(fz, argv))


launcher_values = st.one_of(st.sampled_from(["0", "1", "2", "3", "-1", "x", "", "99999999999999999999", "2(x3),1",
                                             "1(x99999999999)", "quiet,mask_cpu:0x1,0x2", "none", "0x" + "f" * 5000]),
                            odd_text)


@FUZZ
@given(env=st.dictionaries(st.sampled_from(["SLURM_JOB_ID", "SLURM_LOCALID", "SLURM_TASKS_PER_NODE", "SLURM_NODEID",
                                            "SLURM_CPU_BIND", "SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE",
                                            "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE",
                                            "MPI_LOCALRANKID", "MPI_LOCALNRANKS", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                                            "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"]), launcher_values, max_size=6),
       rank=st.booleans())
def test_launcher_and_slurm_environments(fz: Isolated, env: dict[str, str], rank: bool):
    env = {k: v.replace("\x00", "") for k, v in env.items()}
    check_contract(*call(fz, ["show", "--json", *(["--cpus", "rank"] if rank else [])], env))


@FUZZ
@given(allowed=cpu_specs, online=cpu_specs, cpu_max=st.one_of(st.sampled_from(["max 100000", "150000 100000",
                                                                                 "0 0", "-1 100000", "x y",
                                                                                 "99999999999999999999 1", ""]),
                                                               odd_text))
def test_described_machines(fz: Isolated, allowed: str, online: str, cpu_max: str):
    root = fz.root / "sysroot"
    (root / "proc/self").mkdir(parents=True, exist_ok=True)
    (root / "proc/self/status").write_text(f"Name:\tpython\nCpus_allowed_list:\t{allowed}\n")
    (root / "proc/self/cgroup").write_text("0::/job\n")
    (root / "sys/fs/cgroup/job").mkdir(parents=True, exist_ok=True)
    (root / "sys/fs/cgroup/job/cpu.max").write_text(cpu_max + "\n")
    (root / "sys/devices/system/cpu").mkdir(parents=True, exist_ok=True)
    (root / "sys/devices/system/cpu/online").write_text(online + "\n")
    check_contract(*call(fz, ["show", "--json"], {"TCAP_SYSROOT": str(root)}))


# The real console script: tcap run either starts the command or exits 2
# with one line and starts nothing; the plan cache never holds a temporary.

@settings(derandomize=True, database=None, deadline=None, max_examples=60,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=profile_texts(), flags=st.lists(st.tuples(st.sampled_from(["--threads", "--cpus", "--set"]),
                                                      flag_values), max_size=2))
def test_tcap_run_starts_the_command_or_nothing(fz: Isolated, text: bytes, flags: list[tuple[str, str]]):
    (fz.user_profiles / "fz.toml").write_bytes(text)
    marker = fz.work / "started"
    marker.unlink(missing_ok=True)
    argv = ["run", "-p", "fz"]
    for option, value in flags:
        if "\x00" not in value:
            argv += [option, value]
    result = fz.run(*argv, "--", PYTHON, "-c", f"open({str(marker)!r}, 'w').close()", timeout=30)
    if result.returncode == 0:
        assert marker.exists()
    else:
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("tcap: error: "), result.stderr
        assert not marker.exists()
    leftovers = [p.name for p in fz.cache.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]
    assert not leftovers


# -- State files tcap reads: cache entries, library facts, frozen plans, doctor answers.
# Each generated from a valid file with one field replaced, removed or added (or
# from scratch); the contract: the launch is right or refused with one line.

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.sampled_from([10**400, -(2**63), 2**64]),
              st.floats(allow_nan=False), odd_text),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(odd_text, inner, max_size=4)),
    max_leaves=12,
)


@st.composite
def mutated(draw: st.DrawFn, valid: object) -> object:
    """``valid`` with one value somewhere in it replaced, removed or added."""
    def walk(value: object, depth: int) -> object:
        if isinstance(value, dict) and value and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(value, key=str)))
            action = draw(st.sampled_from(["replace", "remove", "descend", "descend"]))
            if action == "remove":
                return {k: v for k, v in value.items() if k != key}
            if action == "replace" or depth > 4:
                return {**value, key: draw(json_values)}
            return {**value, key: walk(value[key], depth + 1)}
        if isinstance(value, list) and value and draw(st.booleans()):
            index = draw(st.integers(0, len(value) - 1))
            copy = list(value)
            copy[index] = walk(copy[index], depth + 1) if draw(st.booleans()) and depth <= 4 else draw(json_values)
            return copy
        return draw(json_values)
    return walk(valid, 0)


VALID_RECIPE = {"env": [["OMP_NUM_THREADS", "2"], ["MKL_NUM_THREADS", None]], "pin": [0], "place": None,
                "verify": "off", "bootstrap": None, "cpus": 1, "rank": None, "notes": ["a note"]}


@FUZZ
@given(recipe=st.one_of(mutated(VALID_RECIPE), json_values))
def test_frozen_plan_files(fz: Isolated, recipe: object):
    plan = fz.work / "plan.json"
    plan.write_text(json.dumps({"recipe": recipe}))
    code, out, err = call(fz, ["run", "--plan", str(plan), "--dry-run", "--", "true"])
    if code != 0:
        assert code == 2, (code, err)
        assert err.count("\n") == 1 and err.startswith("tcap: error: "), err
        assert "internal error" not in err


@FUZZ
@given(recipe=st.one_of(mutated(VALID_RECIPE), json_values))
def test_plan_cache_entries(fz: Isolated, recipe: object):
    """A cache entry of any shape under the right key: a hit only when it is
    a launch recipe, else a miss; never an exception."""
    from tcap.cache import lookup, recipe_problem, store

    where = str(fz.cache / "tcap" / "plans")
    key = ("fz", 1)
    store(where, key, [], recipe)
    found = lookup(where, key)
    assert found is None or (found == recipe and recipe_problem(found) is None)


def _python_fact() -> dict[str, object]:
    info = os.stat(PYTHON)
    return {"internal_api": "openblas", "user_api": "blas", "prefix": "libopenblas", "filepath": PYTHON,
            "version": "0.3.31", "size": info.st_size, "mtime_ns": info.st_mtime_ns, "owner": "numpy",
            "config": "OpenBLAS 0.3.31 MAX_THREADS=64", "max_threads": 64, "threading_layer": "pthreads",
            "architecture": "Haswell"}


@FUZZ
@given(data=st.data())
def test_library_facts_entries(fz: Isolated, data: st.DataObject):
    """The interpreter's facts file with any one field damaged: the plan
    resolves within the ceilings (a limit is honoured only when valid)."""
    from tcap._inspect import store_file

    valid = {"format": 1, "prefix": "/x", "executable": PYTHON, "libraries": [_python_fact()]}
    facts = data.draw(st.one_of(mutated(valid), json_values))
    path = Path(store_file(str(fz.cache / "tcap" / "libraries"), PYTHON))
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(json.dumps(facts))
    path.chmod(0o600)
    code, out, err = call(fz, ["show", "--json", "--python", PYTHON])
    check_contract(code, out, err)


@FUZZ
@given(data=st.data())
def test_doctor_answers(data: st.DataObject):
    """What another interpreter's _inspect.py prints, damaged: checked into
    the fields tcap uses, or refused; the hazards then never raise."""
    from tcap.doctor import _checked_answer, hazards

    valid = {"executable": PYTHON, "prefix": "/x", "python": "3.11.7", "imported": ["numpy"], "missing": [],
             "threads": {PYTHON: 2}, "affinity": 2, "libraries": [_python_fact()]}
    answer = data.draw(st.one_of(mutated(valid), json_values))
    checked = _checked_answer(answer) if isinstance(answer, dict) else None
    if checked is None:
        return
    facts = {"usable": 2, "affinity_count": 2, "online": 2, "quota": None, "slurm": None}
    found, notes = hazards(facts, checked["libraries"], checked["imported"], PYTHON, {})
    assert all(isinstance(item["what"], str) for item in found)

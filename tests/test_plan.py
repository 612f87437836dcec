"""resolve(profile, machine, overrides) -> Plan: tcap.plan."""

from __future__ import annotations

import json
import marshal

import pytest

from tcap.errors import TcapError
from tcap.machine import Machine
from tcap.plan import Overrides, Plan, inherited_overrides, resolve, uses_physical
from tcap.profiles import Origin, Profile, Setting, load
from tcap.variables import VARIABLES

PATH = "/profiles/test.toml"
THREAD_VARS = [v.name for v in VARIABLES if v.basis == "threads" and v.by_threads]  # not ARROW_IO_THREADS
ALL_VARS = [v.name for v in VARIABLES]


def make_profile(settings: dict | None = None, env: dict | None = None, path: str = PATH) -> Profile:
    """A merged profile; each key's line is its position in ``settings`` + 1."""
    profile = Profile(name="test", path=path, description="a test profile")
    for line, (key, value) in enumerate((settings or {}).items(), 1):
        profile.settings[key] = Setting(value, Origin(path, line, key))
    for line, (name, value) in enumerate((env or {}).items(), 100):
        profile.env[name] = Setting(value, Origin(path, line, f"env.{name}"))
    return profile


def env_of(plan: Plan) -> dict[str, str | None]:
    return {change.name: change.value for change in plan.env}


def takes(plan: Plan) -> dict[str, str | None]:
    """Each variable's value as the library will run with it: what tcap sets,
    or, for a variable left alone, what the library picks itself."""
    return {change.name: change.value for change in (*plan.left_alone, *plan.env)}


def smt_machine(cores: int, **kwargs) -> Machine:
    """``cores`` cores with 2 threads each; cpuN and cpuN+cores are siblings."""
    layout = {cpu: (0, cpu % cores) for cpu in range(2 * cores)}
    return Machine(frozenset(layout), cores=layout, **kwargs)


EIGHT = Machine(frozenset(range(8)))


# --- defaults -----------------------------------------------------------------

def test_defaults_cap_every_pool_at_the_usable_cpus_and_set_nothing_here():
    plan = resolve(make_profile(), EIGHT, Overrides())
    # Every library already picks at most 8 on 8 CPUs: tcap leaves them alone
    # (tests/test_left_alone.py has the rule) and the probe checks the caps.
    assert plan.env == ()
    assert [c.name for c in plan.left_alone] == ALL_VARS
    assert plan.cpus == 8
    assert plan.pin is None
    assert plan.cpu_set == tuple(range(8))
    assert plan.workers is None
    assert plan.verify == "warn"
    assert plan.profile == "test" and plan.profile_path == PATH
    assert set(plan.caps.values()) == {8}
    assert {"threads", "blas", "openmp", "openblas", "mkl", "numba"} <= set(plan.caps)
    assert plan.notes == ()


def test_defaults_without_affinity_mask():
    plan = resolve(make_profile(), Machine(None, online=6), Overrides())
    assert plan.cpus == 6
    assert plan.cpu_set is None and plan.pin is None
    assert plan.caps["openmp"] == 6
    assert takes(plan)["OMP_NUM_THREADS"] == "6"


@pytest.mark.parametrize(("cpus", "workers", "threads"), [(8, 4, 2), (8, 3, 2), (8, 8, 1), (8, 16, 1), (12, 5, 2)])
def test_workers_divide_the_cpus(cpus, workers, threads):
    plan = resolve(make_profile({"workers": workers}), Machine(frozenset(range(cpus))), Overrides())
    env = env_of(plan)
    assert plan.workers == workers
    assert env["LOKY_MAX_CPU_COUNT"] == str(workers)
    for name in THREAD_VARS:
        # BLIS is single-threaded by itself: never raised to the split.
        assert takes(plan)[name] == ("1" if name == "BLIS_NUM_THREADS" else str(threads)), name


def test_workers_expression():
    plan = resolve(make_profile({"workers": "cpus / 2"}), EIGHT, Overrides())
    assert plan.workers == 4
    assert env_of(plan)["OMP_NUM_THREADS"] == "2"
    assert env_of(plan)["LOKY_MAX_CPU_COUNT"] == "4"


def test_explicit_keys_beat_the_workers_default():
    plan = resolve(make_profile({"workers": 4, "blas": 1}), EIGHT, Overrides())
    env = env_of(plan)
    assert env["OPENBLAS_NUM_THREADS"] == "1"
    assert env["OMP_NUM_THREADS"] == "2"


def test_one_cpu_quota_floors_at_one():
    machine = Machine(frozenset(range(8)), quota=0.5, quota_source="/sys/fs/cgroup/x")
    profile = make_profile({"threads": "cpus / 2", "workers": 4})
    plan = resolve(profile, machine, Overrides())
    assert plan.cpus == 1
    env = env_of(plan)
    assert all(env[name] == "1" for name in THREAD_VARS)
    assert env["LOKY_MAX_CPU_COUNT"] == "4"


def test_one_cpu_quota_default_workers_division():
    machine = Machine(frozenset(range(8)), quota=1.0, quota_source="q")
    plan = resolve(make_profile({"workers": 4}), machine, Overrides())
    assert all(takes(plan)[name] == "1" for name in THREAD_VARS)


# --- precedence ---------------------------------------------------------------

def test_flag_beats_profile():
    plan = resolve(make_profile({"threads": 4, "verify": "strict", "workers": 2}), EIGHT,
                   Overrides(threads=3, verify="off", workers=1))
    env = env_of(plan)
    assert all(env[name] == "3" for name in THREAD_VARS)
    assert plan.verify == "off"
    assert plan.workers == 1
    assert env["LOKY_MAX_CPU_COUNT"] == "1"
    assert "flag --threads 3" in plan.why["threads"]


def test_threads_flag_replaces_narrower_profile_keys_with_a_note():
    profile = make_profile({"blas": 3, "openblas": 5, "numba": 6, "openmp": 7})
    plan = resolve(profile, EIGHT, Overrides(threads=2))
    env = env_of(plan)
    assert all(env[name] == "2" for name in THREAD_VARS), env
    assert plan.caps["blas"] == plan.caps["openblas"] == plan.caps["numba"] == 2
    joined = "\n".join(plan.notes)
    for key, line in (("blas", 1), ("openblas", 2), ("numba", 3), ("openmp", 4)):
        assert f"{PATH}:{line} {key}" in joined
    assert all("flag --threads 2" in note for note in plan.notes)
    assert len(plan.notes) == 4


def test_blas_flag_replaces_openblas_but_not_openmp():
    profile = make_profile({"openblas": 5, "mkl": 6, "openmp": 3, "numba": 4})
    plan = resolve(profile, EIGHT, Overrides(blas=2))
    env = env_of(plan)
    assert env["OPENBLAS_NUM_THREADS"] == "2"
    assert env["GOTO_NUM_THREADS"] == "2"
    assert env["MKL_NUM_THREADS"] == "2"
    assert env["BLIS_NUM_THREADS"] == "2"
    assert env["VECLIB_MAXIMUM_THREADS"] == "2"
    assert env["OMP_NUM_THREADS"] == "3"
    assert env["NUMBA_NUM_THREADS"] == "4"
    assert takes(plan)["POLARS_MAX_THREADS"] == "8"
    assert len(plan.notes) == 2


def test_threads_and_blas_flags_together():
    profile = make_profile({"openblas": 5, "openmp": 3})
    plan = resolve(profile, EIGHT, Overrides(threads=2, blas=1))
    env = env_of(plan)
    assert env["OPENBLAS_NUM_THREADS"] == "1"
    assert env["MKL_NUM_THREADS"] == "1"
    assert env["OMP_NUM_THREADS"] == "2"
    assert env["NUMBA_NUM_THREADS"] == "2"
    assert len(plan.notes) == 2
    assert all(note.startswith("flag --threads 2 replaces") for note in plan.notes)
    assert any(f"{PATH}:1 openblas" in note for note in plan.notes)
    assert any(f"{PATH}:2 openmp" in note for note in plan.notes)


def test_specific_profile_key_beats_general_profile_key():
    plan = resolve(make_profile({"threads": 2, "blas": 3, "mkl": 4}), EIGHT, Overrides())
    env = env_of(plan)
    assert env["MKL_NUM_THREADS"] == "4"
    assert env["OPENBLAS_NUM_THREADS"] == "3"
    assert env["OMP_NUM_THREADS"] == "2"
    assert takes(plan)["LOKY_MAX_CPU_COUNT"] == "8"


def test_env_table_and_set_flags_override_computed_variables():
    profile = make_profile(
        {"threads": 2}, env={"OMP_NUM_THREADS": "7", "EXTRA": "x", "NUMBA_NUM_THREADS": None, "KEEP": "k"}
    )
    overrides = Overrides(env=(("EXTRA", "y"), ("OPENBLAS_NUM_THREADS", "9"), ("NEW", "n")))
    plan = resolve(profile, EIGHT, overrides)
    env = env_of(plan)
    assert env["OMP_NUM_THREADS"] == "7"
    assert env["OPENBLAS_NUM_THREADS"] == "9"
    assert env["NUMBA_NUM_THREADS"] is None
    assert env["MKL_NUM_THREADS"] == "2"
    assert env["EXTRA"] == "y"
    assert env["KEEP"] == "k"
    assert env["NEW"] == "n"
    names = [c.name for c in plan.env]
    assert names[: len(VARIABLES) - 2] == [n for n in ALL_VARS if n not in ("LOKY_MAX_CPU_COUNT", "ARROW_IO_THREADS")]
    assert len(names) == len(set(names))
    why = {c.name: c.why for c in plan.env}
    assert "flag --set EXTRA=y" in why["EXTRA"]
    assert f"{PATH}:100 env.OMP_NUM_THREADS" in why["OMP_NUM_THREADS"]


# --- the CPU set --------------------------------------------------------------

def test_cpus_list_outside_allowed_set_fails_with_location():
    profile = make_profile({"threads": 1, "cpus": "0-3,9-10"})
    with pytest.raises(TcapError) as info:
        resolve(profile, EIGHT, Overrides())
    error = info.value
    assert error.path == PATH
    assert error.line == 2
    assert error.code == 2
    assert "9-10" in error.message and "0-7" in error.message


def test_cpus_flag_outside_allowed_set_has_no_path():
    with pytest.raises(TcapError) as info:
        resolve(make_profile(), EIGHT, Overrides(cpus="8"))
    assert info.value.path is None


def test_cpus_list_pins():
    plan = resolve(make_profile({"cpus": "2-3,5"}), EIGHT, Overrides())
    assert plan.pin == (2, 3, 5)
    assert plan.cpu_set == (2, 3, 5)
    assert plan.cpus == 3
    assert plan.caps["openmp"] == 3
    assert takes(plan)["OMP_NUM_THREADS"] == "3"  # libgomp counts the pinned CPUs itself


def test_cpus_equal_to_allowed_set_does_not_pin():
    plan = resolve(make_profile({"cpus": "0-7"}), EIGHT, Overrides())
    assert plan.pin is None
    assert plan.cpu_set == tuple(range(8))
    plan = resolve(make_profile({"cpus": "all"}), EIGHT, Overrides())
    assert plan.pin is None


def test_first_n():
    machine = Machine(frozenset({2, 4, 6, 8, 10}))
    plan = resolve(make_profile({"cpus": "first:3"}), machine, Overrides())
    assert plan.pin == (2, 4, 6)
    assert plan.cpus == 3
    plan = resolve(make_profile({"cpus": "first:5"}), machine, Overrides())
    assert plan.pin is None and plan.cpu_set == (2, 4, 6, 8, 10)
    with pytest.raises(TcapError) as info:
        resolve(make_profile({"cpus": "first:6"}), machine, Overrides())
    assert info.value.line == 1


def test_cpus_flag_beats_profile():
    plan = resolve(make_profile({"cpus": "0-3"}), EIGHT, Overrides(cpus="first:2"))
    assert plan.pin == (0, 1)


@pytest.mark.parametrize("flag", ["bogus", "first:0", "3-1"])
def test_bad_cpus_flag(flag):
    with pytest.raises(TcapError, match="--cpus"):
        resolve(make_profile(), EIGHT, Overrides(cpus=flag))


def test_cpus_without_affinity_mask_fails():
    with pytest.raises(TcapError):
        resolve(make_profile({"cpus": "0"}), Machine(None, online=4), Overrides())


def test_physical_picks_one_cpu_per_core_on_smt():
    machine = smt_machine(4)  # cpus 0-7; 0/4, 1/5, 2/6, 3/7 are siblings
    plan = resolve(make_profile({"cpus": "physical", "threads": "physical"}), machine, Overrides())
    assert plan.pin == (0, 1, 2, 3)
    assert plan.cpus == 4
    assert plan.physical == 4
    assert env_of(plan)["OMP_NUM_THREADS"] == "4"


def test_physical_with_interleaved_siblings():
    layout = {0: (0, 0), 1: (0, 0), 2: (0, 1), 3: (0, 1), 4: (1, 0), 5: (1, 0)}
    machine = Machine(frozenset(layout), cores=layout)
    plan = resolve(make_profile({"cpus": "physical"}), machine, Overrides())
    assert plan.pin == (0, 2, 4)


def test_physical_without_smt_does_not_pin():
    layout = {cpu: (0, cpu) for cpu in range(4)}
    plan = resolve(make_profile({"cpus": "physical"}), Machine(frozenset(layout), cores=layout), Overrides())
    assert plan.pin is None
    assert plan.cpu_set == (0, 1, 2, 3)


def test_physical_without_topology_notes_and_leaves_cpus():
    plan = resolve(make_profile({"cpus": "physical", "threads": "physical"}), EIGHT, Overrides())
    assert plan.pin is None
    assert plan.physical is None
    assert env_of(plan)["OMP_NUM_THREADS"] == "8"
    assert len(plan.notes) == 2


def test_expression_with_physical():
    machine = smt_machine(8)  # 16 CPUs, 8 cores
    plan = resolve(make_profile({"threads": "max(1, physical - 2)", "blas": "cpus / physical"}), machine, Overrides())
    env = env_of(plan)
    assert plan.physical == 8
    assert env["OMP_NUM_THREADS"] == "6"
    assert env["OPENBLAS_NUM_THREADS"] == "2"
    assert "physical=8" in plan.why["threads"]


def test_physical_never_exceeds_the_quota():
    machine = smt_machine(16, quota=4.0, quota_source="q")
    plan = resolve(make_profile({"cpus": "physical", "threads": "physical"}), machine, Overrides())
    assert plan.cpus == 4
    assert env_of(plan)["OMP_NUM_THREADS"] == "4"


def test_128_cpus_with_8_workers():
    machine = Machine(frozenset(range(128)))
    plan = resolve(make_profile(), machine, Overrides(workers=8))
    env = env_of(plan)
    # Libraries that pick fewer than 16 themselves keep their own choice.
    own = {"BLIS_NUM_THREADS": "1", "BLOSC_NTHREADS": "8"}
    assert all(takes(plan)[name] == own.get(name, "16") for name in THREAD_VARS)
    assert env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "16"
    assert env["LOKY_MAX_CPU_COUNT"] == "8"


def test_128_cpus_with_quota_4():
    machine = Machine(frozenset(range(128)), quota=4.0, quota_source="/sys/fs/cgroup/job")
    plan = resolve(make_profile({"threads": "cpus"}), machine, Overrides())
    assert plan.cpus == 4
    assert set(env_of(plan).values()) == {"4"}
    assert "/sys/fs/cgroup/job" in plan.cpus_why


def test_slurm_allocation_limits():
    machine = Machine(frozenset(range(64)), slurm=6, slurm_source="SLURM_CPUS_PER_TASK")
    plan = resolve(make_profile(), machine, Overrides(workers=3))
    assert env_of(plan)["OMP_NUM_THREADS"] == "2"


# --- errors and verify --------------------------------------------------------

def test_expression_error_carries_location():
    profile = make_profile({"blas": 1, "threads": "cpus / (cpus - cpus)"})
    with pytest.raises(TcapError) as info:
        resolve(profile, EIGHT, Overrides())
    assert info.value.path == PATH
    assert info.value.line == 2
    assert "threads" in info.value.message


@pytest.mark.parametrize("kwargs", [{"threads": 0}, {"blas": "foo"}, {"workers": "cpus +"}, {"openmp": -1}])
def test_bad_count_flags(kwargs):
    with pytest.raises(TcapError) as info:
        resolve(make_profile(), EIGHT, Overrides(**kwargs))
    assert info.value.message.startswith(f"--{next(iter(kwargs))}: ")
    assert info.value.path is None


def test_expression_flags():
    plan = resolve(make_profile(), EIGHT, Overrides(threads="cpus / 4"))
    assert env_of(plan)["OMP_NUM_THREADS"] == "2"


def test_verify_from_profile():
    assert resolve(make_profile({"verify": "strict"}), EIGHT, Overrides()).verify == "strict"


def test_uses_physical():
    assert uses_physical(make_profile({"threads": "physical"}), Overrides())
    assert uses_physical(make_profile({"cpus": "physical"}), Overrides())
    assert uses_physical(make_profile(), Overrides(blas="physical / 2"))
    assert not uses_physical(make_profile({"threads": "cpus", "blas": 1}), Overrides(cpus="0-3"))


# --- plan data ----------------------------------------------------------------

def _rich_plan() -> Plan:
    machine = smt_machine(4, quota=3.0, quota_source="q")
    profile = make_profile({"cpus": "physical", "threads": "physical", "blas": 5}, env={"GONE": None, "X": "1"})
    return resolve(profile, machine, Overrides(threads=2, env=(("Y", "2"),)))


def test_to_data_from_data_round_trip():
    plan = _rich_plan()
    assert plan.notes  # the flag replaced blas
    assert plan.pin == (0, 1, 2, 3)
    assert Plan.from_data(plan.to_data()) == plan


def test_round_trip_through_json():
    plan = _rich_plan()
    assert Plan.from_data(json.loads(json.dumps(plan.to_data()))) == plan


def test_round_trip_through_marshal():
    plan = _rich_plan()
    assert Plan.from_data(marshal.loads(marshal.dumps(plan.to_data()))) == plan


def test_round_trip_unpinned_without_mask():
    plan = resolve(make_profile(), Machine(None, online=2), Overrides())
    data = marshal.loads(marshal.dumps(plan.to_data()))
    assert Plan.from_data(json.loads(json.dumps(data))) == plan


# --- inherited environment ----------------------------------------------------

def test_inherited_overrides():
    profile = make_profile({"threads": 2}, env={"NUMBA_NUM_THREADS": None})
    plan = resolve(profile, EIGHT, Overrides())
    environ = {"OMP_NUM_THREADS": "64", "MKL_NUM_THREADS": "2", "NUMBA_NUM_THREADS": "4", "UNRELATED": "1"}
    assert inherited_overrides(plan, environ) == [
        ("OMP_NUM_THREADS", "64", "2"),
        ("NUMBA_NUM_THREADS", "4", None),
    ]
    assert inherited_overrides(plan, {}) == []


# --- through a real file ------------------------------------------------------

def test_resolve_from_file(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('description = "job"\nworkers = 4\n\ncpus = "0-3,12"\n')
    profile = load(str(path), {"HOME": str(tmp_path)})
    with pytest.raises(TcapError) as info:
        resolve(profile, EIGHT, Overrides())
    assert info.value.path == str(path)
    assert info.value.line == 4
    plan = resolve(profile, Machine(frozenset(range(16))), Overrides())
    assert plan.pin == (0, 1, 2, 3, 12)
    assert env_of(plan)["OMP_NUM_THREADS"] == "1"
    assert f"{path}:2 workers = 4" == plan.why["workers"]

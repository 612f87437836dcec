"""The rule behind the default: tcap sets a thread variable only when the
library, left alone, would go over its cap (or a profile or flag asks), and
keeps every pool that can call into an OpenBLAS within its build limit."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcap.machine import Machine
from tcap.plan import Limit, Overrides, Plan, resolve
from tcap.recipe import THREAD_VARIABLES
from tcap.variables import VARIABLES
from test_plan import EIGHT, make_profile, smt_machine

NUMPY_OPENBLAS = Limit("openblas", 64, "numpy's OpenBLAS 0.3.31")


def env_of(plan: Plan) -> dict[str, str | None]:
    return {change.name: change.value for change in plan.env}


def left_of(plan: Plan) -> dict[str, str]:
    return {change.name: change.why for change in plan.left_alone}


def test_the_launch_path_list_of_variables_matches_the_table():
    assert {v.name for v in VARIABLES} == THREAD_VARIABLES


def test_unconstrained_machine_sets_nothing():
    plan = resolve(make_profile(), EIGHT, Overrides())
    assert plan.env == ()
    assert set(left_of(plan)) == {v.name for v in VARIABLES}
    # The probe still verifies every pool against the usable CPUs.
    assert plan.caps["openmp"] == plan.caps["openblas"] == 8
    assert all(why.startswith("left alone") for why in left_of(plan).values())


def test_every_variable_is_either_set_or_left_alone_never_both():
    plan = resolve(make_profile({"blas": 1}), Machine(frozenset(range(8)), quota=2.0), Overrides())
    names = [c.name for c in plan.env] + [c.name for c in plan.left_alone]
    assert sorted(names) == sorted(v.name for v in VARIABLES)


def test_a_cgroup_quota_the_libraries_miscount_is_set():
    plan = resolve(make_profile(), Machine(frozenset(range(64)), quota=4.0, quota_source="/sys/fs/cgroup"), Overrides())
    env = env_of(plan)
    assert env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == env["NUMBA_NUM_THREADS"] == "4"
    assert "OpenMP alone would take 64" in next(c.why for c in plan.env if c.name == "OMP_NUM_THREADS")
    # rayon (Polars) and loky read the quota themselves: left alone.
    assert {"POLARS_MAX_THREADS", "RAYON_NUM_THREADS", "LOKY_MAX_CPU_COUNT"} <= set(left_of(plan))
    # BLIS is single-threaded on its own; OMP_NUM_THREADS=4 would raise it.
    assert env["BLIS_NUM_THREADS"] == "1"


def test_slurm_allocation_without_binding_is_set_for_loky_too():
    machine = Machine(frozenset(range(16)), slurm=4, slurm_source="SLURM_CPUS_PER_TASK")
    env = env_of(resolve(make_profile(), machine, Overrides()))
    assert env["OMP_NUM_THREADS"] == env["LOKY_MAX_CPU_COUNT"] == "4"


def test_pinning_shrinks_what_affinity_aware_libraries_pick_but_not_numexpr():
    machine = Machine(frozenset(range(8)), online=8)
    plan = resolve(make_profile({"cpus": "0-1"}), machine, Overrides())
    env = env_of(plan)
    assert "OMP_NUM_THREADS" in left_of(plan)  # libgomp counts the 2 pinned CPUs
    assert env["NUMEXPR_NUM_THREADS"] == env["NUMEXPR_MAX_THREADS"] == "2"  # numexpr counts all 8 online
    assert env["BLOSC_NTHREADS"] == "2"


def test_mkl_is_not_raised_to_the_logical_count_on_smt():
    plan = resolve(make_profile(), smt_machine(4), Overrides())
    assert "MKL_NUM_THREADS" in left_of(plan)
    assert "4 physical cores" in left_of(plan)["MKL_NUM_THREADS"]


@pytest.mark.parametrize("workers", [2, 4])
def test_a_workers_split_is_set(workers):
    env = env_of(resolve(make_profile({"workers": workers}), EIGHT, Overrides()))
    assert env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == str(8 // workers)
    assert env["LOKY_MAX_CPU_COUNT"] == str(workers)


def test_workers_one_leaves_the_pools_alone_but_holds_loky():
    plan = resolve(make_profile({"workers": 1}), EIGHT, Overrides())
    assert "OMP_NUM_THREADS" in left_of(plan)
    assert env_of(plan) == {"LOKY_MAX_CPU_COUNT": "1"}


def test_an_explicit_key_is_set_even_when_it_equals_the_default():
    plan = resolve(make_profile({"openmp": "cpus"}), EIGHT, Overrides())
    # BLIS, single-threaded by itself, would follow OMP_NUM_THREADS: held at 1.
    assert env_of(plan) == {"OMP_NUM_THREADS": "8", "BLIS_NUM_THREADS": "1"}


def test_a_flag_is_set():
    env = env_of(resolve(make_profile(), EIGHT, Overrides(threads=8)))
    assert env["OMP_NUM_THREADS"] == env["NUMBA_NUM_THREADS"] == "8"


def test_inherited_value_within_the_cap_is_kept():
    plan = resolve(make_profile(), EIGHT, Overrides(), inherited={"OMP_NUM_THREADS": "1"})
    assert "OMP_NUM_THREADS" in left_of(plan)
    assert "inherited" not in left_of(plan)["OMP_NUM_THREADS"] or "1" in left_of(plan)["OMP_NUM_THREADS"]
    # OpenBLAS and numexpr fall back to it: their own choice is 1 too.
    assert "OMP_NUM_THREADS=1" in left_of(plan)["OPENBLAS_NUM_THREADS"]


def test_inherited_value_over_the_cap_is_lowered():
    plan = resolve(make_profile(), EIGHT, Overrides(), inherited={"OMP_NUM_THREADS": "64"})
    env = env_of(plan)
    assert env["OMP_NUM_THREADS"] == "8"
    # OpenBLAS would follow the inherited 64 but never past its 8 CPUs.
    assert "OPENBLAS_NUM_THREADS" in left_of(plan)


@pytest.mark.parametrize("garbage", ["abc", "0", "-3", "4x"])
def test_inherited_garbage_is_replaced_by_the_cap(garbage):
    plan = resolve(make_profile(), EIGHT, Overrides(), inherited={"NUMBA_NUM_THREADS": garbage})
    assert env_of(plan)["NUMBA_NUM_THREADS"] == "8"
    assert "is not a thread count" in next(c.why for c in plan.env if c.name == "NUMBA_NUM_THREADS")


def test_openmp_list_value_is_read_by_its_first_level():
    plan = resolve(make_profile(), EIGHT, Overrides(), inherited={"OMP_NUM_THREADS": "16,2"})
    assert env_of(plan)["OMP_NUM_THREADS"] == "8"
    plan = resolve(make_profile(), EIGHT, Overrides(), inherited={"OMP_NUM_THREADS": "4,2"})
    assert "OMP_NUM_THREADS" in left_of(plan)


def test_a_fallback_tcap_sets_does_not_silently_lower_another_library():
    # openmp = 1 asked for; OpenBLAS would follow OMP_NUM_THREADS down to 1.
    plan = resolve(make_profile({"openmp": 1}), EIGHT, Overrides())
    env = env_of(plan)
    assert env["OMP_NUM_THREADS"] == "1"
    assert env["OPENBLAS_NUM_THREADS"] == "8"
    assert "does not change it" in next(c.why for c in plan.env if c.name == "OPENBLAS_NUM_THREADS")


def test_kmeans_profile_shape():
    from tcap.profiles import load

    profile = load("kmeans", {})
    plan = resolve(profile, EIGHT, Overrides())
    env = env_of(plan)
    assert "OMP_NUM_THREADS" in left_of(plan)  # all 8 CPUs to OpenMP, the runtime's own choice
    assert env["OPENBLAS_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1"
    pooled = env_of(resolve(profile, EIGHT, Overrides(workers=4)))
    assert pooled["OMP_NUM_THREADS"] == "2" and pooled["OPENBLAS_NUM_THREADS"] == "1"


# --- build limits -------------------------------------------------------------

def test_openblas_limit_lowers_openmp_on_a_128_cpu_machine():
    machine = Machine(frozenset(range(128)))
    plan = resolve(make_profile({"blas": 1}), machine, Overrides(), limits=[NUMPY_OPENBLAS])
    change = next(c for c in plan.env if c.name == "OMP_NUM_THREADS")
    assert change.value == "64"
    assert "numpy's OpenBLAS 0.3.31 is built for at most 64 threads" in change.why
    assert plan.caps["openmp"] == 64


def test_openblas_limit_applies_to_explicit_values_with_a_note():
    machine = Machine(frozenset(range(128)))
    plan = resolve(make_profile(), machine, Overrides(openmp=100), limits=[NUMPY_OPENBLAS])
    assert env_of(plan)["OMP_NUM_THREADS"] == "64"
    assert any("lowered to 64" in note for note in plan.notes)


def test_openblas_limit_applies_to_env_and_set_values_too():
    machine = Machine(frozenset(range(128)))
    profile = make_profile(env={"OMP_NUM_THREADS": "128,2"})
    plan = resolve(profile, machine, Overrides(env=(("OPENBLAS_NUM_THREADS", "100"),)), limits=[NUMPY_OPENBLAS])
    assert env_of(plan)["OMP_NUM_THREADS"] == "64,2"
    assert env_of(plan)["OPENBLAS_NUM_THREADS"] == "64"
    assert sum("lowered to" in note for note in plan.notes) == 2


def test_openblas_limit_leaves_openblas_alone_when_it_clamps_itself():
    machine = Machine(frozenset(range(128)))
    plan = resolve(make_profile(), machine, Overrides(), limits=[NUMPY_OPENBLAS])
    assert "OPENBLAS_NUM_THREADS" in left_of(plan)
    assert "OpenBLAS takes 64" in left_of(plan)["OPENBLAS_NUM_THREADS"]


def test_openblas_limit_changes_nothing_below_it():
    plan = resolve(make_profile(), EIGHT, Overrides(), limits=[NUMPY_OPENBLAS])
    assert plan.env == ()


def test_smallest_openblas_limit_wins():
    machine = Machine(frozenset(range(128)))
    limits = [NUMPY_OPENBLAS, Limit("openblas", 32, "scipy's OpenBLAS 0.3.30")]
    plan = resolve(make_profile(), machine, Overrides(), limits=limits)
    assert env_of(plan)["OMP_NUM_THREADS"] == "32"


@given(
    cpus=st.integers(1, 256),
    quota=st.one_of(st.none(), st.floats(0.5, 300)),
    inherited=st.dictionaries(st.sampled_from(sorted(THREAD_VARIABLES)), st.sampled_from(["1", "3", "999", "x", ""])),
    limit=st.one_of(st.none(), st.integers(1, 128)),
    workers=st.one_of(st.none(), st.integers(1, 8)),
)
def test_no_library_ends_over_its_cap_nor_above_its_own_choice(cpus, quota, inherited, limit, workers):
    """Whatever the machine and environment: each library, reading the final
    environment, stays within its cap; and a library tcap leaves alone is at
    what it would pick without tcap."""
    from tcap.plan import _OwnChoice

    machine = Machine(frozenset(range(cpus)), quota=quota, online=cpus)
    settings = {} if workers is None else {"workers": workers}
    limits = [] if limit is None else [Limit("openblas", limit, "OpenBLAS")]
    plan = resolve(make_profile(settings), machine, Overrides(), inherited=inherited, limits=limits)
    final = {k: v for k, v in inherited.items()}
    final.update({c.name: c.value for c in plan.env if c.value is not None})
    own = _OwnChoice(cpus, machine, None, limits[0] if limits else None)
    for variable in VARIABLES:
        if variable.own.startswith("follows:") or variable.basis == "workers" or not variable.by_threads:
            continue  # (a pool only its own key sizes has no cap here)
        takes, _ = own.reads(variable, final)
        assert takes is not None and takes <= plan.caps[variable.library], (variable.name, takes, plan.caps)
        if variable.name in left_of(plan):
            assert takes == own.reads(variable, inherited)[0]

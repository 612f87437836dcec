"""Invariants of the thread-variable table (tcap.variables)."""

from __future__ import annotations

import re

import pytest

from tcap.variables import APIS, CAP_KEYS, LIBRARIES, VARIABLES, Variable, by_name, keys_for

NAMES = [v.name for v in VARIABLES]


def test_names_are_unique():
    assert len(NAMES) == len(set(NAMES))


def test_cap_keys_have_no_duplicates():
    assert len(CAP_KEYS) == len(set(CAP_KEYS))


@pytest.mark.parametrize("variable", VARIABLES, ids=NAMES)
def test_name_is_an_environment_variable(variable: Variable):
    assert re.fullmatch(r"[A-Z][A-Z0-9_]*", variable.name)


@pytest.mark.parametrize("variable", VARIABLES, ids=NAMES)
def test_api_is_known(variable: Variable):
    assert variable.api is None or variable.api in APIS


@pytest.mark.parametrize("variable", VARIABLES, ids=NAMES)
def test_basis_is_known(variable: Variable):
    assert variable.basis in ("threads", "workers")


@pytest.mark.parametrize("variable", VARIABLES, ids=NAMES)
def test_fallbacks_and_wins_over_name_table_rows(variable: Variable):
    for other in (*variable.fallbacks, *variable.wins_over):
        assert other in NAMES
        assert other != variable.name


@pytest.mark.parametrize("variable", VARIABLES, ids=NAMES)
def test_keys_for_goes_library_then_api_then_threads(variable: Variable):
    keys = keys_for(variable)
    assert keys[0] == variable.library
    if not variable.by_threads:
        # A pool whose threads wait (Arrow's I/O pool): its own key alone.
        assert keys == (variable.library,) and variable.library in CAP_KEYS
        return
    assert keys[-1] == "threads"
    if variable.api is not None and variable.api != variable.library:
        assert keys == (variable.library, variable.api, "threads")
    else:
        assert keys == (variable.library, "threads")
    # Every key sizing a thread cap is a key a profile may use; variables
    # sized from workers have no key of their own.
    if variable.basis == "threads":
        assert all(k in CAP_KEYS for k in keys)
    else:
        assert variable.library not in CAP_KEYS


@pytest.mark.parametrize("variable", VARIABLES, ids=NAMES)
def test_by_name_finds_the_row(variable: Variable):
    assert by_name(variable.name) is variable


def test_by_name_unknown_is_none():
    assert by_name("NOT_A_THREAD_VARIABLE") is None
    assert by_name("omp_num_threads") is None


def test_cap_keys_derived_from_table():
    expected_libraries = []
    for variable in VARIABLES:
        if variable.basis != "threads":
            continue
        if variable.library not in APIS and variable.library not in expected_libraries:
            expected_libraries.append(variable.library)
    assert tuple(expected_libraries) == LIBRARIES
    assert ("threads", "blas", "openmp", *expected_libraries) == CAP_KEYS
    # Every thread-cap library of the table is reachable from CAP_KEYS.
    assert {v.library for v in VARIABLES if v.basis == "threads"} <= set(CAP_KEYS)
    assert "loky" not in CAP_KEYS


def test_specific_keys_for():
    assert keys_for(by_name("OPENBLAS_NUM_THREADS")) == ("openblas", "blas", "threads")
    assert keys_for(by_name("MKL_NUM_THREADS")) == ("mkl", "blas", "threads")
    assert keys_for(by_name("OMP_NUM_THREADS")) == ("openmp", "threads")
    assert keys_for(by_name("NUMBA_NUM_THREADS")) == ("numba", "threads")


def test_openblas_falls_back_to_goto_then_omp():
    assert by_name("OPENBLAS_NUM_THREADS").fallbacks == ("GOTO_NUM_THREADS", "OMP_NUM_THREADS")


def test_mkl_wins_over_omp():
    mkl = by_name("MKL_NUM_THREADS")
    assert "OMP_NUM_THREADS" in mkl.wins_over
    assert "OMP_NUM_THREADS" in mkl.fallbacks


def test_clamps_to_affinity_facts():
    assert by_name("OPENBLAS_NUM_THREADS").clamps_to_affinity is True
    assert by_name("OMP_NUM_THREADS").clamps_to_affinity is False


def test_only_arrow_io_is_sized_by_its_own_key_alone():
    assert [v.name for v in VARIABLES if not v.by_threads] == ["ARROW_IO_THREADS"]
    assert by_name("ARROW_IO_THREADS").own == "fixed" and by_name("ARROW_IO_THREADS").own_limit == 8


def test_loky_is_sized_by_workers_and_the_rest_by_threads():
    assert by_name("LOKY_MAX_CPU_COUNT").basis == "workers"
    assert [v.name for v in VARIABLES if v.basis == "workers"] == ["LOKY_MAX_CPU_COUNT"]


def test_blas_api_groups_the_blas_libraries():
    blas = {v.name for v in VARIABLES if v.api == "blas"}
    assert {"OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "MKL_NUM_THREADS",
            "VECLIB_MAXIMUM_THREADS", "BLIS_NUM_THREADS"} == blas
    assert {v.name for v in VARIABLES if v.api == "openmp"} == {"OMP_NUM_THREADS"}


def test_variables_are_frozen():
    with pytest.raises(AttributeError):
        VARIABLES[0].name = "X"  # type: ignore[misc]

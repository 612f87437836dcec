"""tcap's default must not take away the division of threads that joblib
and Dask do for their own workers: real joblib (loky), joblib's own test
suite, and a real Dask LocalCluster, each with and without `tcap run`."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import PYTHON, Isolated

JOBLIB_WORKERS = """
import json, os
from joblib import Parallel, delayed

def pools():
    import numpy
    from threadpoolctl import threadpool_info
    return {
        "openblas": sorted(p["num_threads"] for p in threadpool_info() if p["internal_api"] == "openblas"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
    }

seen = Parallel(n_jobs=2)(delayed(pools)() for _ in range(4))
print(json.dumps(sorted(seen, key=json.dumps)))
"""

DASK_WORKERS = """
import json
from distributed import Client, LocalCluster

def pools():
    import time
    import numpy
    from threadpoolctl import threadpool_info
    time.sleep(0.6)  # the probe's first check comes 0.25 s after the first numeric import: before the cluster closes
    return sorted(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")

if __name__ == "__main__":
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            print(json.dumps(sorted(client.run(pools).values())))
"""

needs_two = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="joblib divides only 2+ CPUs")


def run_both(iso: Isolated, code: str, *flags: str) -> tuple[object, object, str]:
    """(what the program printed without tcap, under `tcap run FLAGS`, tcap's stderr)."""
    script = iso.work / "prog.py"
    script.write_text(code)
    bare = subprocess.run([PYTHON, str(script)], env=iso.env, cwd=iso.work, capture_output=True, text=True,
                          timeout=300, check=False)
    assert bare.returncode == 0, bare.stderr
    under = iso.run("run", *flags, "--", PYTHON, str(script), timeout=300)
    assert under.returncode == 0, under.stderr
    return json.loads(bare.stdout), json.loads(under.stdout), under.stderr


@needs_two
def test_joblib_divides_the_cpus_under_the_default_as_without_tcap(iso: Isolated):
    bare, under, stderr = run_both(iso, JOBLIB_WORKERS, "-p", "default")
    assert under == bare
    cpus = len(os.sched_getaffinity(0))
    for worker in under:  # joblib's own division: cpu_count() // n_jobs
        assert worker["OMP_NUM_THREADS"] == worker["OPENBLAS_NUM_THREADS"] == str(max(1, cpus // 2))
        assert worker["openblas"] and set(worker["openblas"]) == {max(1, cpus // 2)}
    assert "tcap: warning" not in stderr  # and the probe in every worker finds the pools within caps


@needs_two
def test_joblib_gets_tcaps_values_when_tcap_must_set_them(iso: Isolated):
    # A split asked for is set, and joblib passes it through: the documented trade-off.
    _, under, _ = run_both(iso, JOBLIB_WORKERS, "-p", "serial")
    assert all(worker["OMP_NUM_THREADS"] == "1" for worker in under)


@needs_two
def test_joblib_own_threadpool_limitation_tests_pass_under_the_default(iso: Isolated):
    """joblib's test_threadpool_limitation_in_child_{loky,context}: they fail
    when the parent sets the thread variables, as tcap's old default did."""
    args = ["-m", "pytest", "--pyargs", "joblib.test.test_parallel", "-k", "threadpool_limitation", "-q",
            "-p", "no:cacheprovider"]
    result = iso.run("run", "-p", "default", "--", PYTHON, *args, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary, summary


@needs_two
def test_dask_workers_get_the_same_threads_with_and_without_tcap(iso: Isolated):
    pytest.importorskip("distributed")
    bare, under, stderr = run_both(iso, DASK_WORKERS, "-p", "default")
    assert under == bare
    # The nanny's one BLAS thread per worker (measured [2], [2] under the old default).
    assert len(under) == 2 and all(pools and set(pools) == {1} for pools in under)
    assert "tcap: warning" not in stderr


@needs_two
def test_dask_local_cluster_under_report_lists_every_worker_with_its_pools(iso: Isolated):
    """Every worker process Dask's nanny spawns is probed: its pools (one
    BLAS thread each, the nanny's own setting) are within the caps, and the
    verdict says so."""
    pytest.importorskip("distributed")
    (iso.work / "prog.py").write_text(DASK_WORKERS)
    out = iso.work / "report.json"
    result = iso.run("run", "--report-json", str(out), "--", PYTHON, "prog.py", timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [[1], [1]]
    data = json.loads(out.read_text())
    workers = [p for p in data["processes"] if any(pool["name"] == "openblas" for pool in p["pools"])
               and p["pid"] != data["processes"][0]["pid"]]
    assert len(workers) == 2, [(p["command"], p["pools"]) for p in data["processes"]]
    assert all(pool["threads"] == 1 and pool["cap"] == 2 for p in workers for pool in p["pools"]
               if pool["name"] == "openblas")
    assert data["verdict"].startswith("all pools within caps"), data["verdict"]
    assert not data["budget"]["violated"]

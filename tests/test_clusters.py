"""tcap under real launchers: Open MPI's mpirun and a real single-node Slurm
cluster (slurmctld, slurmd, munged started by the fixture below, stopped
afterwards also when a test fails). Each rank prints what it got: its
thread variables, its CPUs, and what its OpenBLAS pool really runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import PYTHON, TCAP, Isolated
from engines import MPIRUN, SlurmCluster, mpirun_missing, slurm_missing
from tcap.supervise import SAMPLES_ENCODING

#: One line per rank: local rank, OMP_NUM_THREADS, OPENBLAS_NUM_THREADS,
#: the affinity, and the OpenBLAS pool size numpy's OpenBLAS reports.
RANK = """
import os, json, numpy, threadpoolctl
local = next((os.environ[v] for v in ("OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID") if v in os.environ), "-")
blas = [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["internal_api"] == "openblas"]
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "ranks", f"{os.getpid()}.json"), "w") as f:
    json.dump([int(local), os.environ.get("OMP_NUM_THREADS"), os.environ.get("OPENBLAS_NUM_THREADS"),
               sorted(os.sched_getaffinity(0)), blas[0]], f)
"""
#: The launchers forward the ranks' output interleaved: each rank writes a file.
OUT: dict[str, Path] = {}


def ranks_of(_stdout: str = "") -> list[list]:
    """What each rank wrote (and forget it, for the next launch)."""
    found = []
    for path in sorted(OUT["dir"].glob("*.json")):
        found.append(json.loads(path.read_text()))
        path.unlink()
    return sorted(found)


@pytest.fixture
def rank_program(iso: Isolated) -> Path:
    path = iso.work / "rank.py"
    path.write_text(RANK)
    OUT["dir"] = iso.work / "ranks"
    OUT["dir"].mkdir()
    return path


def mpirun(iso: Isolated, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    reason = mpirun_missing()
    if reason:
        pytest.skip(reason)
    return subprocess.run([*MPIRUN, *args], env=iso.env, capture_output=True, text=True, timeout=timeout,
                          cwd=iso.work)


def test_mpirun_without_tcap_bind_to_none_gives_every_rank_every_cpu(iso: Isolated, rank_program: Path):
    """The problem, measured: unbound ranks each take all the CPUs."""
    out = mpirun(iso, "--bind-to", "none", "-n", "2", PYTHON, str(rank_program))
    assert out.returncode == 0, out.stderr
    cpus = len(os.sched_getaffinity(0))
    assert [rank[4] for rank in ranks_of(out.stdout)] == [cpus, cpus]


def test_mpirun_default_binding_is_kept_and_capped(iso: Isolated, rank_program: Path):
    out = mpirun(iso, "-n", "2", str(TCAP), "run", "--", PYTHON, str(rank_program))
    assert out.returncode == 0, out.stderr
    ranks = ranks_of(out.stdout)
    assert [r[3] for r in ranks] == [[0], [1]]  # Open MPI bound each rank to a core; tcap kept it
    assert [r[4] for r in ranks] == [1, 1]


def test_mpirun_bind_to_none_each_rank_gets_its_share(iso: Isolated, rank_program: Path):
    out = mpirun(iso, "--bind-to", "none", "-n", "2", str(TCAP), "run", "--", PYTHON, str(rank_program))
    assert out.returncode == 0, out.stderr
    ranks = ranks_of(out.stdout)
    assert [(r[1], r[2], r[4]) for r in ranks] == [("1", "1", 1), ("1", "1", 1)], ranks
    assert [r[3] for r in ranks] == [[0, 1], [0, 1]]  # not pinned: only capped


def test_mpirun_bind_to_none_with_cpus_rank_pins_disjoint_cpus(iso: Isolated, rank_program: Path):
    out = mpirun(iso, "--bind-to", "none", "-n", "2", str(TCAP), "run", "--cpus", "rank", "--", PYTHON,
                 str(rank_program))
    assert out.returncode == 0, out.stderr
    ranks = ranks_of(out.stdout)
    assert [r[3] for r in ranks] == [[0], [1]] and [r[4] for r in ranks] == [1, 1], ranks


def test_mpirun_three_ranks_on_two_cpus_share_them(iso: Isolated, rank_program: Path):
    out = mpirun(iso, "--bind-to", "none", "-n", "3", str(TCAP), "run", "--", PYTHON, str(rank_program))
    assert out.returncode == 0, out.stderr
    assert [r[4] for r in ranks_of(out.stdout)] == [1, 1, 1]


def test_show_under_mpirun_names_the_rank(iso: Isolated):
    out = mpirun(iso, "--bind-to", "none", "-n", "2", str(TCAP), "show")
    assert out.returncode == 0, out.stderr
    found = sorted(re.findall(r"^ranks     rank (\d) of 2 on this node, from Open MPI; Open MPI did not bind the "
                              r"ranks to CPUs$", out.stdout, re.M))
    assert found == ["0", "1"], out.stdout


def test_probe_warnings_name_the_rank_and_reports_merge(iso: Isolated):
    code = "import numpy, threadpoolctl, time\nthreadpoolctl.threadpool_limits(2)\ntime.sleep(0.6)\n"
    (iso.work / "raise.py").write_text(code)
    out = mpirun(iso, "--bind-to", "none", "-n", "2", str(TCAP), "run", "--cpus", "rank", "--report-json",
                 "r-{rank}-{host}.json", "--", PYTHON, "raise.py")
    assert out.returncode == 0, out.stderr
    assert len(re.findall(r"tcap: warning: pid \d+ \(.*\) \[rank [01]/2 on \S+\]: openblas \(blas\) has 2 threads, "
                          r"cap 1", out.stderr)) == 2, out.stderr
    files = sorted(str(p) for p in iso.work.glob("r-*.json"))
    assert len(files) == 2 and re.search(r"r-0-\S+\.json$", files[0])
    assert all(json.loads(Path(f).read_text())["launch"]["budget_samples"]["encoding"] == SAMPLES_ENCODING
               for f in files)
    merged = iso.run("report", "--json", "merged.json", *files, cwd=iso.work)
    assert merged.returncode == 1, merged.stderr
    assert re.search(r"^verdict: 2 reports from 1 node: 2 processes, 2 verified, 0 unverified, 2 violations",
                     merged.stdout, re.M), merged.stdout
    data = json.loads((iso.work / "merged.json").read_text())
    assert {p["rank"].split(" on ")[0] for p in data["nodes"][0]["processes"]} == {"rank 0/2", "rank 1/2"}


# A real Slurm cluster, once for the module.


@pytest.fixture(scope="module")
def cluster() -> Iterator[SlurmCluster]:
    reason = slurm_missing()
    if reason:
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="tcap-slurm-"))
    slurm = SlurmCluster(root)
    try:
        slurm.start()
        yield slurm
    finally:
        slurm.stop()
        shutil.rmtree(root, ignore_errors=True)


def srun(cluster: SlurmCluster, iso: Isolated, *args: str) -> subprocess.CompletedProcess[str]:
    return cluster.run(["srun", *args], env=iso.env, cwd=iso.work)


def test_srun_bound_tasks_keep_their_cpus(cluster: SlurmCluster, iso: Isolated, rank_program: Path):
    out = srun(cluster, iso, "-n", "2", str(TCAP), "run", "--", PYTHON, str(rank_program))
    assert out.returncode == 0, out.stderr
    ranks = ranks_of(out.stdout)
    assert [r[3] for r in ranks] == [[0], [1]] and [r[4] for r in ranks] == [1, 1], ranks


def test_srun_unbound_tasks_each_get_a_share(cluster: SlurmCluster, iso: Isolated, rank_program: Path):
    out = srun(cluster, iso, "-n", "2", "--cpu-bind=none", str(TCAP), "run", "--", PYTHON, str(rank_program))
    assert out.returncode == 0, out.stderr
    ranks = ranks_of(out.stdout)
    assert [(r[3], r[4]) for r in ranks] == [([0, 1], 1), ([0, 1], 1)], ranks
    pinned = srun(cluster, iso, "-n", "2", "--cpu-bind=none", str(TCAP), "run", "--cpus", "rank", "--", PYTHON,
                  str(rank_program))
    assert pinned.returncode == 0, pinned.stderr
    assert [r[3] for r in ranks_of(pinned.stdout)] == [[0], [1]]


def test_srun_one_task_with_two_cpus_uses_both(cluster: SlurmCluster, iso: Isolated, rank_program: Path):
    out = srun(cluster, iso, "-n", "1", "-c", "2", str(TCAP), "run", "--", PYTHON, str(rank_program))
    assert out.returncode == 0, out.stderr
    [rank] = ranks_of(out.stdout)
    assert rank[3] == [0, 1] and rank[4] == 2, rank


def test_sbatch_script_returns_the_jobs_exit_code_and_reports_merge(cluster: SlurmCluster, iso: Isolated):
    (iso.work / "prog.py").write_text("import numpy, sys, time; time.sleep(0.6); sys.exit(3)\n")
    script = iso.work / "job.sh"
    script.write_text(f"#!/bin/sh\nsrun --cpu-bind=none {TCAP} run --report-json {iso.work}/job-{{rank}}.json -- "
                      f"{PYTHON} {iso.work}/prog.py\n")
    out = cluster.run(["sbatch", "--wait", "-n", "2", "-o", str(iso.work / "job.out"), str(script)], env=iso.env,
                      cwd=iso.work, timeout=120)
    assert out.returncode == 3, (out.stdout, out.stderr, (iso.work / "job.out").read_text())
    files = sorted(str(p) for p in iso.work.glob("job-*.json"))
    assert [Path(f).name for f in files] == ["job-0.json", "job-1.json"]
    merged = iso.run("report", *files)
    assert merged.returncode == 0, merged.stderr
    assert re.search(r"^verdict: 2 reports from 1 node: all pools within caps \(2 processes", merged.stdout,
                     re.M), merged.stdout
    assert all(json.loads(Path(f).read_text())["launch"]["launcher"] == "Slurm" for f in files)


def test_mpirun_through_a_shell_still_sees_the_launchers_cpus(iso: Isolated):
    """A shell between mpirun and tcap inherits the rank's binding; tcap looks
    past it to the launcher (orted/prted) for what the ranks share."""
    out = mpirun(iso, "-n", "2", "sh", "-c", f"{TCAP} show")
    assert out.returncode == 0, out.stderr
    assert len(re.findall(r"this rank has 1 CPU of its own \(2 ranks x 1 <= the node's 2\)", out.stdout)) == 2, \
        out.stdout

"""Ranks of a launcher, read from its environment, and the plan of a rank
that shares its node: machines beyond this one are data (Machine facts),
the launchers' variables are the ones each launcher sets (checked against
the real srun and mpirun in test_clusters.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import PYTHON, Isolated
from tcap.errors import TcapError
from tcap.machine import Machine
from tcap.plan import Overrides, resolve
from tcap.ranks import Ranks, block, read_ranks, share, slurm_masks, tasks_per_node
from test_plan import make_profile

OMPI = {"OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1",
        "OMPI_COMM_WORLD_SIZE": "2"}


def slurm(local: int, per_node: str = "2", node: int = 0, bind: str | None = None) -> dict[str, str]:
    env = {"SLURM_JOB_ID": "7", "SLURM_LOCALID": str(local), "SLURM_PROCID": str(local), "SLURM_NTASKS": "2",
           "SLURM_TASKS_PER_NODE": per_node, "SLURM_NODEID": str(node), "SLURMD_NODENAME": "node07"}
    if bind is not None:
        env["SLURM_CPU_BIND"] = bind
    return env


@pytest.mark.parametrize(("text", "node", "count"), [
    ("2", 0, 2), ("2(x3),1", 0, 2), ("2(x3),1", 2, 2), ("2(x3),1", 3, 1), ("2(x3),1", 4, None),
    ("4,2(x2)", 2, 2), ("", 0, None), ("x", 0, None), ("2(x3", 0, None), ("2(x0)", 0, None), ("0", 0, None),
    ("99999999999(x2)", 0, None),
])
def test_slurm_tasks_per_node(text: str, node: int, count: int | None):
    assert tasks_per_node(text, node) == count


def test_slurm_cpu_bind_masks():
    assert slurm_masks("quiet,mask_cpu:0x1,0x2", 2) == (frozenset({0}), frozenset({1}))
    assert slurm_masks("quiet,mask_cpu:0x3", 1) == (frozenset({0, 1}),)
    assert slurm_masks("map_cpu:4,5", 2) == (frozenset({4}), frozenset({5}))
    assert slurm_masks("quiet,none", 2) == ()
    assert slurm_masks("quiet,mask_cpu:0x1", 2) is None  # shorter than the tasks: not guessed
    assert slurm_masks("mask_cpu:0xZZ,0x1", 2) is None
    assert slurm_masks("mask_cpu:0x" + "f" * 100000, 1) is None  # bounded before it is expanded
    assert slurm_masks("verbose", 2) is None


def test_each_launcher_is_read():
    ompi = read_ranks(OMPI, "h")
    assert ompi is not None and (ompi.launcher, ompi.local_rank, ompi.local_size) == ("Open MPI", 1, 2)
    assert ompi.text() == "rank 1 of 2 on this node, from Open MPI" and ompi.label() == "rank 1/2 on h"
    mpich = read_ranks({"MPI_LOCALRANKID": "0", "MPI_LOCALNRANKS": "4", "PMI_RANK": "8", "PMI_SIZE": "16"})
    assert mpich is not None
    assert (mpich.launcher, mpich.local_size, mpich.label()) == ("MPICH/Intel MPI", 4, "rank 8/16")
    torch = read_ranks({"LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "3", "RANK": "2", "WORLD_SIZE": "3"})
    assert torch is not None and (torch.launcher, torch.local_rank) == ("torchrun", 2)
    job = read_ranks(slurm(1, "2(x3),1", node=1, bind="quiet,mask_cpu:0x1,0x2"))
    assert job is not None and (job.launcher, job.local_size, job.node) == ("Slurm", 2, "node07")
    assert job.masks == (frozenset({0}), frozenset({1}))


def test_a_single_rank_or_no_launcher_is_alone():
    assert read_ranks({}) is None
    assert read_ranks(slurm(0, "1")) is None
    assert read_ranks({"LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}) is None


@pytest.mark.parametrize("env", [
    {"OMPI_COMM_WORLD_LOCAL_RANK": "x", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"},
    {"OMPI_COMM_WORLD_LOCAL_RANK": "2", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"},  # rank not below the count
    {"OMPI_COMM_WORLD_LOCAL_RANK": "0", "OMPI_COMM_WORLD_LOCAL_SIZE": "0"},
    {"OMPI_COMM_WORLD_LOCAL_RANK": "0"},
    {"OMPI_COMM_WORLD_LOCAL_RANK": "0", "OMPI_COMM_WORLD_LOCAL_SIZE": "9" * 30},
    slurm(3, "2"),  # LOCALID >= tasks on the node
    slurm(0, "garbage"),
])
def test_garbage_or_inconsistent_variables_are_a_note_and_plan_alone(env: dict[str, str]):
    found = read_ranks(env)
    assert found is not None and found.local_size == 1 and found.notes, found
    assert any("not" in note for note in found.notes)


def test_two_launchers_that_disagree_take_the_wider_sharing():
    env = {**slurm(0, "1"), "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "4"}
    found = read_ranks(env)
    assert found is not None and (found.launcher, found.local_size) == ("Open MPI", 4)
    assert any("Open MPI says 4 ranks on this node but Slurm says 1" in note for note in found.notes)


def test_sharing_from_the_cpu_sets():
    ranks = Ranks("Open MPI", 3, 16)
    # 16 ranks on a 64-core node, each bound to one of 2 sockets of 32: 8 share each socket.
    assert share(ranks, frozenset(range(32)), frozenset(range(64)))[:2] == (8, 1)
    # Not bound: all 16 share the 64.
    assert share(ranks, frozenset(range(64)), frozenset(range(64)))[:2] == (16, 3)
    # Bound to 4 cores each: alone.
    assert share(ranks, frozenset(range(12, 16)), frozenset(range(64)))[:2] == (1, 0)
    # Slurm said: overlapping masks share, disjoint ones do not.
    masks = (frozenset({0, 1}), frozenset({0, 1}), frozenset({2, 3}))
    assert share(Ranks("Slurm", 1, 3, masks=masks), frozenset({0, 1}), 4)[:2] == (2, 1)
    assert share(Ranks("Slurm", 2, 3, masks=masks), frozenset({2, 3}), 4)[:2] == (1, 0)


def test_blocks_are_contiguous_disjoint_and_keep_smt_siblings_together():
    assert [block(tuple(range(8)), 3, i) for i in range(3)] == [(0, 1), (2, 3, 4), (5, 6, 7)]
    siblings = {cpu: (0, cpu % 4) for cpu in range(8)}  # CPU c and c+4 are one core
    assert [block(tuple(range(8)), 2, i, siblings) for i in range(2)] == [(0, 1, 4, 5), (2, 3, 6, 7)]
    # More ranks than cores: siblings are split; more ranks than CPUs: they share.
    assert [block(tuple(range(4)), 4, i, {c: (0, c // 2) for c in range(4)}) for i in range(4)] == [
        (0,), (1,), (2,), (3,)]
    assert [block((0, 1), 3, i) for i in range(3)] == [(0,), (1,), (0,)]


@given(st.integers(1, 256), st.integers(1, 64))
def test_blocks_cover_the_set_once(cpus: int, parts: int):
    cut = [block(tuple(range(cpus)), parts, i) for i in range(parts)]
    if parts <= cpus:
        assert sorted(c for part in cut for c in part) == list(range(cpus))
        assert max(map(len, cut)) - min(map(len, cut)) <= 1
    else:
        assert all(len(part) == 1 for part in cut)


def rank_machine(env: dict[str, str], allowed: range, launcher: range | None = None, **facts) -> Machine:
    return Machine(frozenset(allowed), ranks=read_ranks(env, "node07"),
                   launcher_cpus=None if launcher is None else frozenset(launcher), **facts)


def caps(plan) -> dict[str, str]:
    return {change.name: change.value for change in plan.env}


def test_ranks_sharing_a_node_each_plan_for_their_share():
    env = {"OMPI_COMM_WORLD_LOCAL_RANK": "5", "OMPI_COMM_WORLD_LOCAL_SIZE": "16"}
    plan = resolve(make_profile(), rank_machine(env, range(64), range(64)), Overrides())
    assert plan.cpus == 4 and plan.ranks.startswith("rank 5 of 16 on this node, from Open MPI")
    assert "shared by 16 local ranks: this rank's share is 4" in plan.cpus_why
    assert caps(plan)["OMP_NUM_THREADS"] == "4" and caps(plan)["OPENBLAS_NUM_THREADS"] == "4"
    # Bound to a socket (32 of the 64): 8 ranks share it.
    socket = resolve(make_profile(), rank_machine(env, range(32), range(64)), Overrides())
    assert socket.cpus == 4 and "shared by 8 local ranks" in socket.cpus_why


def test_cpus_rank_pins_each_rank_to_its_own_block():
    blocks = []
    for local in range(3):
        env = {"OMPI_COMM_WORLD_LOCAL_RANK": str(local), "OMPI_COMM_WORLD_LOCAL_SIZE": "3",
               "OMPI_MCA_hwloc_base_binding_policy": "none"}
        plan = resolve(make_profile({"cpus": "rank"}), rank_machine(env, range(8)), Overrides())
        blocks.append(plan.pin)
        assert plan.cpus == len(plan.pin) and "8 do not divide by 3" in plan.cpus_why
    assert blocks == [(0, 1), (2, 3, 4), (5, 6, 7)]


def test_ranks_the_launcher_bound_keep_their_binding():
    env = slurm(1, "2", bind="quiet,mask_cpu:0x1,0x2")
    plan = resolve(make_profile({"cpus": "rank"}), rank_machine(env, range(1, 2), slurm=2,
                                                                slurm_source="SLURM_CPUS_ON_NODE"), Overrides())
    assert plan.pin is None and plan.cpus == 1 and "kept as they are" in plan.cpus_why
    assert "Slurm bound each rank to its own CPUs" in plan.ranks


def test_slurm_without_binding_divides_the_allocation():
    env = slurm(1, "2", bind="quiet,none")
    plan = resolve(make_profile(), rank_machine(env, range(2), slurm=2, slurm_source="SLURM_CPUS_ON_NODE"),
                   Overrides())
    assert plan.cpus == 1 and "Slurm did not bind the ranks to CPUs" in plan.ranks


def test_cpus_rank_outside_a_launcher_is_an_error_naming_the_variables():
    with pytest.raises(TcapError) as failure:
        resolve(make_profile({"cpus": "rank"}), Machine(frozenset(range(8))), Overrides())
    assert "OMPI_COMM_WORLD_LOCAL_RANK" in str(failure.value) and "SLURM_LOCALID" in str(failure.value)


def test_cpus_rank_outside_a_launcher_exits_2_and_starts_nothing(iso: Isolated):
    marker = iso.work / "started"
    result = iso.run("run", "--cpus", "rank", "--", "touch", str(marker))
    assert result.returncode == 2 and not marker.exists()
    assert result.stderr.count("\n") == 1 and "LOCAL_RANK" in result.stderr, result.stderr


def test_show_names_the_rank_and_notes_garbage(iso: Isolated):
    env = dict(iso.env, OMPI_COMM_WORLD_LOCAL_RANK="1", OMPI_COMM_WORLD_LOCAL_SIZE="2",
               OMPI_MCA_hwloc_base_binding_policy="none")
    shown = iso.run("show", env=env)
    assert "ranks     rank 1 of 2 on this node, from Open MPI; Open MPI did not bind the ranks to CPUs" in shown.stdout
    env = dict(iso.env, OMPI_COMM_WORLD_LOCAL_RANK="7", OMPI_COMM_WORLD_LOCAL_SIZE="2")
    shown = iso.run("show", env=env)
    assert shown.returncode == 0
    assert "note: Open MPI: local rank 7 is not below the 2 ranks on the node" in shown.stdout, shown.stdout


def test_torchrun_workers_started_through_tcap_each_get_a_share(iso: Isolated):
    """torchrun --no-python --nproc-per-node 2 tcap run -- python train.py:
    torchrun's own variables, set here as torchrun sets them (PyTorch is too
    large to install in CI), on this machine's CPUs."""
    import os

    cpus = len(os.sched_getaffinity(0))
    code = "import os; print(os.environ.get('OMP_NUM_THREADS'), sorted(os.sched_getaffinity(0)))"
    seen = []
    for local in range(2):
        env = dict(iso.env, LOCAL_RANK=str(local), LOCAL_WORLD_SIZE="2", RANK=str(local), WORLD_SIZE="2",
                   GROUP_RANK="0", TORCHELASTIC_RUN_ID="none")
        out = iso.run("run", "--cpus", "rank", "--", PYTHON, "-c", code, env=env)
        assert out.returncode == 0, out.stderr
        seen.append(out.stdout.split(" ", 1)[1].strip())
    if cpus >= 2:
        halves = [sorted(os.sched_getaffinity(0))[: cpus // 2], sorted(os.sched_getaffinity(0))[cpus // 2:]]
        assert seen == [str(halves[0]), str(halves[1])], seen


def test_garbage_rank_variables_are_a_note_at_every_launch(iso: Isolated):
    env = dict(iso.env, OMPI_COMM_WORLD_LOCAL_RANK="x", OMPI_COMM_WORLD_LOCAL_SIZE="2")
    for _ in range(2):  # the second launch comes from the plan cache: the note too
        out = iso.run("run", "--", PYTHON, "-c", "print('ran')", env=env)
        assert out.returncode == 0 and out.stdout == "ran\n", out.stderr
        notes = [line for line in out.stderr.splitlines() if line.startswith("tcap: note:")]
        assert notes == [
            "tcap: note: Open MPI: OMPI_COMM_WORLD_LOCAL_RANK='x', OMPI_COMM_WORLD_LOCAL_SIZE='2' is not a rank "
            "and a count",
            "tcap: note: the rank variables are not usable: tcap plans as if this process were alone; set --cpus "
            "or --threads for each rank",
        ], out.stderr

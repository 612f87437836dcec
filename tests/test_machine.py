"""Machine facts from a fake /proc and /sys tree: tcap.machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tcap.machine import (
    Machine,
    read_affinity,
    read_cgroup_quota,
    read_cores,
    read_machine,
    read_slurm,
    usable,
)


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def fake_root(tmp_path: Path, *, allowed: str | None = "0-3", cgroup: str | None = None) -> str:
    status = "Name:\tpython\nState:\tR (running)\n"
    if allowed is not None:
        status += f"Cpus_allowed:\tf\nCpus_allowed_list:\t{allowed}\n"
    write(tmp_path, "proc/self/status", status + "Mems_allowed_list:\t0\n")
    if cgroup is not None:
        write(tmp_path, "proc/self/cgroup", cgroup)
    return str(tmp_path)


# --- affinity ---------------------------------------------------------------

def test_affinity_from_status(tmp_path):
    root = fake_root(tmp_path, allowed="0-3,8,10-11")
    assert read_affinity(root) == frozenset({0, 1, 2, 3, 8, 10, 11})


def test_affinity_missing_line_is_none(tmp_path):
    root = fake_root(tmp_path, allowed=None)
    assert read_affinity(root) is None


def test_affinity_missing_file_is_none(tmp_path):
    assert read_affinity(str(tmp_path)) is None


def test_affinity_garbage_is_none(tmp_path):
    root = fake_root(tmp_path, allowed="zz")
    assert read_affinity(root) is None


def test_affinity_real_root_matches_sched_getaffinity():
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no sched_getaffinity")
    assert read_affinity("/") == frozenset(os.sched_getaffinity(0))


# --- cgroup v2 ----------------------------------------------------------------

def test_v2_ancestor_with_tighter_quota_wins(tmp_path):
    root = fake_root(tmp_path, cgroup="0::/outer/inner/job\n")
    write(tmp_path, "sys/fs/cgroup/outer/inner/job/cpu.max", "400000 100000\n")
    write(tmp_path, "sys/fs/cgroup/outer/inner/cpu.max", "max 100000\n")
    write(tmp_path, "sys/fs/cgroup/outer/cpu.max", "200000 100000\n")
    write(tmp_path, "sys/fs/cgroup/cpu.max", "800000 100000\n")
    quota, source = read_cgroup_quota(root)
    assert quota == 2.0
    assert source == "/sys/fs/cgroup/outer"


def test_v2_own_cgroup_tighter_than_ancestor(tmp_path):
    root = fake_root(tmp_path, cgroup="0::/a/b\n")
    write(tmp_path, "sys/fs/cgroup/a/b/cpu.max", "50000 100000")
    write(tmp_path, "sys/fs/cgroup/a/cpu.max", "300000 100000")
    quota, source = read_cgroup_quota(root)
    assert quota == 0.5
    assert source == "/sys/fs/cgroup/a/b"


def test_v2_max_means_no_quota(tmp_path):
    root = fake_root(tmp_path, cgroup="0::/a\n")
    write(tmp_path, "sys/fs/cgroup/a/cpu.max", "max 100000\n")
    write(tmp_path, "sys/fs/cgroup/cpu.max", "max 100000\n")
    assert read_cgroup_quota(root) == (None, None)


def test_v2_non_default_period(tmp_path):
    root = fake_root(tmp_path, cgroup="0::/a\n")
    write(tmp_path, "sys/fs/cgroup/a/cpu.max", "150000 50000\n")
    assert read_cgroup_quota(root)[0] == 3.0


@pytest.mark.parametrize("text", ["", "garbage", "100000", "x 100000", "100000 0", "0 100000", "1 2 3"])
def test_v2_malformed_is_no_quota(tmp_path, text):
    root = fake_root(tmp_path, cgroup="0::/a\n")
    write(tmp_path, "sys/fs/cgroup/a/cpu.max", text)
    assert read_cgroup_quota(root) == (None, None)


def test_v2_unified_mount(tmp_path):
    root = fake_root(tmp_path, cgroup="0::/svc\n")
    write(tmp_path, "sys/fs/cgroup/unified/svc/cpu.max", "300000 100000")
    assert read_cgroup_quota(root) == (3.0, "/sys/fs/cgroup/unified/svc")


# --- cgroup v1 ----------------------------------------------------------------

def test_v1_quota_minus_one_is_none(tmp_path):
    root = fake_root(tmp_path, cgroup="4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n")
    write(tmp_path, "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "-1\n")
    write(tmp_path, "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n")
    assert read_cgroup_quota(root) == (None, None)


def test_v1_fractional_quota_and_usable_rounds_up(tmp_path):
    root = fake_root(tmp_path, cgroup="4:cpu,cpuacct:/docker/abc\n")
    base = "sys/fs/cgroup/cpu,cpuacct/docker/abc/"
    write(tmp_path, base + "cpu.cfs_quota_us", "150000\n")
    write(tmp_path, base + "cpu.cfs_period_us", "100000\n")
    quota, source = read_cgroup_quota(root)
    assert quota == 1.5
    assert source == "/sys/fs/cgroup/cpu,cpuacct/docker/abc"
    machine = Machine(frozenset(range(8)), quota=quota, quota_source=source)
    count, why = usable(machine, machine.allowed)
    assert count == 2
    assert "1.5" in why


def test_v1_cpu_mount_name(tmp_path):
    root = fake_root(tmp_path, cgroup="2:cpuacct,cpu:/job\n")
    write(tmp_path, "sys/fs/cgroup/cpu/job/cpu.cfs_quota_us", "300000")
    write(tmp_path, "sys/fs/cgroup/cpu/job/cpu.cfs_period_us", "100000")
    assert read_cgroup_quota(root)[0] == 3.0


def test_v1_missing_period_is_none(tmp_path):
    root = fake_root(tmp_path, cgroup="2:cpu:/job\n")
    write(tmp_path, "sys/fs/cgroup/cpu/job/cpu.cfs_quota_us", "300000")
    assert read_cgroup_quota(root) == (None, None)


def test_v1_other_controllers_ignored(tmp_path):
    root = fake_root(tmp_path, cgroup="3:memory:/job\n5:cpuset:/job\n")
    write(tmp_path, "sys/fs/cgroup/memory/job/cpu.cfs_quota_us", "100000")
    write(tmp_path, "sys/fs/cgroup/memory/job/cpu.cfs_period_us", "100000")
    assert read_cgroup_quota(root) == (None, None)


def test_hybrid_v1_and_v2_takes_the_tightest(tmp_path):
    root = fake_root(tmp_path, cgroup="4:cpu:/j\n0::/j\n")
    write(tmp_path, "sys/fs/cgroup/cpu/j/cpu.cfs_quota_us", "250000")
    write(tmp_path, "sys/fs/cgroup/cpu/j/cpu.cfs_period_us", "100000")
    write(tmp_path, "sys/fs/cgroup/unified/j/cpu.max", "600000 100000")
    assert read_cgroup_quota(root)[0] == 2.5


def test_no_cgroup_file_is_unknown(tmp_path):
    root = fake_root(tmp_path)
    assert read_cgroup_quota(root) == (None, None)


def test_cgroup_without_any_limit_files_is_unknown(tmp_path):
    root = fake_root(tmp_path, cgroup="0::/user.slice/session\n")
    assert read_cgroup_quota(root) == (None, None)


# --- Slurm --------------------------------------------------------------------

@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"SLURM_JOB_ID": "7", "SLURM_CPUS_PER_TASK": "4", "SLURM_CPUS_ON_NODE": "16"},
         (4, "SLURM_CPUS_PER_TASK")),
        ({"SLURM_JOB_ID": "7", "SLURM_CPUS_ON_NODE": "16"}, (16, "SLURM_CPUS_ON_NODE")),
        ({"SLURM_JOB_ID": "7", "SLURM_CPUS_PER_TASK": "", "SLURM_CPUS_ON_NODE": "6"},
         (6, "SLURM_CPUS_ON_NODE")),
        ({"SLURM_JOB_ID": "7", "SLURM_CPUS_PER_TASK": "0", "SLURM_CPUS_ON_NODE": "6"},
         (6, "SLURM_CPUS_ON_NODE")),
        ({"SLURM_JOB_ID": "7", "SLURM_CPUS_PER_TASK": "two"}, (None, None)),
        ({"SLURM_JOB_ID": "7"}, (None, None)),
        ({"SLURM_CPUS_PER_TASK": "4", "SLURM_CPUS_ON_NODE": "16"}, (None, None)),
        ({}, (None, None)),
    ],
)
def test_slurm(environ, expected):
    assert read_slurm(environ) == expected


# --- topology -----------------------------------------------------------------

def write_topology(root: Path, cores: dict[int, tuple[int, int]]) -> None:
    for cpu, (package, core) in cores.items():
        base = f"sys/devices/system/cpu/cpu{cpu}/topology/"
        write(root, base + "core_id", f"{core}\n")
        write(root, base + "physical_package_id", f"{package}\n")


def test_read_cores_smt_siblings_share_a_core(tmp_path):
    # 2 packages x 2 cores x 2 threads, Linux-style numbering: cpuN and
    # cpuN+4 are siblings.
    layout = {0: (0, 0), 1: (0, 1), 2: (1, 0), 3: (1, 1), 4: (0, 0), 5: (0, 1), 6: (1, 0), 7: (1, 1)}
    write_topology(tmp_path, layout)
    cores = read_cores(frozenset(range(8)), str(tmp_path))
    assert cores == layout
    assert len(set(cores.values())) == 4
    # Same core id on different packages is a different core.
    assert cores[0] != cores[2]


def test_read_cores_only_allowed(tmp_path):
    write_topology(tmp_path, {0: (0, 0), 1: (0, 0), 2: (0, 1), 3: (0, 1)})
    assert read_cores(frozenset({1, 3}), str(tmp_path)) == {1: (0, 0), 3: (0, 1)}


def test_read_cores_missing_file_is_none(tmp_path):
    write_topology(tmp_path, {0: (0, 0), 1: (0, 1)})
    assert read_cores(frozenset({0, 1, 2}), str(tmp_path)) is None


def test_read_cores_garbage_is_none(tmp_path):
    write_topology(tmp_path, {0: (0, 0)})
    write(tmp_path, "sys/devices/system/cpu/cpu0/topology/core_id", "abc")
    assert read_cores(frozenset({0}), str(tmp_path)) is None


# --- read_machine -------------------------------------------------------------

def test_read_machine_fake_root(tmp_path):
    root = fake_root(tmp_path, allowed="0-3", cgroup="0::/x\n")
    write(tmp_path, "sys/fs/cgroup/x/cpu.max", "200000 100000")
    write_topology(tmp_path, {0: (0, 0), 1: (0, 0), 2: (0, 1), 3: (0, 1)})
    environ = {"SLURM_JOB_ID": "1", "SLURM_CPUS_PER_TASK": "3"}
    machine = read_machine(topology=True, environ=environ, root=root)
    assert machine.allowed == frozenset({0, 1, 2, 3})
    assert machine.quota == 2.0
    assert machine.quota_source == "/sys/fs/cgroup/x"
    assert machine.slurm == 3
    assert machine.slurm_source == "SLURM_CPUS_PER_TASK"
    assert machine.cores == {0: (0, 0), 1: (0, 0), 2: (0, 1), 3: (0, 1)}
    assert machine.online is None
    assert usable(machine, machine.allowed)[0] == 2


def test_read_machine_without_topology(tmp_path):
    root = fake_root(tmp_path, allowed="0-1")
    write_topology(tmp_path, {0: (0, 0), 1: (0, 1)})
    machine = read_machine(environ={}, root=root)
    assert machine.cores is None
    assert machine.quota is None and machine.slurm is None


def test_read_machine_no_mask_uses_the_online_cpus(tmp_path):
    machine = read_machine(environ={}, root=str(tmp_path))
    assert machine.allowed is None
    assert machine.online is None  # nothing in this tree says how many
    write(tmp_path, "sys/devices/system/cpu/online", "0-5,8\n")
    assert read_machine(environ={}, root=str(tmp_path)).online == 7
    assert read_machine(environ={}).online == os.cpu_count()


def test_sysroot_points_every_reader_at_a_described_machine(tmp_path):
    root = fake_root(tmp_path, allowed="0-127", cgroup="0::/\n")
    write(tmp_path, "sys/fs/cgroup/cpu.max", "400000 100000\n")
    machine = read_machine(environ={"TCAP_SYSROOT": root}, topology=True)
    assert machine.allowed == frozenset(range(128))
    assert machine.quota == 4.0
    assert machine.cores is None  # no topology files in this tree: unknown, not guessed


# --- usable -------------------------------------------------------------------

def test_usable_is_the_set_size_without_limits():
    machine = Machine(frozenset(range(128)))
    assert usable(machine, machine.allowed)[0] == 128
    assert usable(machine, frozenset(range(10)))[0] == 10


def test_usable_128_cpus_with_quota_4():
    machine = Machine(frozenset(range(128)), quota=4.0, quota_source="/sys/fs/cgroup/job")
    count, why = usable(machine, machine.allowed)
    assert count == 4
    assert "/sys/fs/cgroup/job" in why and "128" in why


@pytest.mark.parametrize(("quota", "expected"), [(0.01, 1), (0.5, 1), (1.0, 1), (1.01, 2), (2.5, 3), (3.0, 3)])
def test_usable_rounds_quota_up(quota, expected):
    machine = Machine(frozenset(range(64)), quota=quota, quota_source="q")
    assert usable(machine, machine.allowed)[0] == expected


def test_usable_slurm_and_quota_take_the_smallest():
    machine = Machine(frozenset(range(128)), quota=16.0, quota_source="q", slurm=6, slurm_source="SLURM_CPUS_PER_TASK")
    count, why = usable(machine, machine.allowed)
    assert count == 6
    assert "SLURM_CPUS_PER_TASK=6" in why
    # A CPU set smaller than both limits wins.
    assert usable(machine, frozenset({0, 1}))[0] == 2


def test_usable_without_mask_uses_online():
    assert usable(Machine(None, online=12), None)[0] == 12
    assert usable(Machine(None), None)[0] == 1
    assert usable(Machine(None, online=12, quota=2.0, quota_source="q"), None)[0] == 2


def test_machine_equality_and_key():
    a = Machine(frozenset({0, 1}), 1.5, "x", None, None, {0: (0, 0), 1: (0, 0)})
    b = Machine(frozenset({1, 0}), 1.5, "y", None, None, {1: (0, 0), 0: (0, 0)})
    assert a == b and hash(a) == hash(b)
    assert a != Machine(frozenset({0, 1}), 2.0)
    import marshal

    assert marshal.loads(marshal.dumps(a.key())) == a.key()

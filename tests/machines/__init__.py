"""Machines described as data: a small TOML file each, written out as the
``/proc`` and ``/sys`` files tcap reads, for ``TCAP_SYSROOT``.

Only the machine facts are fake; tcap, its plan and the interpreter whose
libraries ``tcap doctor`` loads are real.
"""

from __future__ import annotations

from pathlib import Path

from tcap.profiles import toml_module

HERE = Path(__file__).parent
NAMES = sorted(p.stem for p in HERE.glob("*.toml"))


def build(name: str, root: Path) -> Path:
    """Write machine ``name``'s tree under ``root``; returns ``root``."""
    spec = toml_module().loads((HERE / f"{name}.toml").read_text())
    sockets, per_socket, smt = spec["sockets"], spec["cores_per_socket"], spec["threads_per_core"]
    cores = sockets * per_socket
    cpus = cores * smt

    def write(relative: str, text: str) -> None:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")

    # Linux numbers the first hardware thread of every core first, then the
    # siblings: CPU c and c + cores share a core.
    for cpu in range(cpus):
        core = cpu % cores
        base = f"sys/devices/system/cpu/cpu{cpu}/topology"
        write(f"{base}/physical_package_id", str(core // per_socket))
        write(f"{base}/core_id", str(core % per_socket))
    write("sys/devices/system/cpu/online", f"0-{cpus - 1}")
    nodes = spec["numa_nodes"]
    per_node = cores // nodes
    for node in range(nodes):
        first = node * per_node
        ranges = [f"{first + t * cores}-{first + per_node - 1 + t * cores}" for t in range(smt)]
        write(f"sys/devices/system/node/node{node}/cpulist", ",".join(ranges))
    write("proc/self/status", f"Name:\tpython\nCpus_allowed_list:\t0-{cpus - 1}\nMems_allowed_list:\t0")
    write("proc/self/cgroup", "0::/")
    if "cpu_max" in spec:
        write("sys/fs/cgroup/cpu.max", spec["cpu_max"])
    return root

"""Which launcher started this process as one of several ranks on a node,
and how the node's CPUs are shared among them.

Read from each launcher's own environment: Slurm (``srun``), Open MPI,
MPICH and Intel MPI (Hydra), torchrun.  Pure functions of the environment
and CPU sets; nothing here touches the system.  A variable that is garbage
or inconsistent is not trusted: it becomes a note, and the choice that
cannot oversubscribe (more ranks sharing, never fewer).
"""

from __future__ import annotations

from tcap.cpuset import Keyed

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

#: Launchers by precedence (the innermost first: mpirun inside a Slurm
#: allocation starts its ranks with Slurm's variables of the allocation
#: still set, and its own are the ones that describe the ranks).
#: (name, local rank, local size, global rank, global size).
LAUNCHERS = (
    ("torchrun", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "RANK", "WORLD_SIZE"),
    ("Open MPI", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE", "OMPI_COMM_WORLD_RANK",
     "OMPI_COMM_WORLD_SIZE"),
    ("MPICH/Intel MPI", "MPI_LOCALRANKID", "MPI_LOCALNRANKS", "PMI_RANK", "PMI_SIZE"),
    ("Slurm", "SLURM_LOCALID", None, "SLURM_PROCID", "SLURM_NTASKS"),
)
#: Every variable tcap reads to find the ranks (for the error of --cpus rank).
VARIABLES = tuple(name for launcher in LAUNCHERS for name in launcher[1:] if name) + (
    "SLURM_TASKS_PER_NODE", "SLURM_NODEID", "SLURM_CPU_BIND", "OMPI_MCA_hwloc_base_binding_policy")
#: No launcher places more ranks than this on one node; larger is garbage.
MAX_RANKS = 1 << 16


class Ranks(Keyed):
    """This process as rank ``local_rank`` of ``local_size`` on its node."""

    __slots__ = ("launcher", "local_rank", "local_size", "rank", "size", "node", "masks", "notes")

    def __init__(self, launcher: str, local_rank: int, local_size: int, rank: int | None = None,
                 size: int | None = None, node: str | None = None,
                 masks: tuple[frozenset[int], ...] | None = None, notes: tuple[str, ...] = ()) -> None:
        self.launcher = launcher
        self.local_rank = local_rank
        self.local_size = local_size
        self.rank = rank
        self.size = size
        self.node = node
        #: Each local rank's CPUs when the launcher says (Slurm's masks); () when
        #: it says it did not bind them (--cpu-bind=none, --bind-to none); None
        #: when it does not say.
        self.masks = masks
        self.notes = notes

    def key(self) -> tuple[object, ...]:
        masks = None if self.masks is None else tuple(tuple(sorted(m)) for m in self.masks)
        return (self.launcher, self.local_rank, self.local_size, self.rank, self.size, self.node, masks, self.notes)

    def __repr__(self) -> str:
        return f"Ranks{self.key()!r}"

    def text(self) -> str:
        """"rank 1 of 2 on this node, from Open MPI"."""
        return f"rank {self.local_rank} of {self.local_size} on this node, from {self.launcher}"

    def label(self) -> str:
        """"rank 3/16 on node07" for the probe's warnings."""
        text = f"rank {self.rank}/{self.size}" if self.rank is not None and self.size else \
            f"local rank {self.local_rank}/{self.local_size}"
        return f"{text} on {self.node}" if self.node else text


def _count(environ: Mapping[str, str], name: str | None, low: int) -> int | None:
    """A decimal count >= ``low`` and below MAX_RANKS * MAX_RANKS; None when
    unset; -1 when set but garbage."""
    if name is None or name not in environ:
        return None
    text = environ[name].strip()
    if not text.isdigit() or len(text) > 10 or not low <= int(text) < MAX_RANKS * MAX_RANKS:
        return -1
    return int(text)


def tasks_per_node(text: str, node: int) -> int | None:
    """Slurm's compressed SLURM_TASKS_PER_NODE ("2(x3),1") for node index
    ``node``; None when malformed or too short."""
    seen = 0
    for part in text.split(","):
        count, _, repeat = part.strip().partition("(x")
        if repeat:
            if not repeat.endswith(")"):
                return None
            repeat = repeat[:-1]
        if not count.isdigit() or len(count) > 6 or (repeat and (not repeat.isdigit() or len(repeat) > 6)):
            return None
        times = int(repeat) if repeat else 1
        if times < 1 or int(count) < 1:
            return None
        if node < seen + times:
            return int(count)
        seen += times
    return None


def slurm_masks(text: str, size: int) -> tuple[frozenset[int], ...] | None:
    """Each local task's CPUs from SLURM_CPU_BIND ("quiet,mask_cpu:0x1,0x2"
    or "map_cpu:0,1"); an empty tuple for "none" (not bound); None when
    Slurm did not say, or said something tcap does not read."""
    kinds = [item.strip() for item in text.split(",")]
    for index, item in enumerate(kinds):
        kind, _, first = item.partition(":")
        if kind == "none":
            return ()
        if kind not in ("mask_cpu", "map_cpu") or not first:
            continue
        values = [first] + kinds[index + 1:]
        if len(values) != size:
            return None  # Slurm repeats the list when shorter; tcap does not guess
        masks = []
        for value in values:
            try:
                if kind == "map_cpu":
                    cpu = int(value, 0)
                    if not 0 <= cpu < MAX_RANKS:
                        return None
                    masks.append(frozenset((cpu,)))
                else:
                    bits = value[2:] if value.lower().startswith("0x") else value
                    if not bits or len(bits) > MAX_RANKS // 4:
                        return None
                    number = int(bits, 16)
                    masks.append(frozenset(i for i in range(number.bit_length()) if number >> i & 1))
            except ValueError:
                return None
        return tuple(masks)
    return None


def read_ranks(environ: Mapping[str, str], hostname: str | None = None) -> Ranks | None:
    """The ranks of the innermost launcher that started this process, or
    None when no launcher (or a single rank) is found."""
    valid: list[tuple[str, int, int, int | None, int | None]] = []
    broken: list[str] = []  # launchers whose variables are set but not usable
    notes: list[str] = []
    for launcher, local, local_size, rank, size in LAUNCHERS:
        local_rank = _count(environ, local, 0)
        if local_rank is None:
            continue
        if launcher == "Slurm":
            node_index = _count(environ, "SLURM_NODEID", 0)
            per_node = environ.get("SLURM_TASKS_PER_NODE", "")
            local_count = tasks_per_node(per_node, node_index) if node_index is not None and node_index >= 0 \
                else None
            if local_count is None:
                notes.append(f"Slurm: SLURM_TASKS_PER_NODE={per_node[:40]!r} with SLURM_NODEID="
                             f"{environ.get('SLURM_NODEID', '')[:20]!r} does not say how many tasks run here")
                broken.append(launcher)
                continue
        else:
            local_count = _count(environ, local_size, 1)
        if local_rank < 0 or local_count is None or local_count < 0:
            notes.append(f"{launcher}: {local}={environ.get(local, '')[:20]!r}, {local_size}="
                         f"{environ.get(local_size or '', '')[:20]!r} is not a rank and a count")
            broken.append(launcher)
            continue
        if local_rank >= local_count:
            notes.append(f"{launcher}: local rank {local_rank} is not below the {local_count} ranks on the node")
            broken.append(launcher)
            continue
        global_rank, global_size = _count(environ, rank, 0), _count(environ, size, 1)
        if global_rank is None or global_size is None or global_rank < 0 or global_size < 0 \
                or global_rank >= global_size:
            global_rank = global_size = None
        valid.append((launcher, local_rank, local_count, global_rank, global_size))
    if not valid and not broken:
        return None
    node = environ.get("SLURMD_NODENAME") or hostname
    if not valid:
        # Garbage everywhere: tcap cannot tell how many ranks share the node,
        # so it plans as if this one were alone and says so at every launch.
        return Ranks(broken[0], 0, 1, node=node, notes=tuple(notes + [
            "the rank variables are not usable: tcap plans as if this process were alone; set --cpus or "
            "--threads for each rank"]))
    chosen = valid[0]
    others = [item for item in valid[1:] if item[2] != chosen[2]]
    if others:
        # Two launchers that disagree: the one with more ranks sharing the node
        # is the safe choice (smaller shares never oversubscribe).
        widest = max([chosen, *others], key=lambda item: item[2])
        notes.append(f"{chosen[0]} says {chosen[2]} ranks on this node but {others[0][0]} says {others[0][2]}: "
                     f"tcap plans for {widest[2]} ({widest[0]})")
        chosen = widest
    launcher, local_rank, local_count, global_rank, global_size = chosen
    masks = None
    if launcher == "Slurm" and "SLURM_CPU_BIND" in environ:
        masks = slurm_masks(environ["SLURM_CPU_BIND"], local_count)
    elif launcher == "Open MPI" and environ.get("OMPI_MCA_hwloc_base_binding_policy", "").strip() == "none":
        masks = ()  # mpirun --bind-to none: every rank may run on every CPU
    if local_count == 1 and not notes:
        return None  # alone on the node: nothing to share
    return Ranks(launcher, local_rank, local_count, global_rank, global_size, node, masks, tuple(notes))


def share(ranks: Ranks, own: frozenset[int], node: frozenset[int] | int) -> tuple[int, int, str]:
    """(how many local ranks share this rank's CPUs, this rank's index among
    them, why).  ``own``: this rank's affinity; ``node``: the CPUs the ranks
    of the node draw from (the launcher's affinity), or their count."""
    if ranks.masks is not None:
        if not ranks.masks:
            return ranks.local_size, ranks.local_rank, f"{ranks.launcher} did not bind the ranks to CPUs"
        mine = ranks.masks[ranks.local_rank]
        sharing = [i for i, mask in enumerate(ranks.masks) if mask & mine]
        if len(sharing) == 1:
            return 1, 0, f"{ranks.launcher} bound each rank to its own CPUs"
        return len(sharing), sharing.index(ranks.local_rank), \
            f"{ranks.launcher} bound {len(sharing)} ranks to overlapping CPUs"
    total = node if isinstance(node, int) else len(node | own)
    if ranks.local_size * len(own) <= total:
        return 1, 0, f"this rank has {_n(len(own))} of its own ({ranks.local_size} ranks x {len(own)} <= the " \
            f"node's {total})"
    sharers = min(ranks.local_size, -(-ranks.local_size * len(own) // total))
    groups = -(-ranks.local_size // sharers)
    return sharers, ranks.local_rank // groups, \
        f"{ranks.local_size} ranks on the node's {total} CPUs, this one on {len(own)}: {sharers} ranks share them"


def block(cpus: tuple[int, ...], parts: int, index: int,
          cores: Mapping[int, tuple[int, int]] | None = None) -> tuple[int, ...]:
    """Part ``index`` of ``cpus`` cut into ``parts`` contiguous blocks whose
    sizes differ by at most one (SMT siblings of a core stay together when
    ``cores`` says which CPUs share one)."""
    units: list[list[int]] = []
    if cores:
        by_core: dict[tuple[int, int], list[int]] = {}
        for cpu in cpus:
            by_core.setdefault(cores.get(cpu, (-1, cpu)), []).append(cpu)
        units = sorted(by_core.values(), key=min)
    if len(units) < parts:  # fewer cores than ranks: siblings are split
        units = [[cpu] for cpu in cpus]
    if not units or parts < 1:
        return ()
    if len(units) < parts:
        return tuple(units[index % len(units)])  # more ranks than CPUs: they must share
    start, end = index * len(units) // parts, (index + 1) * len(units) // parts
    return tuple(sorted(cpu for unit in units[start:end] for cpu in unit))


def _n(count: int) -> str:
    return f"{count} CPU" if count == 1 else f"{count} CPUs"

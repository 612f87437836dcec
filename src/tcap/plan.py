"""``resolve(profile, machine, overrides) -> Plan``: the pure core.

No I/O here.  A Plan says which variables to set or unset, which CPUs to
pin to, how many CPUs that leaves, and why each value is what it is.
Precedence: flags > profile > inherited environment.  A flag for a general
key (``--threads``, ``--blas``) also replaces the profile's more specific
keys under it, so ``--threads 1`` really means one thread everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from tcap.bounds import MAX_DIGITS, MAX_THREADS, MAX_VALUE
from tcap.cpuset import format_cpu_list, parse_cpu_spec
from tcap.errors import TcapError
from tcap.machine import Machine, usable
from tcap.plural import counted
from tcap.policy import Policy
from tcap.profiles import SHARE_MODES, Origin, Profile, Setting, count_problem
from tcap.variables import APIS, CAP_KEYS, VARIABLES, Variable, keys_for

DEFAULT_VERIFY = "warn"
#: Whether the probes of a launch share its CPUs among the processes (and
#: Python threads) busy at run time ("busy") or leave every pool at its cap
#: ("off"); the profile key and flag ``share`` choose, this is the default.
DEFAULT_SHARE = "busy"
#: Cap keys whose threads may all call into an OpenBLAS at once: its own
#: pool, and OpenMP (a KMeans fit's OpenMP threads each call BLAS).
BLAS_CALLERS = ("openblas", "openmp")
BLAS_CALLER_VARIABLES = tuple(v.name for v in VARIABLES if v.library in BLAS_CALLERS)


class Limit(NamedTuple):
    """A native library's build limit, as its own config string says."""

    internal_api: str
    max_threads: int
    #: Who it is, for a reason: "numpy's OpenBLAS 0.3.31".
    what: str


class _OwnChoice:
    """What each library does when tcap leaves its variables alone."""

    def __init__(self, affinity: int, machine: Machine, physical: int | None, openblas: Limit | None) -> None:
        self.affinity = affinity
        self.online = max(machine.online or affinity, affinity)
        self.physical = physical
        self.quota = None if machine.quota is None else max(1, -int(-machine.quota // 1))
        self.openblas = openblas

    def default(self, variable: Variable) -> tuple[int, str]:
        """(threads, why) the library starts with none of its variables set."""
        if variable.own == "one":
            return 1, "single-threaded unless asked"
        if variable.own == "fixed" and variable.own_limit is not None:
            return variable.own_limit, f"{variable.own_limit} threads, whatever the CPUs"
        if variable.own == "online":
            n, why = self.online, f"the {counted(self.online, 'online CPU')}, whatever its affinity mask"
        elif variable.own == "physical" and self.physical is not None:
            n, why = self.physical, f"the {counted(self.physical, 'physical core')} in its affinity mask"
        else:
            n, why = self.affinity, f"the {counted(self.affinity, 'CPU')} in its affinity mask"
        if variable.quota_aware and self.quota is not None and self.quota < n:
            n, why = self.quota, f"{why}, lowered to the cgroup quota of {self.quota}"
        if variable.own_limit is not None and n > variable.own_limit:
            n, why = variable.own_limit, f"{why}, at most {variable.own_limit} by its own rule"
        if variable.library == "openblas" and self.openblas is not None and n > self.openblas.max_threads:
            n, why = self.openblas.max_threads, f"{why}, at most {self.openblas.max_threads} as built"
        return n, why

    def reads(self, variable: Variable, env: Mapping[str, str], source: str = "") -> tuple[int | None, str]:
        """(threads or None when unknown, why) the library takes under ``env``
        (``source`` names where ``env`` comes from: "inherited ")."""
        for name in (variable.name, *variable.fallbacks):
            text = env.get(name)
            if text is None or not text.strip():
                continue
            first = text.split(",")[0].strip()
            if not first.isdigit() or int(first) < 1:
                return None, f"{source}{name}={text!r} is not a thread count"
            n = int(first)
            if variable.clamps_to_affinity and n > self.affinity:
                return self.affinity, f"{source}{name}={text}, held to the {counted(self.affinity, 'CPU')} of its " \
                    "affinity mask"
            return n, f"{source}{name}={text}"
        return self.default(variable)


@dataclass(frozen=True)
class Overrides:
    """What the command line says, each ``None`` when not given."""

    threads: int | str | None = None
    blas: int | str | None = None
    openmp: int | str | None = None
    workers: int | str | None = None
    cpus: str | None = None
    verify: str | None = None
    share: str | None = None
    #: ``--set VAR=VAL`` in order given.
    env: tuple[tuple[str, str], ...] = ()

    def settings(self) -> dict[str, Setting]:
        out = {}
        for key in ("threads", *APIS, "workers", "cpus", "verify", "share"):
            value = getattr(self, key)
            if value is not None:
                out[key] = Setting(value, Origin(f"flag --{key} {value}"))
        return out


@dataclass(frozen=True)
class EnvChange:
    """Set ``name`` to ``value``, or unset it when ``value`` is None."""

    name: str
    value: str | None
    why: str


@dataclass(frozen=True)
class Plan:
    profile: str
    profile_path: str
    description: str
    env: tuple[EnvChange, ...]
    #: Thread variables tcap does not set, because the library's own choice is
    #: within its cap: value is what the library takes (None: unknown).
    left_alone: tuple[EnvChange, ...]
    #: CPUs to pin to, or None to leave the affinity mask alone.
    pin: tuple[int, ...] | None
    #: The CPUs the program will run on (None when the OS has no mask).
    cpu_set: tuple[int, ...] | None
    cpus: int
    cpus_why: str
    physical: int | None
    workers: int | None
    #: The cap of every thread-count key (threads, blas, openmp, libraries).
    caps: dict[str, int]
    verify: str
    #: "busy": the probes share the launch's CPUs among its busy processes
    #: and threads at run time; "off": every pool stays at its cap.
    share: str
    #: Why each of cpus (the set), workers, verify, share and every cap is so.
    why: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    #: ``cpus = "auto:N"``: N CPUs to book at launch among ``cpu_set``.
    place: int | None = None
    #: The site policy's on_full and wait_timeout, for the booking.
    on_full: str = "share"
    wait_timeout: float = 600.0
    #: "rank 1 of 2 on this node, from Open MPI" and how its CPUs are shared.
    ranks: str | None = None
    #: "rank 3/16 on node07": how the probe names this rank in its warnings.
    rank_label: str | None = None
    #: Said on stderr at every launch: what tcap could not trust about the ranks.
    launch_notes: tuple[str, ...] = ()

    def to_data(self) -> dict[str, Any]:
        """Plain data (JSON and marshal friendly)."""
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["env"] = [[c.name, c.value, c.why] for c in self.env]
        data["left_alone"] = [[c.name, c.value, c.why] for c in self.left_alone]
        for key in ("pin", "cpu_set", "notes", "launch_notes"):
            data[key] = None if data[key] is None else list(data[key])
        return data

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Plan:
        fields = dict(data)
        fields["env"] = tuple(EnvChange(*item) for item in data["env"])
        fields["left_alone"] = tuple(EnvChange(*item) for item in data.get("left_alone", ()))
        for key in ("pin", "cpu_set", "notes", "launch_notes"):
            fields[key] = None if data.get(key) is None else tuple(data[key])
        # A plan stored before sharing existed (a frozen kernel's) did not share.
        fields["share"] = data.get("share", "off")
        if fields["share"] not in SHARE_MODES:
            raise ValueError(f"share: expected one of {', '.join(SHARE_MODES)}, not {fields['share']!r}")
        return cls(**fields)


def uses_physical(profile: Profile, overrides: Overrides) -> bool:
    """Whether resolving needs the core topology (so the launcher reads it)."""
    values = [s.value for s in profile.settings.values()]
    values += [s.value for s in overrides.settings().values()]
    return any(isinstance(v, str) and "physical" in v for v in values)


def resolve(
    profile: Profile,
    machine: Machine,
    overrides: Overrides,
    policy: Policy | None = None,
    inherited: Mapping[str, str] | None = None,
    limits: Sequence[Limit] = (),
) -> Plan:
    """Turn a merged profile, machine facts, flags and the site policy into a Plan.

    ``inherited`` holds the thread variables of the calling environment (what
    the libraries would read without tcap); ``limits`` the build limits of the
    target interpreter's native libraries, where tcap knows them.

    A pipeline of stages, each a function of its inputs alone: the flags over
    the profile, the CPUs (:func:`_cpu_stage`), the caps
    (:func:`_caps_stage`), each variable set or left alone
    (:func:`_variables_stage`, :func:`_followers_stage`), ``[env]`` and
    ``--set`` (:func:`_extra_env_stage`), verification (:func:`_verify_stage`)
    and sharing (:func:`_share_stage`).
    """
    flag_notes: list[str] = []
    settings = _apply_flags(profile.settings, overrides, flag_notes)
    cpu = _cpu_stage(settings, machine, policy)
    caps = _caps_stage(settings, cpu, policy, limits)
    inherited_values = _inherited_values(inherited)
    chosen = _variables_stage(caps, cpu, machine, inherited_values)
    chosen = _followers_stage(chosen, inherited_values, cpu.cpus)
    extra = _extra_env_stage(_extra_settings(profile, overrides), chosen, policy, caps.openblas)
    verify, verify_why = _verify_stage(settings)
    share, share_why = _share_stage(settings, verify)
    notes = [*flag_notes, *cpu.notes, *caps.notes, *extra.notes]
    if caps.capped or extra.capped:
        assert policy is not None
        notes.append(f"policy {policy.origin('max_threads')} capped: {', '.join([*caps.capped, *extra.capped])}")
    why = {"cpu_set": cpu.set_why}
    if caps.workers_why is not None:
        why["workers"] = caps.workers_why
    why.update(caps.why)
    why["verify"] = verify_why
    why["share"] = share_why
    return Plan(
        profile=profile.name,
        profile_path=profile.path,
        description=profile.description,
        env=extra.env,
        left_alone=extra.left_alone,
        pin=cpu.pin,
        cpu_set=cpu.cpu_set,
        cpus=cpu.cpus,
        cpus_why=cpu.cpus_why,
        physical=cpu.physical,
        workers=caps.workers,
        caps=dict(caps.caps),
        verify=verify,
        share=share,
        why=why,
        notes=tuple(notes),
        place=cpu.place,
        on_full=policy.on_full if policy is not None else "share",
        wait_timeout=policy.wait_timeout if policy is not None else 600.0,
        ranks=cpu.ranks,
        rank_label=None if machine.ranks is None else machine.ranks.label(),
        launch_notes=() if machine.ranks is None else machine.ranks.notes,
    )


class CpuStage(NamedTuple):
    """The CPUs a launch gets: what :func:`_cpu_stage` works out."""

    #: CPUs to pin to, or None to leave the affinity mask alone.
    pin: tuple[int, ...] | None
    #: The CPUs the program will run on (None when the OS has no mask).
    cpu_set: tuple[int, ...] | None
    #: ``auto:N``: N CPUs to book at launch among ``cpu_set``.
    place: int | None
    #: The usable CPU count, and why (the plan's ``cpus`` and ``cpus_why``).
    cpus: int
    cpus_why: str
    #: Why the CPU set is what it is (the plan's ``why["cpu_set"]``).
    set_why: str
    #: What tcap says about the ranks of a launcher sharing this node.
    ranks: str | None
    #: Physical cores among the CPU set (None: unknown or booked at launch).
    physical: int | None
    #: The facts expressions see: ``cpus`` and ``physical``.
    facts: dict[str, int]
    notes: tuple[str, ...]


def _cpu_stage(settings: Mapping[str, Setting], machine: Machine, policy: Policy | None) -> CpuStage:
    """The CPU set (the ``cpus`` setting, auto placement, the policy's CPUs),
    the count it leaves, each rank's share of it, and its physical cores."""
    notes: list[str] = []
    cpu_setting = settings.get("cpus")
    place = None
    if cpu_setting is not None and parse_cpu_spec(str(cpu_setting.value))[0] == "auto":
        place = int(parse_cpu_spec(str(cpu_setting.value))[1])  # type: ignore[arg-type]
        pin, cpu_set = None, None if machine.allowed is None else tuple(sorted(machine.allowed))
        if cpu_set is None:
            raise TcapError(
                "cpus: auto placement needs a CPU affinity mask, which this system lacks",
                path=_path(cpu_setting.origin), line=cpu_setting.origin.line,
            )
    else:
        pin, cpu_set = _cpu_set(cpu_setting, machine, notes)
    why = {"cpu_set": "default: all usable CPUs" if cpu_setting is None else str(cpu_setting)}
    if policy is not None:
        chosen = cpu_setting is not None and parse_cpu_spec(str(cpu_setting.value))[0] != "all"
        pin, cpu_set, place = _policy_cpus(policy, pin, cpu_set, place, chosen, why, notes)
    if place is not None:
        assert cpu_set is not None
        if place > len(cpu_set):
            assert cpu_setting is not None
            raise TcapError(
                f"cpus: auto:{place} asks for more than the {len(cpu_set)} CPUs tcap may use "
                f"({format_cpu_list(cpu_set)})",
                path=_path(cpu_setting.origin), line=cpu_setting.origin.line,
            )
        available, available_why = usable(machine, frozenset(cpu_set))
        count = min(place, available)
        count_why = (
            f"auto:{place}: {counted(place, 'CPU')} booked at launch among "
            f"{format_cpu_list(cpu_set)} ({available_why})"
        )
    else:
        count, count_why = usable(machine, None if cpu_set is None else frozenset(cpu_set))
    if machine.allowed is None:
        notes.append("this system has no CPU affinity (macOS, the BSDs, Windows): tcap sets the thread variables "
                     "only (VECLIB_MAXIMUM_THREADS for Accelerate too) and cannot pin CPUs")
    ranks_text = None
    if machine.ranks is not None and place is None:
        pin, cpu_set, count, count_why, ranks_text = _rank_share(
            machine, cpu_setting, pin, cpu_set, count, count_why, notes)
    physical = None
    if machine.cores is not None and cpu_set is not None and place is None:
        physical = len({machine.cores[c] for c in cpu_set if c in machine.cores})
    # One thread per core, but never more than the usable CPUs (a cgroup quota
    # or Slurm allocation smaller than the core count still applies).
    facts = {"cpus": count, "physical": min(physical, count) if physical is not None else count}
    if physical is None and any(isinstance(s.value, str) and "physical" in s.value for s in settings.values()):
        notes.append("the physical core count is unknown here; `physical` stands for the usable CPU count")
    return CpuStage(pin, cpu_set, place, count, count_why, why["cpu_set"], ranks_text, physical, facts,
                    tuple(notes))


class CapsStage(NamedTuple):
    """Every pool's cap: what :func:`_caps_stage` works out."""

    workers: int | None
    workers_why: str | None
    #: The cap of every thread-count key (threads, blas, openmp, then each
    #: library of the variable table), and why.
    caps: dict[str, int]
    why: dict[str, str]
    #: The cap keys a flag or the profile gives (the rest are the default).
    explicit: frozenset[str]
    #: The lowest OpenBLAS build limit known, which every BLAS caller's cap obeys.
    openblas: Limit | None
    notes: tuple[str, ...]
    #: Cap keys the policy's max_threads lowered, in order.
    capped: tuple[str, ...]


def _caps_stage(
    settings: Mapping[str, Setting], cpu: CpuStage, policy: Policy | None, limits: Sequence[Limit]
) -> CapsStage:
    """The workers, the default cap (``cpus / workers`` or the usable CPUs),
    the explicit caps, each lowered to an OpenBLAS build limit for the pools
    that call into it and to the policy's max_threads."""
    notes: list[str] = []
    capped: list[str] = []
    count = cpu.cpus

    def number(key: str) -> tuple[int, str] | None:
        setting = settings.get(key)
        if setting is None:
            return None
        return _evaluate(setting, cpu.facts)

    workers_value = number("workers")
    workers = workers_value[0] if workers_value else None
    if workers:
        default = max(1, count // workers)
        default_why = f"default: cpus / workers = {count} / {workers} -> {default}"
    else:
        default, default_why = count, f"default: the usable CPUs ({count})"

    explicit = {key: found for key in CAP_KEYS if (found := number(key)) is not None}

    ceiling = policy.max_threads if policy is not None else None
    openblas_limit = min((lim for lim in limits if lim.internal_api == "openblas"), default=None,
                         key=lambda lim: lim.max_threads)

    def cap(keys: tuple[str, ...]) -> tuple[int, str]:
        value, reason = next((explicit[k] for k in keys if k in explicit), (default, default_why))
        if openblas_limit is not None and keys[0] in BLAS_CALLERS and value > openblas_limit.max_threads:
            # Every thread of these pools may be inside OpenBLAS at once; past
            # its compiled-in MAX_THREADS its buffer table overflows.
            limited = openblas_limit.max_threads
            built = f"{openblas_limit.what} is built for at most {limited} threads"
            if any(k in explicit for k in keys) and f"{reason} lowered to {limited}: {built}" not in notes:
                notes.append(f"{reason} lowered to {limited}: {built}")
            value, reason = limited, f"{reason}; lowered to {limited}: {built}"
        if ceiling is not None and value > ceiling:
            assert policy is not None
            if keys[0] not in capped:
                capped.append(keys[0])
            return ceiling, f"{reason}; capped to {ceiling} by policy {policy.origin('max_threads')}"
        return value, reason

    caps: dict[str, int] = {}
    why: dict[str, str] = {}
    for key in ("threads", *APIS):
        caps[key], why[key] = cap((key, "threads"))
    for variable in VARIABLES:
        if not variable.by_threads and variable.library not in explicit:
            continue  # only its own key sizes it (an I/O pool): no cap
        if variable.basis != "workers" and not variable.own.startswith("follows:"):
            caps[variable.library], why[variable.library] = cap(keys_for(variable))
    return CapsStage(workers, None if workers_value is None else workers_value[1], caps, why,
                     frozenset(explicit), openblas_limit, tuple(notes), tuple(capped))


class Chosen(NamedTuple):
    """The thread variables tcap sets (``env``) and leaves alone, and the
    value tcap computed for each (what a policy-refused ``[env]`` keeps)."""

    env: tuple[EnvChange, ...]
    left_alone: tuple[EnvChange, ...]
    computed: dict[str, str]


def _inherited_values(inherited: Mapping[str, str] | None) -> dict[str, str]:
    """The table's variables among the inherited ones."""
    return {v.name: inherited[v.name] for v in VARIABLES if inherited and v.name in inherited}


def _variables_stage(
    caps: CapsStage, cpu: CpuStage, machine: Machine, inherited_values: Mapping[str, str]
) -> Chosen:
    """Each variable of the table (followers aside) set or left alone: left
    alone when nothing asked for it and its library, by itself and as tcap
    leaves the other variables, stays within its cap."""
    count, workers = cpu.cpus, caps.workers
    affinity = cpu.place if cpu.place is not None else (len(cpu.cpu_set) if cpu.cpu_set is not None else count)
    own = _OwnChoice(affinity, machine, cpu.physical, caps.openblas)
    final = dict(inherited_values)  # the thread variables as the program will see them, so far
    env: list[EnvChange] = []
    left: list[EnvChange] = []
    computed: dict[str, str] = {}
    for variable in VARIABLES:
        if variable.own.startswith("follows:"):
            continue
        if variable.basis == "workers":
            asked = workers is not None
            value, reason = (workers, caps.workers_why or "") if workers else (count, f"the usable CPUs ({count})")
        elif variable.library not in caps.caps:
            # Not sized by threads, and its own key is not set: left as it is.
            now, now_why = own.reads(variable, inherited_values, "inherited ")
            label = variable.label or variable.library
            left.append(EnvChange(variable.name, None if now is None else str(now),
                                  f"left alone: {label} takes {now} ({now_why}); its threads wait rather than "
                                  f"compute, so only `{variable.library}` sizes it, not `threads`"))
            continue
        else:
            asked = any(key in caps.explicit for key in keys_for(variable))
            value, reason = caps.caps[variable.library], caps.why[variable.library]
        computed[variable.name] = str(value)
        alone, alone_why = own.reads(variable, inherited_values, "inherited ")
        target = value if asked or alone is None else min(alone, value)
        now, now_why = own.reads(variable, final)
        label = variable.label or variable.library
        # Left alone only when the library, by itself and as tcap leaves the
        # other variables, stays within the cap; set outright otherwise, so a
        # library's own variable (not a fallback it shares) says its cap.
        if not asked and alone is not None and alone <= value and now == target:
            within = f"within the cap of {value} ({reason})"
            left.append(EnvChange(variable.name, str(now), f"left alone: {label} takes {now} ({now_why}), {within}"))
            continue
        if asked:
            text = reason
        elif alone is None:
            text = f"{reason}; {alone_why}"
        elif alone > value:
            text = f"{reason}; {label} alone would take {alone} ({alone_why})"
        else:
            changed = ", ".join(
                f"{n}={final[n]}" for n in variable.fallbacks if final.get(n) != inherited_values.get(n)
            )
            text = f"{label} takes {alone} on its own ({alone_why}); set so that {changed} does not change it"
        env.append(EnvChange(variable.name, str(target), text))
        final[variable.name] = str(target)
    return Chosen(tuple(env), tuple(left), computed)


def _followers_stage(chosen: Chosen, inherited_values: Mapping[str, str], count: int) -> Chosen:
    """Each follower (a variable that only sizes the pool its leader sizes,
    as GOTO_NUM_THREADS does OPENBLAS_NUM_THREADS's) set with its leader, or
    left alone as it is; then both lists in the table's order."""
    env, left, computed = list(chosen.env), list(chosen.left_alone), dict(chosen.computed)
    for variable in VARIABLES:
        if not variable.own.startswith("follows:"):
            continue
        leader = variable.own.partition(":")[2]
        led = next((c for c in env if c.name == leader), None)
        computed[variable.name] = computed.get(leader, str(count))
        if led is not None:
            env.append(EnvChange(variable.name, led.value, led.why))
        else:
            shown = inherited_values.get(variable.name) or next((c.value for c in left if c.name == leader), None)
            left.append(EnvChange(variable.name, shown, f"left alone, as {leader} is"))
    order = {v.name: i for i, v in enumerate(VARIABLES)}
    env.sort(key=lambda change: order[change.name])
    left.sort(key=lambda change: order[change.name])
    return Chosen(tuple(env), tuple(left), computed)


def _extra_settings(profile: Profile, overrides: Overrides) -> dict[str, Setting]:
    """The profile's ``[env]`` with each ``--set`` over it."""
    extra = dict(profile.env)
    for name, text in overrides.env:
        extra[name] = Setting(text, Origin(f"flag --set {name}={text}"))
    return extra


class Extra(NamedTuple):
    """The plan's variables once ``[env]`` and ``--set`` are in."""

    env: tuple[EnvChange, ...]
    left_alone: tuple[EnvChange, ...]
    notes: tuple[str, ...]
    #: The variables the policy's max_threads lowered or refused, in order.
    capped: tuple[str, ...]


def _extra_env_stage(
    extra: Mapping[str, Setting], chosen: Chosen, policy: Policy | None, openblas: Limit | None
) -> Extra:
    """Each ``[env]``/``--set`` variable over what tcap chose (it is no longer
    left alone), its thread counts held to the policy's max_threads and, for
    a BLAS caller, to the OpenBLAS build limit; new names come last."""
    env, left = list(chosen.env), list(chosen.left_alone)
    notes: list[str] = []
    capped: list[str] = []
    ceiling = policy.max_threads if policy is not None else None
    by_name = {change.name: i for i, change in enumerate(env)}
    thread_variables = {v.name for v in VARIABLES if v.basis != "workers"}
    for name, setting in extra.items():
        _check_env_value(name, setting, thread_variables)
        left = [change for change in left if change.name != name]
        change = EnvChange(name, setting.value, str(setting))
        if ceiling is not None and name in thread_variables:
            assert policy is not None
            clamped = clamp_counts(setting.value, ceiling)
            rule = f"policy {policy.origin('max_threads')}"
            if clamped is None:
                # Unset or unreadable: the library would use every CPU. tcap's capped value stays.
                kept = chosen.computed.get(name) or str(ceiling)
                change = EnvChange(name, kept, f"{setting} refused by {rule}: kept {kept}")
                capped.append(name)
            elif clamped != setting.value:
                change = EnvChange(name, clamped, f"{setting}; capped to {ceiling} by {rule}")
                capped.append(name)
        if openblas is not None and name in BLAS_CALLER_VARIABLES and change.value is not None:
            limited = clamp_counts(change.value, openblas.max_threads)
            if limited is not None and limited != change.value:
                built = f"{openblas.what} is built for at most {openblas.max_threads} threads"
                change = EnvChange(name, limited, f"{change.why}; lowered: {built}")
                notes.append(f"{setting} lowered to {limited}: {built}")
        if name in by_name:
            env[by_name[name]] = change
        else:
            by_name[name] = len(env)
            env.append(change)
    return Extra(tuple(env), tuple(left), tuple(notes), tuple(capped))


def _verify_stage(settings: Mapping[str, Setting]) -> tuple[str, str]:
    """(verify mode, why): the setting's, else DEFAULT_VERIFY."""
    setting = settings.get("verify")
    if setting is None:
        return DEFAULT_VERIFY, "default"
    return str(setting.value), str(setting)


def _share_stage(settings: Mapping[str, Setting], verify: str) -> tuple[str, str]:
    """(share mode, why): the setting's, else DEFAULT_SHARE; "off" whatever
    is asked when verify is "off", as there is then no probe to share with."""
    setting = settings.get("share")
    if verify == "off":
        if setting is None:
            return "off", "verify is off: there is no probe to share the CPUs with"
        if setting.value == "off":
            return "off", str(setting)
        return "off", f"{setting} does not apply: verify is off, so there is no probe to share the CPUs with"
    if setting is None:
        return DEFAULT_SHARE, "default"
    return str(setting.value), str(setting)


def _rank_share(
    machine: Machine, setting: Setting | None, pin: tuple[int, ...] | None, cpu_set: tuple[int, ...] | None,
    count: int, count_why: str, notes: list[str],
) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None, int, str, str]:
    """A rank that shares its CPUs with other local ranks plans for its share
    of them; ``cpus = "rank"`` pins it to its own block. Returns (pin, CPU
    set, count, why, what tcap says about the ranks)."""
    from tcap.ranks import block, share

    ranks = machine.ranks
    assert ranks is not None
    notes.extend(ranks.notes)
    pinned_rank = setting is not None and parse_cpu_spec(str(setting.value))[0] == "rank"
    if cpu_set is None:  # no affinity mask: divide the count
        sharers, index, how = ranks.local_size, ranks.local_rank, "no affinity mask to tell the ranks apart"
        cut = max(1, count // sharers)
        return pin, cpu_set, min(count, cut), f"{count_why}; {sharers} ranks share them ({how}): {cut} each", \
            f"{ranks.text()}; {how}"
    own = frozenset(cpu_set) if pin is None else frozenset(machine.allowed or cpu_set)
    sharers, index, how = share(ranks, own, machine.launcher_cpus or machine.online or len(own))
    text = f"{ranks.text()}; {how}"
    if sharers == 1 and not pinned_rank:
        return pin, cpu_set, count, count_why, text
    if pinned_rank and sharers == 1:
        return pin, cpu_set, count, f"{count_why}; cpus = rank: the launcher already gave this rank its own " \
            f"CPUs, kept as they are", text
    mine = block(cpu_set, sharers, index, machine.cores)
    sizes = "-".join(map(str, sorted({len(block(cpu_set, sharers, i, machine.cores)) for i in range(sharers)})))
    even = "-" not in sizes
    if pinned_rank:
        available, available_why = usable(machine, frozenset(mine))
        uneven = "" if even else f" (blocks of {sizes}: {len(cpu_set)} do not divide by {sharers})"
        return mine, mine, min(available, len(mine)), f"cpus = rank: block {index + 1} of {sharers} of " \
            f"{_cpus_text(cpu_set)}, shared by {sharers} local ranks{uneven} ({available_why})", text
    uneven = "" if even else f"; {len(cpu_set)} do not divide by {sharers}: shares of {sizes}"
    share_count = min(count, len(mine))
    return pin, cpu_set, share_count, f"{count_why}; shared by {sharers} local ranks: this rank's share is " \
        f"{share_count}{uneven}", text


def _policy_cpus(
    policy: Policy,
    pin: tuple[int, ...] | None,
    cpu_set: tuple[int, ...] | None,
    place: int | None,
    chosen: bool,
    why: dict[str, str],
    notes: list[str],
) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None, int | None]:
    """The site policy's allowed_cpus and max_cpus applied to the CPU set.

    A launch over max_cpus keeps the first max_cpus CPUs of a set the user
    chose; without a choice it books max_cpus CPUs (as ``auto:N``), so that
    capped launches spread over the machine instead of all taking CPU 0..N-1.
    """
    if policy.allowed_cpus is not None:
        if cpu_set is None:
            raise TcapError(
                "allowed_cpus: this system has no CPU affinity mask to restrict", path=policy.path
            )
        kept = tuple(c for c in cpu_set if c in policy.allowed_cpus)
        if not kept:
            raise TcapError(
                f"allowed_cpus: none of the CPUs {format_cpu_list(cpu_set)} is allowed by the site policy "
                f"({policy.origin('allowed_cpus')})",
                path=policy.path,
            )
        if kept != cpu_set:
            notes.append(
                f"policy {policy.origin('allowed_cpus')}: {_cpus_text(set(cpu_set) - set(kept))} left out"
            )
            why["cpu_set"] += f"; restricted to {format_cpu_list(kept)} by policy {policy.origin('allowed_cpus')}"
            cpu_set = kept
            pin = None if place is not None else kept
    if policy.max_cpus is not None:
        if place is not None and place > policy.max_cpus:
            notes.append(f"policy {policy.origin('max_cpus')}: auto:{place} reduced to auto:{policy.max_cpus}")
            place = policy.max_cpus
        elif place is None and cpu_set is not None and len(cpu_set) > policy.max_cpus and not chosen:
            notes.append(
                f"policy {policy.origin('max_cpus')}: {len(cpu_set)} CPUs reduced to {policy.max_cpus}, "
                "booked at launch (auto placement)"
            )
            why["cpu_set"] += f"; auto:{policy.max_cpus} by policy {policy.origin('max_cpus')}"
            pin, place = None, policy.max_cpus
        elif place is None and cpu_set is not None and len(cpu_set) > policy.max_cpus:
            kept = cpu_set[: policy.max_cpus]
            notes.append(
                f"policy {policy.origin('max_cpus')}: {len(cpu_set)} CPUs reduced to {_cpus_text(kept)}"
            )
            why["cpu_set"] += f"; first {policy.max_cpus} kept by policy {policy.origin('max_cpus')}"
            cpu_set, pin = kept, kept
    return pin, cpu_set, place


def _apply_flags(profile_settings: Mapping[str, Setting], overrides: Overrides, notes: list[str]) -> dict[str, Setting]:
    settings = dict(profile_settings)
    flags = overrides.settings()
    for key, setting in flags.items():
        if key in CAP_KEYS or key == "workers":
            problem = count_problem(setting.value)
            if problem:
                raise TcapError(f"--{key}: {problem}")
        if key == "cpus":
            try:
                parse_cpu_spec(str(setting.value))
            except ValueError as error:
                raise TcapError(f"--cpus: {error}") from None
        if key == "share" and setting.value not in SHARE_MODES:
            raise TcapError(f"--share must be one of {', '.join(SHARE_MODES)}, not {setting.value!r}")
        # A general flag replaces the profile's more specific keys under it.
        if key in ("threads", *APIS):
            for narrower in _narrower(key):
                dropped = settings.pop(narrower, None)
                if dropped is not None and narrower not in flags:
                    notes.append(f"{setting.origin} replaces {dropped.origin} = {dropped.value!r}")
        settings[key] = setting
    return settings


def _check_env_value(name: str, setting: Setting, thread_variables: set[str]) -> None:
    """An [env] or --set value tcap may export: bounded, no NUL, and a thread
    count within MAX_THREADS (OpenMP's per-level lists too)."""
    import re

    value = setting.value
    if value is None:
        return
    origin = setting.origin
    problem = None
    if len(value) > MAX_VALUE:
        problem = f"{len(value)} characters, above tcap's limit of {MAX_VALUE}"
    elif "\0" in value:
        problem = "a NUL character, which no environment variable can hold"
    elif name in thread_variables:
        numbers = re.findall(r"\d+", value)
        if any(len(n) > MAX_DIGITS or int(n) > MAX_THREADS for n in numbers):
            problem = f"{value[:40]!r} asks for more than tcap's ceiling of {MAX_THREADS} threads per pool"
        elif any(int(n) == 0 for n in numbers):
            problem = f"{value[:40]!r} asks for 0 threads; a thread count is at least 1"
    if problem:
        raise TcapError(f"{origin.key or origin.source}: {problem}", path=_path(origin), line=origin.line)


def _narrower(key: str) -> list[str]:
    """Cap keys more specific than ``key``."""
    if key == "threads":
        # A key threads does not size (an I/O pool's) stays.
        return [k for k in CAP_KEYS if k != "threads" and all(v.by_threads for v in VARIABLES if v.library == k)]
    return [v.library for v in VARIABLES if v.api == key and v.library != key]


def _evaluate(setting: Setting, facts: Mapping[str, int]) -> tuple[int, str]:
    value = setting.value
    if isinstance(value, int):
        return value, str(setting)
    from tcap.expr import Expr, ExprError

    origin = setting.origin
    try:
        result = Expr(value).evaluate(facts)
    except ExprError as error:
        raise TcapError(f"{origin.key or origin.source}: {error}", path=_path(origin), line=origin.line) from None
    if result > MAX_THREADS:
        raise TcapError(f"{origin.key or origin.source}: {value!r} gives {result}, above tcap's ceiling of "
                        f"{MAX_THREADS} threads per pool", path=_path(origin), line=origin.line)
    shown = ", ".join(f"{k}={v}" for k, v in facts.items() if k in value)
    return result, f"{setting} -> {result} ({shown})"


def _path(origin: Origin) -> str | None:
    return None if origin.source.startswith("flag ") else origin.source


def _cpu_set(
    setting: Setting | None, machine: Machine, notes: list[str]
) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    """(CPUs to pin to or None, the CPUs the program will have)."""
    allowed = machine.allowed
    current = None if allowed is None else tuple(sorted(allowed))
    if setting is None:
        return None, current
    kind, argument = parse_cpu_spec(str(setting.value))
    if kind == "all":
        return None, current
    if kind == "rank":
        if machine.ranks is None:
            from tcap.ranks import VARIABLES

            origin = setting.origin
            raise TcapError(
                f"cpus: rank: this process is not one of several ranks of a launcher on this node (tcap looked "
                f"for {', '.join(VARIABLES)})", path=_path(origin), line=origin.line,
            )
        return None, current  # the block is cut once the sharing is known (_rank_share)

    def fail(message: str) -> TcapError:
        origin = setting.origin
        return TcapError(f"cpus: {message}", path=_path(origin), line=origin.line)

    if allowed is None or current is None:
        raise fail("this system has no CPU affinity mask to set; use cpus = \"all\"")
    if kind == "list":
        assert isinstance(argument, frozenset)
        outside = argument - allowed
        if outside:
            raise fail(
                f"CPU {format_cpu_list(outside)} outside the usable set {format_cpu_list(allowed)}"
            )
        chosen = tuple(sorted(argument))
    elif kind == "first":
        assert isinstance(argument, int)
        if argument > len(current):
            usable_text = f"{counted(len(current), 'usable CPU')} ({format_cpu_list(allowed)})"
            raise fail(f"first:{argument} asks for more than the {usable_text}")
        chosen = current[:argument]
    else:  # physical
        if machine.cores is None:
            notes.append("cpus = \"physical\": the core topology is unknown here, so the CPUs are left as they are")
            return None, current
        seen: set[tuple[int, int]] = set()
        picked = []
        for cpu in current:
            core = machine.cores.get(cpu)
            if core is not None and core not in seen:
                seen.add(core)
                picked.append(cpu)
        chosen = tuple(picked)
    return (None if chosen == current else chosen), chosen


def on_planned_cpus(plan: Plan) -> list[EnvChange]:
    """The variables tcap leaves alone, set to what each library takes on the
    plan's CPUs: for a launch that cannot pin (a shell, an alias without
    taskset), where the libraries would otherwise count every CPU."""
    return [change for change in plan.left_alone if change.value is not None]


def inherited_overrides(plan: Plan, environ: Mapping[str, str]) -> list[tuple[str, str, str | None]]:
    """(variable, inherited value, new value or None) for each value tcap replaces."""
    out = []
    for change in plan.env:
        old = environ.get(change.name)
        if old is not None and old != change.value:
            out.append((change.name, old, change.value))
    return out


def _cpus_text(cpus: tuple[int, ...] | set[int]) -> str:
    return ("CPU " if len(cpus) == 1 else "CPUs ") + format_cpu_list(cpus)


def clamp_counts(value: str | None, ceiling: int) -> str | None:
    """A thread variable's value under ``ceiling``: a count or OpenMP's list
    of counts per nesting level ("8,2", "+4") clamped item by item; None when
    it is unset or not counts at all (libraries then use every CPU)."""
    import re

    parts = value.split(",") if isinstance(value, str) else []
    if not parts or not all(re.fullmatch(r"\s*\+?\d+\s*", part) for part in parts):
        return None
    counts = [int(part) for part in parts]
    if max(counts) <= ceiling:
        return value
    return ",".join(str(min(count, ceiling)) for count in counts)

"""The stages of tcap.plan.resolve, one by one, on concrete inputs; and the
``share`` setting through them (the flag, the profile key, the plan data)."""

from __future__ import annotations

import json

import pytest

from tcap import plan as planmod
from tcap.errors import TcapError
from tcap.machine import Machine
from tcap.plan import (
    DEFAULT_SHARE,
    CapsStage,
    Chosen,
    CpuStage,
    EnvChange,
    Limit,
    Overrides,
    Plan,
    _caps_stage,
    _cpu_stage,
    _extra_env_stage,
    _extra_settings,
    _followers_stage,
    _share_stage,
    _variables_stage,
    _verify_stage,
    resolve,
)
from tcap.policy import Policy
from tcap.profiles import Origin, Profile, Setting
from tcap.variables import CAP_KEYS, VARIABLES

PATH = "/profiles/stage.toml"
EIGHT = Machine(frozenset(range(8)))
FOLLOWERS = [v.name for v in VARIABLES if v.own.startswith("follows:")]
LEADERS = [v.name for v in VARIABLES if not v.own.startswith("follows:")]
#: Keys only their own setting sizes (Arrow's I/O threads wait rather than compute): absent by default.
OWN_ONLY = {v.library for v in VARIABLES if not v.by_threads}
SIZED = [key for key in CAP_KEYS if key not in OWN_ONLY]
OPENBLAS = Limit("openblas", 64, "numpy's OpenBLAS 0.3.31")


def settings(**values: object) -> dict[str, Setting]:
    """Profile settings; each key's line is its position + 1."""
    return {key: Setting(value, Origin(PATH, line, key)) for line, (key, value) in enumerate(values.items(), 1)}


def smt(cores: int, **kwargs: object) -> Machine:
    layout = {cpu: (0, cpu % cores) for cpu in range(2 * cores)}
    return Machine(frozenset(layout), cores=layout, **kwargs)  # type: ignore[arg-type]


def cpu_of(machine: Machine = EIGHT, policy: Policy | None = None, **values: object) -> CpuStage:
    return _cpu_stage(settings(**values), machine, policy)


def caps_of(machine: Machine = EIGHT, policy: Policy | None = None, limits: tuple[Limit, ...] = (),
            **values: object) -> CapsStage:
    given = settings(**values)
    return _caps_stage(given, _cpu_stage(given, machine, policy), policy, limits)


# --- _cpu_stage -----------------------------------------------------------------

def test_cpu_stage_default_is_every_usable_cpu_unpinned():
    cpu = cpu_of()
    assert cpu == CpuStage(
        pin=None, cpu_set=tuple(range(8)), place=None, cpus=8, cpus_why="8 CPUs in the set 0-7",
        set_why="default: all usable CPUs", ranks=None, physical=None, facts={"cpus": 8, "physical": 8}, notes=(),
    )


def test_cpu_stage_first_n_pins_and_counts_them():
    cpu = cpu_of(cpus="first:3")
    assert (cpu.pin, cpu.cpu_set, cpu.cpus) == ((0, 1, 2), (0, 1, 2), 3)
    assert cpu.set_why == f"{PATH}:1 cpus = 'first:3'"
    assert cpu.cpus_why == "3 CPUs in the set 0-2"
    assert cpu.facts == {"cpus": 3, "physical": 3}


def test_cpu_stage_auto_books_at_launch():
    cpu = cpu_of(cpus="auto:3")
    assert (cpu.pin, cpu.cpu_set, cpu.place, cpu.cpus) == (None, tuple(range(8)), 3, 3)
    assert cpu.cpus_why == "auto:3: 3 CPUs booked at launch among 0-7 (8 CPUs in the set 0-7)"
    assert cpu.physical is None


def test_cpu_stage_auto_beyond_the_usable_cpus_names_the_line():
    with pytest.raises(TcapError) as caught:
        cpu_of(threads=2, cpus="auto:9")
    assert caught.value.path == PATH and caught.value.line == 2
    assert "auto:9 asks for more than the 8 CPUs tcap may use (0-7)" in caught.value.message


def test_cpu_stage_auto_without_a_mask_is_an_error():
    with pytest.raises(TcapError, match="auto placement needs a CPU affinity mask"):
        cpu_of(Machine(None, online=4), cpus="auto:2")


def test_cpu_stage_physical_takes_one_thread_per_core():
    cpu = cpu_of(smt(4), cpus="physical")
    assert (cpu.pin, cpu.physical, cpu.cpus) == ((0, 1, 2, 3), 4, 4)
    assert cpu.facts == {"cpus": 4, "physical": 4}


def test_cpu_stage_physical_fact_is_held_to_the_quota():
    cpu = cpu_of(smt(4, quota=3.0, quota_source="q"))
    assert (cpu.cpus, cpu.physical) == (3, 4)
    assert cpu.facts == {"cpus": 3, "physical": 3}
    assert cpu.cpus_why == "8 CPUs in the set 0-7; cgroup quota 3 CPUs (q) -> 3"


def test_cpu_stage_notes_an_unknown_core_count_only_when_asked_for():
    assert cpu_of(threads="cpus").notes == ()
    assert cpu_of(threads="physical").notes == (
        "the physical core count is unknown here; `physical` stands for the usable CPU count",)


def test_cpu_stage_without_affinity_says_so():
    cpu = cpu_of(Machine(None, online=6))
    assert (cpu.pin, cpu.cpu_set, cpu.cpus) == (None, None, 6)
    assert cpu.notes[0].startswith("this system has no CPU affinity (macOS, the BSDs, Windows)")


def test_cpu_stage_policy_books_max_cpus_for_a_launch_that_did_not_choose():
    policy = Policy("/etc/tcap/policy.toml", max_cpus=2, origins={"max_cpus": "/etc/tcap/policy.toml:1 max_cpus = 2"})
    cpu = cpu_of(policy=policy)
    assert (cpu.pin, cpu.place, cpu.cpus) == (None, 2, 2)
    assert cpu.set_why == "default: all usable CPUs; auto:2 by policy /etc/tcap/policy.toml:1 max_cpus = 2"
    assert cpu.notes == ("policy /etc/tcap/policy.toml:1 max_cpus = 2: 8 CPUs reduced to 2, booked at launch "
                         "(auto placement)",)


def test_cpu_stage_policy_keeps_the_first_max_cpus_of_a_chosen_set():
    policy = Policy("/p.toml", max_cpus=2)
    cpu = cpu_of(policy=policy, cpus="4-7")
    assert (cpu.pin, cpu.cpu_set, cpu.place, cpu.cpus) == ((4, 5), (4, 5), None, 2)
    assert cpu.set_why == f"{PATH}:1 cpus = '4-7'; first 2 kept by policy /p.toml max_cpus"


# --- _caps_stage ----------------------------------------------------------------

def test_caps_stage_default_is_the_usable_cpus_for_every_key():
    caps = caps_of()
    assert list(caps.caps) == SIZED
    assert set(caps.caps.values()) == {8}
    assert set(caps.why.values()) == {"default: the usable CPUs (8)"}
    assert (caps.workers, caps.workers_why, caps.explicit, caps.openblas) == (None, None, frozenset(), None)
    assert (caps.notes, caps.capped) == ((), ())


def test_caps_stage_workers_split_the_default_and_explicit_keys_win():
    caps = caps_of(workers=3, blas=1)
    assert (caps.workers, caps.workers_why) == (3, f"{PATH}:1 workers = 3")
    assert caps.explicit == frozenset({"blas"})
    assert caps.caps["threads"] == caps.caps["openmp"] == caps.caps["numba"] == 2
    assert caps.why["openmp"] == "default: cpus / workers = 8 / 3 -> 2"
    assert caps.caps["blas"] == caps.caps["openblas"] == caps.caps["mkl"] == 1
    assert caps.why["openblas"] == f"{PATH}:2 blas = 1"


def test_caps_stage_expressions_see_the_cpu_facts():
    caps = caps_of(smt(4), threads="physical - 1", cpus="physical")
    assert caps.caps["threads"] == caps.caps["numexpr"] == 3
    assert caps.why["numexpr"] == f"{PATH}:1 threads = 'physical - 1' -> 3 (physical=4)"


def test_caps_stage_lowers_the_blas_callers_to_the_openblas_build_limit():
    caps = caps_of(Machine(frozenset(range(128))), limits=(OPENBLAS, Limit("openblas", 96, "other")), openmp=100)
    built = "numpy's OpenBLAS 0.3.31 is built for at most 64 threads"
    assert caps.openblas == OPENBLAS  # the lowest limit of all
    assert caps.caps["openmp"] == caps.caps["openblas"] == 64
    assert caps.caps["threads"] == caps.caps["blas"] == caps.caps["mkl"] == 128  # not BLAS callers
    assert caps.why["openmp"] == f"{PATH}:1 openmp = 100; lowered to 64: {built}"
    # Said once for the explicit key; the default lowered is no surprise.
    assert caps.notes == (f"{PATH}:1 openmp = 100 lowered to 64: {built}",)


def test_caps_stage_policy_ceiling_lists_what_it_capped_once_each():
    policy = Policy("/p.toml", max_threads=3, origins={"max_threads": "/p.toml:2 max_threads = 3"})
    caps = caps_of(policy=policy, blas=2)
    assert caps.caps["blas"] == caps.caps["openblas"] == 2
    assert caps.caps["threads"] == caps.caps["openmp"] == caps.caps["blosc"] == 3
    assert caps.why["openmp"] == "default: the usable CPUs (8); capped to 3 by policy /p.toml:2 max_threads = 3"
    assert caps.capped == tuple(k for k in SIZED if k not in ("blas", "openblas", "mkl", "veclib", "blis"))


def test_caps_stage_bad_expression_names_its_line():
    with pytest.raises(TcapError) as caught:
        caps_of(threads=2, openmp="cpus / 0")
    assert (caught.value.path, caught.value.line) == (PATH, 2)


# --- _variables_stage and _followers_stage --------------------------------------

def chosen_of(machine: Machine = EIGHT, inherited: dict[str, str] | None = None, **values: object) -> Chosen:
    given = settings(**values)
    cpu = _cpu_stage(given, machine, None)
    return _variables_stage(_caps_stage(given, cpu, None, ()), cpu, machine, inherited or {})


def test_variables_stage_leaves_alone_what_stays_within_its_cap():
    chosen = chosen_of()
    assert chosen.env == ()
    assert [c.name for c in chosen.left_alone] == LEADERS  # followers come in the next stage
    omp = chosen.left_alone[0]
    assert omp == EnvChange("OMP_NUM_THREADS", "8", "left alone: OpenMP takes 8 (the 8 CPUs in its affinity mask), "
                            "within the cap of 8 (default: the usable CPUs (8))")
    assert chosen.computed == {v.name: "8" for v in VARIABLES if v.name in LEADERS and v.by_threads}


def test_variables_stage_sets_an_asked_cap_and_what_it_would_change():
    chosen = chosen_of(openmp=2)
    env = {c.name: (c.value, c.why) for c in chosen.env}
    assert env["OMP_NUM_THREADS"] == ("2", f"{PATH}:1 openmp = 2")
    # BLIS falls back to OMP_NUM_THREADS: set to its own choice so that 2 does not reach it.
    assert env["BLIS_NUM_THREADS"] == ("1", "BLIS takes 1 on its own (single-threaded unless asked); set so that "
                                            "OMP_NUM_THREADS=2 does not change it")
    assert env["OPENBLAS_NUM_THREADS"] == ("8", "OpenBLAS takes 8 on its own (the 8 CPUs in its affinity mask); set "
                                                "so that OMP_NUM_THREADS=2 does not change it")
    assert "NUMBA_NUM_THREADS" in {c.name for c in chosen.left_alone}  # no fallback to OpenMP's variable


def test_variables_stage_replaces_an_inherited_value_over_the_cap():
    chosen = chosen_of(inherited={"NUMBA_NUM_THREADS": "64"})
    assert chosen.env == (EnvChange("NUMBA_NUM_THREADS", "8", "default: the usable CPUs (8); Numba alone would take "
                                    "64 (inherited NUMBA_NUM_THREADS=64)"),)


def test_variables_stage_workers_set_loky():
    chosen = chosen_of(workers=4)
    loky = next(c for c in chosen.env if c.name == "LOKY_MAX_CPU_COUNT")
    assert loky == EnvChange("LOKY_MAX_CPU_COUNT", "4", f"{PATH}:1 workers = 4")
    assert chosen.computed["OMP_NUM_THREADS"] == "2"


def test_followers_stage_follows_the_leader_and_sorts():
    led = EnvChange("OPENBLAS_NUM_THREADS", "2", "because")
    extra = EnvChange("OMP_NUM_THREADS", "3", "also")
    numexpr = EnvChange("NUMEXPR_NUM_THREADS", "5", "left alone: numexpr takes 5")
    chosen = Chosen((led, extra), (numexpr,), {"OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "3"})
    out = _followers_stage(chosen, {}, 8)
    assert out.env == (extra, led, EnvChange("GOTO_NUM_THREADS", "2", "because"))
    left = {c.name: c for c in out.left_alone}
    assert left["NUMEXPR_MAX_THREADS"] == EnvChange("NUMEXPR_MAX_THREADS", "5", "left alone, as NUMEXPR_NUM_THREADS is")
    assert out.computed["GOTO_NUM_THREADS"] == "2"
    assert out.computed["NUMEXPR_MAX_THREADS"] == "8"  # no computed leader: the usable CPUs
    assert set(FOLLOWERS) <= {c.name for c in (*out.env, *out.left_alone)}


def test_followers_stage_keeps_an_inherited_follower_shown():
    out = _followers_stage(Chosen((), (), {}), {"GOTO_NUM_THREADS": "4"}, 8)
    goto = next(c for c in out.left_alone if c.name == "GOTO_NUM_THREADS")
    assert goto.value == "4"


# --- _extra_env_stage -----------------------------------------------------------

def extra_of(chosen: Chosen, policy: Policy | None = None, limit: Limit | None = None, **env: str | None) -> tuple:
    extra = {name: Setting(value, Origin(PATH, 100 + i, f"env.{name}")) for i, (name, value) in enumerate(env.items())}
    return _extra_env_stage(extra, chosen, policy, limit)


def test_extra_env_stage_replaces_appends_and_is_no_longer_left_alone():
    chosen = _followers_stage(chosen_of(openmp=2), {}, 8)
    out = extra_of(chosen, OMP_NUM_THREADS="4", MALLOC_ARENA_MAX="2", NUMBA_NUM_THREADS=None)
    names = [c.name for c in out.env]
    assert names.index("OMP_NUM_THREADS") == [c.name for c in chosen.env].index("OMP_NUM_THREADS")
    assert names[-2:] == ["MALLOC_ARENA_MAX", "NUMBA_NUM_THREADS"]  # new names last, in order
    env = {c.name: (c.value, c.why) for c in out.env}
    assert env["OMP_NUM_THREADS"] == ("4", f"{PATH}:100 env.OMP_NUM_THREADS = '4'")
    assert env["NUMBA_NUM_THREADS"] == (None, f"{PATH}:102 env.NUMBA_NUM_THREADS = false")
    assert "NUMBA_NUM_THREADS" not in {c.name for c in out.left_alone}
    assert (out.notes, out.capped) == ((), ())


def test_extra_env_stage_policy_clamps_and_refuses():
    policy = Policy("/p.toml", max_threads=4, origins={"max_threads": "/p.toml:1 max_threads = 4"})
    chosen = Chosen((), (), {"OMP_NUM_THREADS": "4", "NUMBA_NUM_THREADS": "4"})
    out = extra_of(chosen, policy, OMP_NUM_THREADS="16,2", NUMBA_NUM_THREADS=None, MALLOC_ARENA_MAX="99")
    env = {c.name: (c.value, c.why) for c in out.env}
    assert env["OMP_NUM_THREADS"] == ("4,2", f"{PATH}:100 env.OMP_NUM_THREADS = '16,2'; capped to 4 by policy "
                                             "/p.toml:1 max_threads = 4")
    assert env["NUMBA_NUM_THREADS"] == ("4", f"{PATH}:101 env.NUMBA_NUM_THREADS = false refused by policy "
                                             "/p.toml:1 max_threads = 4: kept 4")
    assert env["MALLOC_ARENA_MAX"] == ("99", f"{PATH}:102 env.MALLOC_ARENA_MAX = '99'")  # not a thread variable
    assert out.capped == ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")


def test_extra_env_stage_lowers_a_blas_caller_to_the_build_limit():
    out = extra_of(Chosen((), (), {}), None, OPENBLAS, OPENBLAS_NUM_THREADS="100", NUMBA_NUM_THREADS="100")
    env = {c.name: c.value for c in out.env}
    assert env == {"OPENBLAS_NUM_THREADS": "64", "NUMBA_NUM_THREADS": "100"}
    assert out.notes == (f"{PATH}:100 env.OPENBLAS_NUM_THREADS = '100' lowered to 64: numpy's OpenBLAS 0.3.31 is "
                         "built for at most 64 threads",)


def test_extra_env_stage_refuses_a_count_over_the_ceiling():
    with pytest.raises(TcapError) as caught:
        extra_of(Chosen((), (), {}), OMP_NUM_THREADS="9000")
    assert (caught.value.path, caught.value.line) == (PATH, 100)


def test_extra_settings_put_set_flags_over_the_profile():
    profile = Profile("p", PATH, env={"A": Setting("1", Origin(PATH, 3, "env.A"))})
    extra = _extra_settings(profile, Overrides(env=(("A", "2"), ("B", "3"))))
    assert {name: (s.value, str(s)) for name, s in extra.items()} == {
        "A": ("2", "flag --set A=2"), "B": ("3", "flag --set B=3")}


# --- _verify_stage and _share_stage ---------------------------------------------

def test_verify_stage():
    assert _verify_stage({}) == ("warn", "default")
    assert _verify_stage(settings(verify="strict")) == ("strict", f"{PATH}:1 verify = 'strict'")


def test_share_stage_default_and_given():
    assert DEFAULT_SHARE == "busy"
    assert _share_stage({}, "warn") == ("busy", "default")
    assert _share_stage(settings(share="off"), "enforce") == ("off", f"{PATH}:1 share = 'off'")
    assert _share_stage(settings(share="busy"), "strict") == ("busy", f"{PATH}:1 share = 'busy'")


def test_share_stage_is_off_without_a_probe():
    assert _share_stage({}, "off") == ("off", "verify is off: there is no probe to share the CPUs with")
    flag = {"share": Setting("busy", Origin("flag --share busy"))}
    assert _share_stage(flag, "off") == (
        "off", "flag --share busy does not apply: verify is off, so there is no probe to share the CPUs with")
    assert _share_stage(settings(share="off"), "off") == ("off", f"{PATH}:1 share = 'off'")


def test_share_default_is_the_constant(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(planmod, "DEFAULT_SHARE", "off")
    assert _share_stage({}, "warn") == ("off", "default")
    assert resolve(Profile("p", PATH), EIGHT, Overrides()).share == "off"


# --- resolve: the stages composed; share through flags and data ------------------

def test_resolve_is_the_stages_composed():
    machine = smt(4, quota=3.0, quota_source="q")
    profile = Profile("p", PATH, settings=settings(threads="physical", blas=5, workers=2),
                      env={"X": Setting("1", Origin(PATH, 9, "env.X"))})
    overrides = Overrides(openmp=1, env=(("Y", "2"),))
    policy = Policy("/p.toml", max_threads=2)
    plan = resolve(profile, machine, overrides, policy, {"OMP_NUM_THREADS": "8"}, (OPENBLAS,))
    given = {**profile.settings, "openmp": Setting(1, Origin("flag --openmp 1"))}
    cpu = _cpu_stage(given, machine, policy)
    caps = _caps_stage(given, cpu, policy, (OPENBLAS,))
    inherited = {"OMP_NUM_THREADS": "8"}
    chosen = _followers_stage(_variables_stage(caps, cpu, machine, inherited), inherited, cpu.cpus)
    extra = _extra_env_stage(_extra_settings(profile, overrides), chosen, policy, caps.openblas)
    assert (plan.env, plan.left_alone) == (extra.env, extra.left_alone)
    assert (plan.pin, plan.cpu_set, plan.cpus, plan.physical) == (cpu.pin, cpu.cpu_set, cpu.cpus, cpu.physical)
    assert (plan.workers, plan.caps) == (caps.workers, caps.caps)
    assert plan.caps["threads"] == 2 and plan.caps["openmp"] == 1  # policy 2 over physical 3; the flag's 1
    assert list(plan.why) == ["cpu_set", "workers", *caps.why, "verify", "share"]
    assert plan.notes[-1] == "policy /p.toml max_threads capped: " + ", ".join(caps.capped)
    assert (plan.verify, plan.share) == ("warn", "busy")


def test_share_flag_over_the_profile():
    profile = Profile("p", PATH, settings=settings(share="off"))
    assert resolve(profile, EIGHT, Overrides()).why["share"] == f"{PATH}:1 share = 'off'"
    plan = resolve(profile, EIGHT, Overrides(share="busy"))
    assert (plan.share, plan.why["share"]) == ("busy", "flag --share busy")


def test_share_flag_must_be_busy_or_off():
    with pytest.raises(TcapError, match=r"^--share must be one of busy, off, not 'maybe'$"):
        resolve(Profile("p", PATH), EIGHT, Overrides(share="maybe"))


def test_share_round_trips_through_plan_data():
    plan = resolve(Profile("p", PATH), EIGHT, Overrides(share="off"))
    data = json.loads(json.dumps(plan.to_data()))
    assert (data["share"], data["why"]["share"]) == ("off", "flag --share off")
    assert Plan.from_data(data) == plan


def test_plan_data_without_share_did_not_share_and_a_bad_one_is_refused():
    data = resolve(Profile("p", PATH), EIGHT, Overrides()).to_data()
    assert data["share"] == "busy"
    del data["share"]
    assert Plan.from_data(data).share == "off"  # a frozen plan of a tcap before sharing
    for bad in ("sometimes", 1, None, ["busy"]):
        with pytest.raises(ValueError, match="^share: expected one of busy, off"):
            Plan.from_data({**data, "share": bad})

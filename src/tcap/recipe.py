"""The launch recipe: from options and the environment to a Plan, and from
a Plan to what a launch needs (variables, pinning, the probe's bootstrap).

Below the commands (``run``, ``show``, ``kernel install``, ``sweep`` use
it) and above the pure core: it does the reading (profiles, policy, machine
facts, recorded library limits) that ``tcap.plan.resolve`` must not.
"""

from __future__ import annotations

import errno
import os
import sys

from tcap.bounds import MAX_DIGITS
from tcap.errors import TcapError
from tcap.grammar import PLAN_OPTIONS
from tcap.search import DEFAULT_PROFILE, is_path, search_path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

    from tcap.machine import Machine
    from tcap.plan import Overrides, Plan

VERIFY_MODES = ("off", "warn", "strict", "enforce")
SHARE_MODES = ("busy", "off")
#: The table's variables (tcap.variables, spelled out: the launch path does
#: not import dataclasses); a test checks the two agree.
THREAD_VARIABLES = frozenset((
    "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
    "BLIS_NUM_THREADS", "NUMEXPR_NUM_THREADS", "NUMEXPR_MAX_THREADS", "NUMBA_NUM_THREADS", "POLARS_MAX_THREADS",
    "RAYON_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "BLOSC_NTHREADS", "OPENCV_FOR_THREADS_NUM",
    "ARROW_IO_THREADS", "LOKY_MAX_CPU_COUNT",
))


def plan_flags(options: Mapping[str, Any]) -> list[str]:
    """The plan options in ``options`` as ``tcap run`` flags (``--set`` last,
    repeated): what a kernelspec passes on, what ``--plan`` excludes."""
    flags: list[str] = []
    for dest in dict.fromkeys(PLAN_OPTIONS.values()):
        value = options.get(dest)
        if dest != "set" and value is not None:
            flags += [f"--{dest}", str(value)]
    for item in options.get("set", []):
        flags += ["--set", item]
    return flags


def overrides_from(options: Mapping[str, Any]) -> Overrides:
    """The flags as Overrides; malformed values are usage errors."""
    from tcap.plan import Overrides

    counts: dict[str, int | str | None] = {}
    for key in ("threads", "blas", "openmp", "workers"):
        value = options.get(key)
        # Digits only, and few enough to be a count: int() of a 5000-digit
        # string raises; the expression check bounds the rest.
        counts[key] = int(value) if isinstance(value, str) and value.isdigit() and value.isascii() \
            and len(value) <= MAX_DIGITS else value
    verify = options.get("verify")
    if verify is not None and verify not in VERIFY_MODES:
        raise TcapError(f"--verify must be one of {', '.join(VERIFY_MODES)}, not {verify!r}")
    share = options.get("share")
    if share is not None and share not in SHARE_MODES:
        raise TcapError(f"--share must be one of {', '.join(SHARE_MODES)}, not {share!r}")
    pairs = []
    for item in options.get("set", []):
        name, eq, value = item.partition("=")
        if not eq or not name or not name.isascii() or not (name[0].isalpha() or name[0] == "_") \
                or not name.replace("_", "a").isalnum() or len(name) > 255:
            raise TcapError(f"--set expects VAR=VALUE with a valid variable name, not {item[:60]!r}")
        pairs.append((name, value))
    return Overrides(
        threads=counts["threads"],
        blas=counts["blas"],
        openmp=counts["openmp"],
        workers=counts["workers"],
        cpus=options.get("cpus"),
        verify=verify,
        share=share,
        env=tuple(pairs),
    )


def build_plan(
    options: Mapping[str, Any],
    environ: Mapping[str, str],
    machine: Machine | None = None,
    command: Sequence[str] | None = None,
) -> tuple[Plan, list[tuple[str, Any]]]:
    """Load the profile and resolve it: (plan, files it depended on).

    The build limits recorded for the interpreter the launch starts apply:
    ``command``'s interpreter when it is a Python, else ``--python``, else
    (``show``, ``env``) the ``python3`` on PATH.
    """
    from tcap.cache import signature
    from tcap.libraries import default_interpreter, interpreter_of, limits, recorded, store_file
    from tcap.machine import read_machine
    from tcap.plan import resolve
    from tcap.policy import load_policy, policy_path
    from tcap.profiles import load

    overrides = overrides_from(options)
    policy = load_policy(environ)
    default = policy.default_profile if policy is not None and policy.default_profile else DEFAULT_PROFILE
    try:
        profile = load(options.get("profile") or default, environ)
    except TcapError as error:
        if options.get("profile") or policy is None or not policy.default_profile:
            raise
        error.message += f" (the site policy's {policy.origin('default_profile')})"
        raise
    if machine is None or machine.cores is None:
        # The core topology: for `physical`, and for MKL's own choice.
        machine = read_machine(topology=True, environ=environ)
    path = policy_path(environ)
    depends = [*profile.depends, (os.path.abspath(path), signature(path))]
    if options.get("python"):
        interpreter: str | None = str(options["python"])
    elif command is not None:
        interpreter = interpreter_of(command, environ)
    else:
        interpreter = default_interpreter(environ)
    found = []
    if interpreter is not None:
        facts = store_file(environ, interpreter)
        depends.append((facts, signature(facts)))
        found = limits(recorded(environ, interpreter))
    inherited = {name: value for name, value in environ.items() if name in THREAD_VARIABLES}
    return resolve(profile, machine, overrides, policy, inherited, found), depends


def recipe_of(plan: Plan, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What a launch needs from a plan, as plain data (cached)."""
    from tcap.launch import probe_environ

    env = [[change.name, change.value] for change in plan.env]
    bootstrap = None
    if plan.verify != "off":
        bootstrap, extra = probe_environ(plan, os.environ if environ is None else environ)
        env += [[name, value] for name, value in extra.items()]
    place = None
    if plan.place is not None:
        assert plan.cpu_set is not None
        place = {
            "count": plan.place,
            "allowed": list(plan.cpu_set),
            "on_full": plan.on_full,
            "wait_timeout": plan.wait_timeout,
        }
    return {
        "env": env,
        "pin": None if plan.pin is None else list(plan.pin),
        "place": place,
        "verify": plan.verify,
        "bootstrap": bootstrap,
        "cpus": plan.cpus,  # the launch budget of a supervised run
        "rank": plan.rank_label,
        "notes": list(plan.launch_notes),
    }


def cache_key(
    options: Mapping[str, Any], environ: Mapping[str, str], machine: Machine, command: Sequence[str] = ()
) -> tuple[Any, ...]:
    """Everything besides profile files that decides a plan."""
    # No -p is its own key: the site policy's default_profile may name another
    # profile than "default" (the policy file is a dependency of the entry).
    spec = options.get("profile")
    if spec is not None and is_path(spec):
        spec = os.path.abspath(spec)
    flags = tuple(
        (key, tuple(value) if isinstance(value, list) else value)
        for key, value in sorted(options.items())
        if key not in ("profile", "dry_run", "help", "report", "report_json", "plot", "kernel")
    )
    # What the libraries would pick without tcap depends on the inherited
    # thread variables; the recorded build limits on the interpreter started.
    inherited = tuple(sorted((k, v) for k, v in environ.items() if k in THREAD_VARIABLES))
    program = None
    if command:
        program = command[0] if "/" not in command[0] else os.path.abspath(command[0])
    return (spec, flags, tuple(d for _, d in search_path(environ)), machine.key(), inherited, program,
            environ.get("PATH"))


def frozen_recipe(options: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe of a frozen plan file (``tcap kernel install --freeze``)."""
    path = options["plan"]
    given = list(dict.fromkeys(plan_flags(options)[0::2]))
    if given:
        raise TcapError(f"tcap run: --plan cannot be combined with {', '.join(given)}")
    from tcap import safefile
    from tcap.bounds import MAX_FILE
    from tcap.cache import recipe_problem
    from tcap.errors import EXIT_IO

    try:
        data = safefile.load_json(safefile.read(path, MAX_FILE))
    except safefile.Refused as refused:
        raise TcapError(f"cannot use frozen plan: {refused.strerror}", path=path) from None
    except OSError as failure:
        code = EXIT_IO if failure.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP) else 2
        raise TcapError(f"cannot read frozen plan: {failure.strerror}", path=path, code=code) from None
    except ValueError as failure:
        raise TcapError(f"not a frozen tcap plan (JSON: {failure})", path=path) from None
    recipe: dict[str, Any] = data.get("recipe") if isinstance(data, dict) else None  # type: ignore[assignment]
    problem = "no recipe table" if recipe is None else recipe_problem(recipe)
    if problem is not None:
        raise TcapError(f"not a frozen tcap plan (recipe: {problem})", path=path)
    bootstrap = recipe.get("bootstrap")
    if bootstrap and not os.path.isdir(bootstrap):
        sys.stderr.write(
            f"tcap: warning: {path}: the probe's files ({bootstrap}) are gone (tcap moved or was reinstalled?): "
            "running without verification; freeze the plan again\n"
        )
        recipe = {**recipe, "bootstrap": None}
    if options.get("dry_run"):
        sys.stdout.write(f"frozen plan {path}: verify {recipe.get('verify')}, pin {recipe.get('pin') or 'none'}\n")
        for name, value in recipe["env"]:
            sys.stdout.write(f"  {name}={value}\n" if value is not None else f"  unset {name}\n")
    return dict(recipe)


def self_command() -> list[str]:
    """How a shell should start this tcap: its console script when there is
    one next to the interpreter, else ``python -m tcap``."""
    script = os.path.join(os.path.dirname(sys.executable), "tcap")
    if os.path.isfile(script) and os.access(script, os.X_OK):
        return [os.path.abspath(script)]
    return [os.path.abspath(sys.executable), "-m", "tcap"]


def parse_plan_flags(flags: Sequence[str]) -> dict[str, Any]:
    """The options that ``plan_flags`` wrote (a kernelspec's ``metadata.tcap.flags``)."""
    options: dict[str, Any] = {"set": []}
    for flag, value in zip(flags[0::2], flags[1::2]):
        dest = PLAN_OPTIONS.get(flag)
        if dest is None:
            raise TcapError(f"unknown plan option {flag}")
        if dest == "set":
            options["set"].append(value)
        else:
            options[dest] = value
    if len(flags) % 2:
        raise TcapError(f"plan option {flags[-1]} has no value")
    return options

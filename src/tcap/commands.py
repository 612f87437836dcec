"""The commands: each takes parsed options and returns an exit code.

``run`` is the hot path: on a cache hit it reads machine facts, checks the
cached recipe and execs, importing nothing beyond this module, ``cache``,
``machine``, ``search`` and ``launch``.  Everything else (TOML, the plan,
rendering) is imported only when needed.
"""

from __future__ import annotations

import os
import sys

from tcap.errors import TcapError
from tcap.search import DEFAULT_PROFILE, is_path, search_path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from tcap.machine import Machine
    from tcap.plan import Overrides, Plan

SHELLS = ("sh", "bash", "zsh", "fish")
VERIFY_MODES = ("off", "warn", "strict", "enforce")


def run(options: Mapping[str, Any], command: list[str], environ: Mapping[str, str]) -> int:
    """``tcap run``: resolve the plan, apply it and exec ``command`` (or, for
    ``--report``/``--report-json``/``verify = strict``, run it supervised)."""
    if not command:
        raise TcapError("tcap run: missing the command to run (tcap run [options] -- COMMAND ...)")
    if options.get("plan"):
        recipe = frozen_recipe(options)
    elif options.get("dry_run"):
        from tcap import render

        plan = build_plan(options, environ)[0]
        recipe = recipe_of(plan)
        sys.stdout.write(render.plan_text(plan, environ) + "\n")
    else:
        from tcap import cache
        from tcap.machine import read_machine

        machine = read_machine(environ=environ)
        key = cache_key(options, environ, machine)
        cache_file = cache.cache_file(environ)
        recipe = cache.lookup(cache_file, key)
        if recipe is None:
            plan, depends = build_plan(options, environ, machine)
            recipe = recipe_of(plan)
            cache.store(cache_file, key, depends, recipe)
    if options.get("kernel"):
        recipe = kernel_recipe(recipe)
        if recipe.get("bootstrap"):
            # The probe (already in sys.modules there) also loads as an
            # IPython extension, to check the pools after every cell.
            command = [*command, "--ext=_tcap_probe"]
    from tcap import launch

    if options.get("dry_run"):
        from tcap import render

        found = launch.find_command(command[0], launch.child_environ(recipe, environ))
        sys.stdout.write(f"would exec: {render.command_line([found, *command[1:]])}\n")
        return 0
    if recipe.get("verify") == "strict" or options.get("report") or options.get("report_json"):
        from tcap import supervise

        return supervise.supervise(
            recipe, command, environ, report=bool(options.get("report")), report_json=options.get("report_json")
        )
    launch.execute(recipe, command, environ)


def kernel_recipe(recipe: dict[str, Any]) -> dict[str, Any]:
    """A kernel must be exec'ed (Jupyter signals and kills the pid it
    started), so a strict plan runs it as warn, and says so."""
    if recipe.get("verify") != "strict":
        return recipe
    sys.stderr.write("tcap: note: verify strict needs tcap to supervise; a kernel is exec'ed, so it runs as warn\n")
    env = [[name, "warn" if name == "TCAP_VERIFY" else value] for name, value in recipe["env"]]
    return {**recipe, "env": env, "verify": "warn"}


def frozen_recipe(options: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe of a frozen plan file (``tcap kernel install --freeze``)."""
    path = options["plan"]
    from tcap.cli import plan_flags

    given = list(dict.fromkeys(plan_flags(options)[0::2]))
    if given:
        raise TcapError(f"tcap run: --plan cannot be combined with {', '.join(given)}")
    import json

    try:
        with open(path) as f:
            recipe = json.load(f)["recipe"]
        if not isinstance(recipe.get("env"), list):
            raise ValueError("no env list")
    except OSError as failure:
        raise TcapError(f"cannot read frozen plan: {failure.strerror}", path=path) from None
    except (ValueError, KeyError, TypeError, AttributeError) as failure:
        raise TcapError(f"not a frozen tcap plan: {failure}", path=path) from None
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


def show(options: Mapping[str, Any], rest: list[str], environ: Mapping[str, str]) -> int:
    """``tcap show``: the resolved plan and why each value is what it is."""
    from tcap import render

    plan = build_plan(options, environ)[0]
    if options.get("json"):
        sys.stdout.write(render.plan_json(plan, environ))
    else:
        sys.stdout.write(render.plan_text(plan, environ))
    return 0


def env(options: Mapping[str, Any], rest: list[str], environ: Mapping[str, str]) -> int:
    """``tcap env``: the plan's variables as shell commands."""
    from tcap import render

    shell = options.get("shell") or os.path.basename(environ.get("SHELL", "")) or "sh"
    if shell not in SHELLS:
        if options.get("shell"):
            raise TcapError(f"tcap env: --shell must be one of {', '.join(SHELLS)}, not {shell!r}")
        shell = "sh"
    plan = build_plan(options, environ)[0]
    sys.stdout.write(render.env_script(plan, shell))
    return 0


def profiles(options: Mapping[str, Any], rest: list[str], environ: Mapping[str, str]) -> int:
    """``tcap profiles``: every profile on the search path."""
    from tcap import render
    from tcap.profiles import list_profiles

    listings = list_profiles(environ)
    if options.get("names"):  # for shell completion
        names = dict.fromkeys(listing.name for listing in listings if listing.error is None)
        sys.stdout.write("".join(f"{name}\n" for name in names))
        return 0
    if options.get("json"):
        sys.stdout.write(render.profiles_json(listings, search_path(environ)))
    else:
        sys.stdout.write(render.profiles_text(listings, search_path(environ)))
    return 0


def overrides_from(options: Mapping[str, Any]) -> Overrides:
    """The flags as Overrides; malformed values are usage errors."""
    from tcap.plan import Overrides

    counts: dict[str, int | str | None] = {}
    for key in ("threads", "blas", "openmp", "workers"):
        value = options.get(key)
        counts[key] = int(value) if isinstance(value, str) and value.isdigit() else value
    verify = options.get("verify")
    if verify is not None and verify not in VERIFY_MODES:
        raise TcapError(f"--verify must be one of {', '.join(VERIFY_MODES)}, not {verify!r}")
    pairs = []
    for item in options.get("set", []):
        name, eq, value = item.partition("=")
        if not eq or not name or not (name[0].isalpha() or name[0] == "_") or not name.replace("_", "a").isalnum():
            raise TcapError(f"--set expects VAR=VALUE with a valid variable name, not {item!r}")
        pairs.append((name, value))
    return Overrides(
        threads=counts["threads"],
        blas=counts["blas"],
        openmp=counts["openmp"],
        workers=counts["workers"],
        cpus=options.get("cpus"),
        verify=verify,
        env=tuple(pairs),
    )


def build_plan(
    options: Mapping[str, Any], environ: Mapping[str, str], machine: Machine | None = None
) -> tuple[Plan, list[tuple[str, Any]]]:
    """Load the profile and resolve it: (plan, files it depended on)."""
    from tcap.cache import signature
    from tcap.machine import read_machine
    from tcap.plan import resolve, uses_physical
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
    if machine is None or (machine.cores is None and uses_physical(profile, overrides)):
        machine = read_machine(topology=uses_physical(profile, overrides), environ=environ)
    path = policy_path(environ)
    depends = [*profile.depends, (os.path.abspath(path), signature(path))]
    return resolve(profile, machine, overrides, policy), depends


def recipe_of(plan: Plan) -> dict[str, Any]:
    """What a launch needs from a plan, as plain data (cached)."""
    from tcap.launch import probe_environ

    env = [[change.name, change.value] for change in plan.env]
    bootstrap = None
    if plan.verify != "off":
        bootstrap, extra = probe_environ(plan)
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
    }


def cache_key(options: Mapping[str, Any], environ: Mapping[str, str], machine: Machine) -> tuple[Any, ...]:
    """Everything besides profile files that decides a plan."""
    # No -p is its own key: the site policy's default_profile may name another
    # profile than "default" (the policy file is a dependency of the entry).
    spec = options.get("profile")
    if spec is not None and is_path(spec):
        spec = os.path.abspath(spec)
    flags = tuple(
        (key, tuple(value) if isinstance(value, list) else value)
        for key, value in sorted(options.items())
        if key not in ("profile", "dry_run", "help", "report", "report_json", "kernel")
    )
    return (spec, flags, tuple(d for _, d in search_path(environ)), machine.key())


def kernel_install(options: Mapping[str, Any], rest: list[str], environ: Mapping[str, str]) -> int:
    """``tcap kernel install``: a kernelspec that starts the kernel under tcap."""
    from tcap import kernel

    name, destination, warnings = kernel.install(options, environ)
    for warning in warnings:
        sys.stderr.write(f"tcap: warning: {warning}\n")
    sys.stdout.write(f"installed kernel {name} in {destination}\n")
    return 0


def kernel_list(options: Mapping[str, Any], rest: list[str], environ: Mapping[str, str]) -> int:
    """``tcap kernel list``: the tcap-made kernelspecs Jupyter can find."""
    import json

    from tcap import kernel

    found = kernel.list_kernels(environ)
    if options.get("json"):
        sys.stdout.write(json.dumps(found, indent=2) + "\n")
        return 0
    if not found:
        sys.stdout.write("no tcap kernels (make one with: tcap kernel install -p PROFILE --user)\n")
        return 0
    rows = [("NAME", "PROFILE", "CAPS", "DIRECTORY", "STATUS")]
    for item in found:
        caps = item["caps"]
        text = "?" if caps is None else kernel.caps_words(caps["blas"], caps["openmp"])
        profile = str(item["profile"]) + (" (frozen)" if item["frozen"] else "")
        status = "stale: " + "; ".join(item["stale"]) if item["stale"] else "ok"
        rows.append((item["name"], profile, text, item["resource_dir"], status))
    from tcap.render import columns

    sys.stdout.write(columns(rows))
    return 0


def kernel_remove(options: Mapping[str, Any], rest: list[str], environ: Mapping[str, str]) -> int:
    """``tcap kernel remove NAME``: remove a tcap-made kernelspec."""
    from tcap import kernel

    if len(rest) != 1:
        raise TcapError("tcap kernel remove: give exactly one kernel name (see tcap kernel list)")
    directory = kernel.remove(rest[0], bool(options.get("force")))
    sys.stdout.write(f"removed kernel {rest[0].lower()} ({directory})\n")
    return 0


def self_command() -> list[str]:
    """How a shell should start this tcap: its console script when there is
    one next to the interpreter, else ``python -m tcap``."""
    script = os.path.join(os.path.dirname(sys.executable), "tcap")
    if os.path.isfile(script) and os.access(script, os.X_OK):
        return [os.path.abspath(script)]
    return [os.path.abspath(sys.executable), "-m", "tcap"]


def _shell_of(options: Mapping[str, Any], environ: Mapping[str, str], given: str | None = None) -> str:
    from tcap.shell import SHELLS

    shell = given or options.get("shell") or os.path.basename(environ.get("SHELL", "")) or "bash"
    if shell not in SHELLS:
        if given or options.get("shell"):
            raise TcapError(f"unsupported shell {shell!r}: choose one of {', '.join(SHELLS)}")
        shell = "bash"
    return shell


def aliases_text(options: Mapping[str, Any], environ: Mapping[str, str], shell: str) -> str:
    """One alias (fish: function) per profile: the named ones, or every
    valid profile on the search path."""
    import datetime
    import shutil

    from tcap.profiles import list_profiles, load
    from tcap.shell import alias_name, dynamic_alias, static_alias

    names: list[str] = list(options.get("profiles") or [])
    if not names:
        names = list(dict.fromkeys(item.name for item in list_profiles(environ) if item.error is None))
    tcap = self_command()
    taskset = shutil.which("taskset", path=environ.get("PATH"))
    blocks: list[str] = []
    seen: dict[str, str] = {}
    for name in names:
        profile = load(name, environ)  # a missing or broken profile is an error, before anything is printed
        alias = alias_name(profile.name, profile.alias)
        if alias in seen:
            raise TcapError(f"alias {alias!r} is asked for by both profile {seen[alias]!r} and {profile.name!r}")
        seen[alias] = profile.name
        if not options.get("static"):
            blocks.append(dynamic_alias(alias, tcap, name, shell))
            continue
        plan = build_plan({**options, "profile": name}, environ)[0]
        why_dynamic = None
        if plan.verify == "strict":
            why_dynamic = "verify strict needs tcap to supervise the run"
        elif plan.place is not None:
            why_dynamic = "auto CPU placement books CPUs at each launch"
        if why_dynamic:
            blocks.append(f"# {alias}: not static: {why_dynamic}\n" + dynamic_alias(alias, tcap, name, shell))
            continue
        import socket

        header = (
            f"{alias}: static alias of profile {profile.name} ({profile.path}), resolved on "
            f"{socket.gethostname()} on {datetime.date.today().isoformat()} for {plan.cpus} usable CPUs.\n"
            "It goes stale when the profile, the site policy or the machine changes: run "
            "`tcap alias --static` again then."
        )
        blocks.append(static_alias(alias, recipe_of(plan), shell, taskset, header))
    return "\n".join(blocks) + ("\n" if blocks else "")


def alias(options: Mapping[str, Any], rest: list[str], environ: Mapping[str, str]) -> int:
    """``tcap alias``: shell aliases that run commands under profiles."""
    shell = _shell_of(options, environ)
    sys.stdout.write(aliases_text(options, environ, shell))
    return 0


def shell_init(options: Mapping[str, Any], rest: list[str], environ: Mapping[str, str]) -> int:
    """``tcap shell-init SHELL``: aliases and completion, for eval in an rc file."""
    from tcap.cli import COMMANDS
    from tcap.shell import completion

    if len(rest) > 1:
        raise TcapError(f"tcap shell-init: unexpected argument {rest[1]!r}")
    shell = _shell_of(options, environ, rest[0] if rest else None)
    text = f"# tcap shell-init {shell}: aliases for tcap's profiles, and completion\n"
    text += aliases_text(options, environ, shell)
    text += completion(shell, self_command(), COMMANDS) + "\n"
    sys.stdout.write(text)
    return 0


def bookings(options: Mapping[str, Any], rest: list[str], environ: Mapping[str, str]) -> int:
    """``tcap bookings``: the CPUs live tcap launches hold (auto placement)."""
    import json
    import pwd

    from tcap.cpuset import format_cpu_list
    from tcap.placement import bookings_dir, list_bookings

    found = list_bookings(environ)
    for item in found:
        try:
            item["user"] = pwd.getpwuid(item["uid"]).pw_name
        except KeyError:
            item["user"] = str(item["uid"])
    if options.get("json"):
        sys.stdout.write(json.dumps({"directory": bookings_dir(environ), "bookings": found}, indent=2) + "\n")
        return 0
    if not found:
        sys.stdout.write(f"no live CPU bookings in {bookings_dir(environ)}\n")
        return 0
    sys.stdout.write(f"{'PID':<8} {'USER':<12} CPUS\n")
    for item in sorted(found, key=lambda item: item["pid"]):
        sys.stdout.write(f"{item['pid']:<8} {item['user']:<12} {format_cpu_list(item['cpus'])}\n")
    return 0


def sweep(options: Mapping[str, Any], rest: list[str], environ: Mapping[str, str]) -> int:
    """``tcap sweep``: measure a command under a grid of configurations."""
    from tcap.sweep import run_sweep

    return run_sweep(options, rest, environ)

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
from tcap.recipe import build_plan, cache_key, frozen_recipe, recipe_of, self_command
from tcap.search import search_path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any


SHELLS = ("sh", "bash", "zsh", "fish")


def run(options: Mapping[str, Any], command: list[str], environ: Mapping[str, str]) -> int:
    """``tcap run``: resolve the plan, apply it and exec ``command`` (or, for
    ``--report``/``--report-json``/``--plot``/``verify = strict``, run it supervised)."""
    if not command:
        raise TcapError("tcap run: missing the command to run (tcap run [options] -- COMMAND ...)")
    if not command[0]:
        from tcap.errors import EXIT_NOT_FOUND

        raise TcapError("command not found: '' (an empty command name)", code=EXIT_NOT_FOUND)
    if options.get("plan"):
        recipe = frozen_recipe(options)
    elif options.get("dry_run"):
        from tcap import render

        plan = build_plan(options, environ, command=command)[0]
        recipe = recipe_of(plan, environ)
        sys.stdout.write(render.plan_text(plan, environ) + "\n")
    else:
        from tcap import cache
        from tcap.machine import read_machine

        machine = read_machine(environ=environ)
        key = cache_key(options, environ, machine, command)
        cache_file = cache.cache_file(environ)
        recipe = cache.lookup(cache_file, key)
        if recipe is None:
            plan, depends = build_plan(options, environ, machine, command)
            recipe = recipe_of(plan, environ)
            cache.store(cache_file, key, depends, recipe)
    if recipe.get("notes"):
        from tcap.errors import one_line

        for note in recipe["notes"]:
            sys.stderr.write(f"tcap: note: {one_line(note)}\n")
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
    if recipe.get("verify") == "strict" or options.get("report") or options.get("report_json") \
            or "plot" in options or not launch.can_exec():
        from tcap import supervise

        after = None
        if "plot" in options:  # matplotlib and the destination checked before the command starts
            from tcap import plot

            after = plot.for_run(options, environ)
        return supervise.supervise(
            recipe, command, environ, report=bool(options.get("report")), report_json=options.get("report_json"),
            after=after,
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
    from tcap.profiles import special_problem

    for item in options.get("set", []):  # [env] names are checked where the profile is read
        problem = special_problem(item.partition("=")[0])
        if problem:
            raise TcapError(f"--set {render.printable(item[:60])}: {problem}")
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
    from tcap.render import columns, printable

    rows: list[tuple[str, ...]] = [("NAME", "PROFILE", "CAPS", "DIRECTORY", "STATUS")]
    for item in found:
        caps = item["caps"]
        text = "?" if caps is None else kernel.caps_words(caps["blas"], caps["openmp"])
        profile = ("?" if item["profile"] is None else str(item["profile"])) + (" (frozen)" if item["frozen"] else "")
        status = "stale: " + "; ".join(item["stale"]) if item["stale"] else "ok"
        # Anyone who can write a kernels directory wrote these strings: nothing in them reaches the terminal raw.
        rows.append(tuple(printable(cell) for cell in (item["name"], profile, text, item["resource_dir"], status)))
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
    profile on the search path.

    Alias names are checked (``tcap.profiles.ALIAS_RE``) before anything is
    printed. Asked for by name (``-p``), a profile that cannot have an alias
    (a file stem no shell word can be, a broken file) is an error and
    nothing is printed; making aliases for every profile (a login shell's
    ``shell-init``), such a profile gets none and one note on stderr, and
    the others still get theirs."""
    import datetime
    import shutil

    from tcap.profiles import ALIAS_CHARS, Profile, list_profiles, load
    from tcap.render import printable
    from tcap.shell import alias_name, dynamic_alias, static_alias, valid_alias

    names: list[str] = list(options.get("profiles") or [])
    every = not names

    def skip(why: str) -> None:
        sys.stderr.write(f"tcap: note: no alias: {printable(why)}\n")

    if every:
        for item in list_profiles(environ):
            if item.shadowed_by is not None:
                continue  # -p NAME finds the first of that name
            if item.error is not None:
                skip(item.error)
            else:
                names.append(item.name)
    tcap = self_command()
    taskset = shutil.which("taskset", path=environ.get("PATH"))
    blocks: list[str] = []
    seen: dict[str, str] = {}
    for name in names:
        try:
            profile: Profile = load(name, environ)  # with -p: an error before anything is printed
            alias = alias_name(profile.name, profile.alias)
            if not valid_alias(alias):
                raise TcapError(
                    f"{alias!r} is not a valid alias name ({ALIAS_CHARS}): give the profile an alias = \"...\" "
                    "or rename the file", path=profile.path)
            if alias in seen:
                raise TcapError(f"alias {alias!r} is asked for by both profile {seen[alias]!r} and {profile.name!r}")
        except TcapError as error:
            if not every:
                raise
            skip(str(error))
            continue
        seen[alias] = profile.name
        if not options.get("static"):
            blocks.append(dynamic_alias(alias, tcap, name, shell))
            continue
        try:
            plan = build_plan({**options, "profile": name}, environ)[0]
        except TcapError as error:
            from tcap.policy import policy_path

            if not every or error.path == policy_path(environ):  # a broken policy stops every alias
                raise
            skip(str(error))  # this profile's own fault: the others keep their aliases
            del seen[alias]
            continue
        why_dynamic = None
        if plan.verify == "strict":
            why_dynamic = "verify strict needs tcap to supervise the run"
        elif plan.place is not None:
            why_dynamic = "auto CPU placement books CPUs at each launch"
        if why_dynamic:
            blocks.append(f"# {alias}: not static: {why_dynamic}\n" + dynamic_alias(alias, tcap, name, shell))
            continue
        import socket

        from tcap.plural import counted

        header = (
            f"{alias}: static alias of profile {printable(profile.name)} ({printable(profile.path)}), resolved on "
            f"{socket.gethostname()} on {datetime.date.today().isoformat()} for {counted(plan.cpus, 'usable CPU')}.\n"
            "It goes stale when the profile, the site policy or the machine changes: run "
            "`tcap alias --static` again then."
        )
        recipe = recipe_of(plan, environ)
        if plan.pin is not None and not taskset:
            # Unpinned, the libraries tcap leaves alone would count every CPU:
            # give them what they would take on the planned CPUs.
            from tcap.plan import on_planned_cpus

            recipe["env"] = [*recipe["env"], *([c.name, c.value] for c in on_planned_cpus(plan))]
        blocks.append(static_alias(alias, recipe, shell, taskset, header))
    return "\n".join(blocks) + ("\n" if blocks else "")


def alias(options: Mapping[str, Any], rest: list[str], environ: Mapping[str, str]) -> int:
    """``tcap alias``: shell aliases that run commands under profiles."""
    shell = _shell_of(options, environ)
    sys.stdout.write(aliases_text(options, environ, shell))
    return 0


def shell_init(options: Mapping[str, Any], rest: list[str], environ: Mapping[str, str]) -> int:
    """``tcap shell-init SHELL``: aliases and completion, for eval in an rc file."""
    from tcap.grammar import COMMANDS
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
    """``tcap bookings``: the CPUs live tcap launches hold (auto placement).
    PID lists the booking's live processes (a supervised run: tcap, then its
    command); ``--json`` adds each booking's file name."""
    import json
    import pwd

    from tcap.cpuset import format_cpu_list
    from tcap.placement import bookings_dir, list_bookings

    found = list_bookings(environ)
    for item in found:
        try:
            item["user"] = pwd.getpwuid(item["uid"]).pw_name
        except (KeyError, OverflowError):
            item["user"] = str(item["uid"])
    if options.get("json"):
        sys.stdout.write(json.dumps({"directory": bookings_dir(environ), "bookings": found}, indent=2) + "\n")
        return 0
    if not found:
        sys.stdout.write(f"no live CPU bookings in {bookings_dir(environ)}\n")
        return 0
    sys.stdout.write(f"{'PID':<8} {'USER':<12} CPUS\n")
    for item in sorted(found, key=lambda item: (item["pid"], item["file"])):
        pids = ",".join(str(pid) for pid in item["pids"])
        sys.stdout.write(f"{pids:<8} {item['user']:<12} {format_cpu_list(item['cpus'])}\n")
    return 0


def report(options: Mapping[str, Any], rest: list[str], environ: Mapping[str, str]) -> int:
    """``tcap report FILE...``: merge the reports of several launches; the
    report on stdout, ``--json`` into its file and ``--plot`` a picture of
    them into its (both checked before any report is read: never one of
    them)."""
    from tcap import reports, supervise
    from tcap.errors import EXIT_IO

    if not rest:
        raise TcapError("tcap report: missing the report files (written by tcap run --report-json)")
    if len(rest) > reports.MAX_REPORTS:
        raise TcapError(f"tcap report: {len(rest)} files, more than the {reports.MAX_REPORTS} it merges")
    out = options.get("json")
    picture = options.get("plot")
    if "plot" in options:
        from tcap import plot

        plot.for_report(picture or "", rest, out)
    if out:
        supervise.check_destination(out, "--json", rest)
    read = [reports.read_report(path) for path in rest]
    text, data = reports.merge_reports(read)
    if out:  # before stdout, which a pager closed early would end
        try:
            supervise.write_json(out, data)
        except OSError as failure:
            raise TcapError(f"cannot write --json: {failure.strerror or failure}", code=EXIT_IO, path=out) from None
    if picture:
        from tcap import plot

        plot.write_reports(picture, read, data["verdict"])
    sys.stdout.write(text)
    return 1 if data["violations"] or data["over_budget"] else 0


def sweep(options: Mapping[str, Any], rest: list[str], environ: Mapping[str, str]) -> int:
    """``tcap sweep``: measure a command under a grid of configurations."""
    from tcap.sweep import run_sweep

    return run_sweep(options, rest, environ)


def doctor(options: Mapping[str, Any], rest: list[str], environ: Mapping[str, str]) -> int:
    """``tcap doctor``: the machine, an interpreter's native libraries, hazards, the plan."""
    from tcap import render
    from tcap.doctor import doctor as examine
    from tcap.doctor import text
    from tcap.plan import Plan

    report, code = examine(options, environ)
    if options.get("json"):
        sys.stdout.write(json_dumps(report))
    else:
        sys.stdout.write(text(report, render.plan_text(Plan.from_data(report["plan"]), environ)))
    return code


def json_dumps(data: Any) -> str:
    import json

    return json.dumps(data, indent=2) + "\n"

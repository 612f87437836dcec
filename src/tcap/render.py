"""Text, JSON and shell renderings of plans and profile listings."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from tcap.cpuset import format_cpu_list
from tcap.errors import printable as printable  # re-exported: commands print through it
from tcap.plan import Plan, inherited_overrides, on_planned_cpus
from tcap.plural import counted
from tcap.profiles import Listing
from tcap.variables import VARIABLES


def printable_lines(lines: Sequence[str]) -> str:
    """Lines made :func:`printable` one by one, each ended by a newline."""
    return "".join(printable(line) + "\n" for line in lines)


def plan_text(plan: Plan, environ: Mapping[str, str]) -> str:
    """The plan as ``tcap show`` prints it: every value and why."""
    replaced = {name: old for name, old, _ in inherited_overrides(plan, environ)}
    order = {variable.name: i for i, variable in enumerate(VARIABLES)}
    lines = [f"profile   {plan.profile}  ({plan.profile_path})"]
    if plan.description:
        lines.append(f"          {plan.description}")
    if plan.ranks:
        lines.append(f"ranks     {plan.ranks}")
    lines.append(f"cpus      {plan.cpus}  ({plan.cpus_why})")
    if plan.cpu_set is not None:
        if plan.place is not None:
            pinned = f"{plan.place} of them booked at launch, free ones first, on_full = {plan.on_full}"
        elif plan.pin is not None:
            pinned = f"pinned to {format_cpu_list(plan.pin)}"
        else:
            pinned = "affinity left as it is"
        lines.append(f"cpu set   {format_cpu_list(plan.cpu_set)}  ({pinned}; {plan.why['cpu_set']})")
    if plan.physical is not None:
        lines.append(f"physical  {counted(plan.physical, 'core')} in the set")
    if plan.workers is not None:
        lines.append(f"workers   {plan.workers}  ({plan.why['workers']})")
    lines.append(f"verify    {plan.verify}  ({plan.why['verify']})")
    # A plan of an earlier tcap (a frozen kernel's) has no why for it.
    share_why = f"  ({plan.why['share']})" if "share" in plan.why else ""
    if plan.share == "busy":
        lines += [f"share     {plan.share}{share_why}", f"          {share_rule(plan)}"]
    else:
        lines.append(f"share     {plan.share}{share_why}: {share_rule(plan)}")
    lines.append("")
    rows = sorted([*plan.env, *plan.left_alone], key=lambda change: order.get(change.name, len(order)))
    width = max(len(change.name) for change in rows)
    lines.append(f"{'VARIABLE'.ljust(width)}  {'VALUE':<6}  WHY")
    alone = {change.name for change in plan.left_alone}
    for change in rows:
        value = "-" if change.name in alone else "(unset)" if change.value is None else change.value
        why = change.why
        if change.name in replaced:
            why += f"  [replaces inherited {change.name}={replaced[change.name]}]"
        lines.append(f"{change.name.ljust(width)}  {value:<6}  {why}")
    for note in plan.notes:
        lines.append(f"note: {note}")
    lines += ["", *observed_lines()]
    return printable_lines(lines)


def observed_lines() -> list[str]:
    """The libraries whose pools no variable or API sizes (tcap._pools'
    ``OBSERVED``), each with why: verified by watching busy threads."""
    return [f"observed  {row.name}: {row.why}; verified by observation" for row in observed()]


def observed() -> tuple[Any, ...]:
    from tcap._pools import OBSERVED

    return tuple(OBSERVED)


def share_rule(plan: Plan) -> str:
    """The rule ``plan.share`` puts in force at run time, in one line."""
    if plan.share != "busy":
        return "pools stay at their caps"
    cpus = plan.cpus
    return (
        f"at run time the probes share the launch's {cpus} CPU{'s' if cpus != 1 else ''} among its busy processes: "
        f"each pool gets min(its cap, {cpus} / busy processes / busy Python threads in that process), never below "
        "1; explicit caps and --workers stay ceilings"
    )


def plan_json(plan: Plan, environ: Mapping[str, str]) -> str:
    data = plan.to_data()
    data["share_rule"] = share_rule(plan)
    data["observed"] = [{"module": row.module, "name": row.name, "why": row.why} for row in observed()]
    data["inherited_overrides"] = [
        {"name": name, "inherited": old, "value": new} for name, old, new in inherited_overrides(plan, environ)
    ]
    return json.dumps(data, indent=2) + "\n"


def quote(value: str, shell: str) -> str:
    """``value`` as one literal word for ``shell``; nothing in it is expanded."""
    if shell == "fish":
        # In fish single quotes only \\ and \' are special.
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    # POSIX shells, bash and zsh: nothing is special inside single quotes.
    return "'" + value.replace("'", "'\\''") + "'"


def columns(rows: Sequence[Sequence[str]]) -> str:
    """Rows as aligned text columns, two spaces apart, no trailing blanks."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() + "\n" for row in rows)


def word(value: str, shell: str) -> str:
    """``value`` bare when no shell could read anything into it, else quoted.
    Not bare: ``:`` and ``=`` (zsh expands ``=cmd`` and ``~`` after a colon
    in an assignment), ``~``, ``@``, ``%``, and everything else."""
    import re

    if re.fullmatch(r"[A-Za-z0-9_./+-]+", value):
        return value
    return quote(value, shell)


def comment(text: str) -> str:
    """``text`` as shell comment lines: one ``# `` line per line of it,
    printable, so nothing in it (a newline, a CR) ends the comment."""
    return "\n".join("# " + printable(line) for line in text.split("\n"))


def env_script(plan: Plan, shell: str) -> str:
    """Commands that set the plan's variables in ``shell``."""
    lines = [comment(f"tcap env: profile {plan.profile} ({counted(plan.cpus, 'usable CPU')})")]
    if plan.place is not None:
        lines.append(
            f"# this plan books {counted(plan.place, 'CPU')} at launch (cpus auto:{plan.place}); a shell cannot: "
            "use `tcap run` for the booking and pinning"
        )
    if plan.pin is not None:
        cpus = format_cpu_list(plan.pin)
        lines.append(f"# this plan pins to CPU{'s' if len(plan.pin) != 1 else ''} {cpus}; a shell cannot do that "
                     f"for itself: use `taskset -c {cpus} CMD`")
    changes = list(plan.env)
    if plan.pin is not None or plan.place is not None:
        # Left alone, a library counts the CPUs it may run on; a shell cannot
        # pin, so say outright what it would take on the planned CPUs.
        changes += on_planned_cpus(plan)
    elif plan.left_alone:
        names = " ".join(change.name for change in plan.left_alone)
        lines.append(f"# left to the libraries (their own choice is within the caps): {names}")
    for change in changes:
        if change.value is None:
            lines.append(f"set -e {change.name}" if shell == "fish" else f"unset {change.name}")
        elif shell == "fish":
            lines.append(f"set -gx {change.name} {quote(change.value, shell)}")
        else:
            lines.append(f"export {change.name}={quote(change.value, shell)}")
    return "\n".join(lines) + "\n"


def command_line(argv: Sequence[str]) -> str:
    """``argv`` as a POSIX shell would need it typed."""
    import shlex

    return shlex.join(argv)


def profiles_text(listings: Sequence[Listing], dirs: Sequence[tuple[str, str]]) -> str:
    lines = ["search path:"]
    lines += [f"  {label:<17} {printable(directory)}" for label, directory in dirs]
    lines.append("")
    if not listings:
        return printable_lines([*lines, "no profiles found"])
    width = max(len(printable(item.name)) for item in listings)
    for item in listings:
        text = item.description or "(no description)"
        if item.error:
            text = f"BROKEN: {item.error}"
        if item.shadowed_by:
            text += f"  [shadowed by {item.shadowed_by}]"
        lines.append(f"{printable(item.name).ljust(width)}  {item.source:<17} {text}")
    return printable_lines(lines)


def profiles_json(listings: Sequence[Listing], dirs: Sequence[tuple[str, str]]) -> str:
    data = {
        "search_path": [{"source": label, "path": directory} for label, directory in dirs],
        "profiles": [
            {
                "name": item.name,
                "path": item.path,
                "source": item.source,
                "description": item.description,
                "shadowed_by": item.shadowed_by,
                "error": item.error,
            }
            for item in listings
        ],
    }
    return json.dumps(data, indent=2) + "\n"

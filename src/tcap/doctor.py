"""``tcap doctor``: one page on the machine, an interpreter's native thread
libraries, the hazards they make together, and what a profile would set.

The libraries are loaded in a child process of the interpreter inspected
(``tcap/_inspect.py`` run by path), never in tcap's own; their build facts
are recorded, so later plans for that interpreter respect the limits.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from typing import Any

from tcap.cpuset import format_cpu_list
from tcap.errors import TcapError
from tcap.machine import Machine, read_machine, read_numa, usable
from tcap.plural import counted
from tcap.recipe import THREAD_VARIABLES, build_plan

#: Seconds the child may take to import the numeric stack.
CHILD_TIMEOUT = 120
#: The answer of _inspect.py is one JSON line of a few kilobytes.
MAX_ANSWER = 1 << 20


def machine_facts(environ: Mapping[str, str]) -> tuple[Machine, dict[str, Any]]:
    machine = read_machine(topology=True, environ=environ)
    count, why = usable(machine, machine.allowed)
    per_core: dict[tuple[int, int], int] = {}
    for core in (machine.cores or {}).values():
        per_core[core] = per_core.get(core, 0) + 1
    numa = read_numa(environ.get("TCAP_SYSROOT") or "/")
    allowed = machine.allowed
    facts = {
        "online": machine.online,
        "affinity": None if allowed is None else format_cpu_list(allowed),
        "affinity_count": None if allowed is None else len(allowed),
        "quota": machine.quota,
        "quota_source": machine.quota_source,
        "slurm": machine.slurm,
        "slurm_source": machine.slurm_source,
        "physical": len(per_core) if per_core else None,
        "threads_per_core": max(per_core.values()) if per_core else None,
        "numa": None if numa is None else [format_cpu_list(node) for node in numa],
        "usable": count,
        "usable_why": why,
    }
    return machine, facts


def inspect_python(python: str, environ: Mapping[str, str]) -> dict[str, Any]:
    """Run tcap/_inspect.py in ``python``: its native libraries, as data."""
    from importlib.util import find_spec

    here = os.path.dirname(os.path.abspath(__file__))
    spec = find_spec("threadpoolctl")
    argv = [python, os.path.join(here, "_inspect.py")]
    if spec is not None and spec.origin:
        argv.append(spec.origin)
    env = {k: v for k, v in environ.items() if k not in ("TCAP_PROBE", "TCAP_VERIFY")}
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT, check=False)
    except OSError as error:
        raise TcapError(f"tcap doctor: cannot run {python}: {error.strerror}") from None
    except subprocess.TimeoutExpired:
        raise TcapError(f"tcap doctor: {python} took over {CHILD_TIMEOUT} s to load its libraries") from None
    from tcap import safefile

    lines = done.stdout.strip().splitlines()
    try:  # another interpreter's answer is input: bounded, then every field checked
        data = safefile.load_json(lines[-1]) if lines and len(lines[-1]) <= MAX_ANSWER else None
    except ValueError:
        data = None
    if isinstance(data, dict):
        data = _checked_answer(data)
    if done.returncode != 0 or not isinstance(data, dict):
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise TcapError(f"tcap doctor: {python} could not list its native libraries (is it a Python?): {last}")
    return data


def _checked_answer(data: dict[str, Any]) -> dict[str, Any] | None:
    """The fields of an _inspect.py answer tcap uses, each of its type (the
    libraries of the wrong shape dropped), or None when it is not one."""
    from tcap import _inspect

    def strings(value: Any) -> list[str]:
        return [item for item in value if isinstance(item, str)][:64] if isinstance(value, list) else []

    libraries = data.get("libraries")
    if not isinstance(libraries, list):
        return None
    return {
        "python": data["python"] if isinstance(data.get("python"), str) else None,
        "imported": strings(data.get("imported")),
        "missing": strings(data.get("missing")),
        "libraries": [lib for lib in libraries[:_inspect.MAX_LIBRARIES] if _inspect.valid_fact(lib)],  # type: ignore[no-untyped-call]
    }


def hazards(
    facts: Mapping[str, Any], libraries: list[dict[str, Any]], imported: list[str], python: str,
    environ: Mapping[str, str],
) -> tuple[list[dict[str, str]], list[str]]:
    """(hazards with their fix, plain notes)."""
    from tcap.libraries import what

    found: list[dict[str, str]] = []
    notes: list[str] = []
    usable_count = facts["usable"]
    visible = facts["affinity_count"] or facts["online"] or usable_count
    script = f"{python} fit.py" if python else "python fit.py"
    limited = [lib for lib in libraries if isinstance(lib.get("max_threads"), int)
               and lib["max_threads"] < max(usable_count, visible)]
    if limited:
        limit = min(lib["max_threads"] for lib in limited)
        names = " and ".join(what(lib) for lib in limited)
        built, it = ("is", "it") if len(limited) == 1 else ("are", "them")
        found.append({
            "what": f"{names} {built} built for at most {counted(limit, 'thread')}, but "
            f"{max(usable_count, visible)} CPUs are visible: without tcap, OpenMP code calling {it} from every "
            f"CPU (a KMeans fit) crashes with \"precompiled NUM_THREADS exceeded\"",
            "fix": f"tcap run -p kmeans -- {script}   (tcap now caps OpenMP and OpenBLAS at {limit} for "
            f"this interpreter)",
        })
    blas = [lib for lib in libraries if lib.get("user_api") == "blas"]
    if len(blas) > 1:
        notes.append(
            f"{len(blas)} BLAS libraries are loaded ({', '.join(what(lib) for lib in blas)}): each has a pool of its "
            "own, all sized by the same variables"
        )
    runtimes = sorted({str(lib.get("prefix")) for lib in libraries if lib.get("user_api") == "openmp"})
    if len(runtimes) > 1:
        found.append({
            "what": f"several OpenMP runtimes in one process ({', '.join(runtimes)}): each starts its own team, and "
            "mixing Intel's or LLVM's with GNU's is known to oversubscribe or deadlock",
            "fix": f"install the packages from one source (all PyPI wheels, or all conda-forge); meanwhile "
            f"tcap run --openmp 1 -- {script}",
        })
    if (facts["quota"] is not None or facts["slurm"] is not None) and usable_count < visible:
        limit_text = (
            f"the cgroup quota of {counted(facts['quota'], 'CPU')}" if facts["quota"] is not None
            else f"Slurm's allocation of {counted(facts['slurm'], 'CPU')}"
        )
        found.append({
            "what": f"{visible} CPUs are visible but {limit_text} keeps only {usable_count} busy: OpenMP, "
            f"OpenBLAS and MKL count the {visible} and start that many threads each",
            "fix": f"tcap run -- {script}   (the default profile caps them at {usable_count})",
        })
    affinity = facts["affinity_count"]
    if "numexpr" in imported and facts["online"] and affinity and facts["online"] > affinity:
        found.append({
            "what": f"numexpr counts the {facts['online']} online CPUs, not the {affinity} of "
            "the affinity mask, and starts up to 16 threads on them",
            "fix": f"tcap run -- {script}",
        })
    for name in sorted(THREAD_VARIABLES):
        value = environ.get(name, "").split(",")[0].strip()
        if value.isdigit() and int(value) > usable_count:
            found.append({
                "what": f"{name}={environ[name]} in this environment asks for more threads than the "
                f"{counted(usable_count, 'usable CPU')}",
                "fix": f"tcap run -- {script}   (tcap lowers it to {usable_count})",
            })
    return found, notes


def doctor(options: Mapping[str, Any], environ: Mapping[str, str]) -> tuple[dict[str, Any], int]:
    """The whole report as data, and the exit code (1: a hazard)."""
    from tcap import _inspect
    from tcap.cache import store_dir
    from tcap.libraries import default_interpreter

    python = str(options.get("python") or default_interpreter(environ))
    _, facts = machine_facts(environ)
    child = inspect_python(python, environ)
    libraries = list(child["libraries"])
    libraries.sort(key=lambda lib: (str(lib.get("user_api")), str(lib.get("owner")), str(lib.get("filepath"))))
    recorded = None
    if libraries:
        try:
            recorded = _inspect.record(store_dir(environ), python, libraries)  # type: ignore[no-untyped-call]
        except OSError as error:  # a full disk, a cache directory another user owns
            recorded = f"not recorded: {error.strerror}" + (f" ({error.filename})" if error.filename else "")
    found, notes = hazards(facts, libraries, list(child.get("imported", [])), python, environ)
    plan = build_plan({**options, "python": python}, environ)[0]
    report = {
        "machine": facts,
        "python": {
            "executable": python,
            "version": child.get("python"),
            "imported": child.get("imported", []),
            "not_installed": child.get("missing", []),
            "recorded_in": recorded,
        },
        "libraries": libraries,
        "notes": notes,
        "hazards": found,
        "plan": plan.to_data(),
    }
    return report, 1 if found else 0


def text(report: Mapping[str, Any], plan_text: str) -> str:
    from tcap.libraries import what

    m = report["machine"]
    lines = ["machine"]
    lines.append(f"  online CPUs      {m['online']}  (os.cpu_count())")
    if m["affinity"] is not None:
        lines.append(f"  affinity mask    {counted(m['affinity_count'], 'CPU')}: {m['affinity']}")
    if m["physical"] is not None:
        smt = f", {m['threads_per_core']} hardware threads per core (SMT)" if m["threads_per_core"] > 1 else ", no SMT"
        lines.append(f"  physical cores   {m['physical']}{smt}")
    if m["numa"] is not None:
        nodes = "; ".join(f"node{i}: {cpus}" for i, cpus in enumerate(m["numa"]))
        lines.append(f"  NUMA nodes       {len(m['numa'])} ({nodes})")
    quota = "none" if m["quota"] is None else f"{counted(m['quota'], 'CPU')} ({m['quota_source']})"
    lines.append(f"  cgroup quota     {quota}")
    slurm = "not in a Slurm job" if m["slurm"] is None else f"{counted(m['slurm'], 'CPU')} ({m['slurm_source']})"
    lines.append(f"  Slurm            {slurm}")
    lines.append(f"  usable CPUs      {m['usable']}  ({m['usable_why']})")
    p = report["python"]
    lines += ["", f"python {p['executable']} ({p['version']})"]
    lines.append(f"  imported         {', '.join(p['imported']) or 'nothing numeric'}"
                 + (f"; not installed: {', '.join(p['not_installed'])}" if p["not_installed"] else ""))
    if p["recorded_in"]:
        lines.append(f"  facts recorded   {p['recorded_in']}")
    lines += ["", "native thread libraries"]
    if not report["libraries"]:
        lines.append("  none loaded (threadpoolctl sees no BLAS or OpenMP runtime)")
    for lib in report["libraries"]:
        limit = lib.get("max_threads")
        layer = f", {lib['threading_layer']} threads" if lib.get("threading_layer") else ""
        built = f", built for at most {counted(limit, 'thread')}" if limit else ""
        lines.append(f"  {what(lib)} ({lib.get('user_api')}{layer}{built})")
        lines.append(f"      {lib.get('filepath')}")
    for note in report["notes"]:
        lines.append(f"  note: {note}")
    lines += ["", "hazards"]
    if not report["hazards"]:
        lines.append("  none found")
    for number, hazard in enumerate(report["hazards"], 1):
        lines.append(f"  {number}. {hazard['what']}")
        lines.append(f"     fix: {hazard['fix']}")
    from tcap.render import printable_lines

    # Paths, versions and names come from another interpreter's answer: no
    # control character of theirs reaches the terminal (the plan's text is
    # escaped already).
    text = printable_lines(lines)
    return text + "\nplan\n" + "".join("  " + line + "\n" if line else "\n"
                                       for line in plan_text.rstrip("\n").split("\n"))

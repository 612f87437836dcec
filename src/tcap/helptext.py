"""The help of tcap's commands, as data beside their grammar (tcap.grammar).

Imported only when help is asked for (``tcap --help``, ``tcap COMMAND
--help``, ``tcap help COMMAND``): never on the launch path.  Each entry
names every option its command accepts in ``tcap.grammar.COMMANDS``, and
nothing else (a test holds the two together).
"""

from __future__ import annotations

import re
from typing import NamedTuple

WIDTH = 79
#: Where an option's description starts (the option column is 2 + 18 + 1).
COLUMN = 21


class Help(NamedTuple):
    """One command's help: its one-line summary (also in ``tcap --help``),
    usage lines, what it does, option sections of (option, one-line
    description), a closing paragraph and examples (command, what it does)."""

    summary: str
    usage: tuple[str, ...]
    about: str
    sections: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]
    notes: str
    examples: tuple[tuple[str, str], ...]


PLAN = (
    ("-p, --profile P", "profile name or path to a .toml file (default: default)"),
    ("--threads N", "cap for every pool"),
    ("--blas N", "cap for BLAS pools (OpenBLAS, MKL, BLIS, Accelerate)"),
    ("--openmp N", "cap for OpenMP pools"),
    ("--workers N", "processes the program runs in parallel (see below)"),
    ("--cpus SPEC", "all | 0-3,8 (a list) | first:N | physical | auto:N | rank"),
    ("--set VAR=VALUE", "also set VAR (repeatable)"),
    ("--verify MODE", "off | warn | strict | enforce"),
    ("--share MODE", "busy (default) | off (see below)"),
)

PLAN_NOTES = """\
N may be an expression over cpus and physical, e.g. 'cpus/2' or
'max(1,cpus-2)'. --workers N: pools get cpus / N threads each, and joblib's
n_jobs=-1 means N. --cpus auto:N takes N CPUs no other tcap launch holds;
rank takes this rank's own block of the CPUs the local ranks of Slurm, MPI or
torchrun share. --share busy: the probes share the CPUs among the processes
busy at run time; off: pools stay at their caps."""

PYTHON = ("--python PATH", "the interpreter whose library limits apply (see below)")

EXIT_CODES = """\
exit codes: the command's own; 2 usage or configuration error; 74 an I/O
error (full disk, failing output, unwritable directory); 125 other failure
of tcap; 126 command not executable; 127 command not found; 86 a pool over
its cap under verify strict (the command itself exited 0); 75 too few free
CPUs for auto:N under the site policy's on_full = error/wait."""

ABOUT = """\
Cap every thread pool (OpenBLAS, OpenMP, MKL, ...) and the CPU affinity of a
program before it starts, from a TOML profile."""

HELP: dict[str, Help] = {
    "run": Help(
        "run a command with its thread pools and CPUs capped",
        ("tcap run [PLAN OPTIONS] [--dry-run] [--report] [--report-json FILE]",
         "         [--plot FILE] [--kernel] [--] COMMAND [ARG...]",
         "tcap run --plan FILE [--kernel] [--] COMMAND [ARG...]"),
        "Resolve the profile into a plan (variables for every pool, the CPU\n"
        "affinity) and exec COMMAND under it.",
        (("plan options", PLAN),
         ("run options", (
             ("--dry-run", "print the plan and the command; run nothing"),
             ("--report", "then every process's pools, peak threads and a verdict"),
             ("--report-json FILE", "the same report as JSON into FILE (see below)"),
             ("--plot FILE", "a picture of the run into FILE (.png, .svg or .pdf)"),
             ("--plan FILE", "run a frozen plan (kernel install --freeze), no profile"),
             ("--kernel", "COMMAND is an IPython kernel: check pools after each cell"),
         ))),
        PLAN_NOTES + "\n\n"
        "--report runs the command as a child, then prints every process's pools\n"
        "(threads/cap), peak OS threads and a verdict. --report-json FILE: {rank},\n"
        "{host} and {pid} in FILE are filled in (one file per rank of a job).\n"
        "--plot needs matplotlib (pip install 'tcap[plot]'): busy threads per\n"
        "process over time against the CPUs, the shares and the violations; {rank},\n"
        "{host}, {pid} too. With --report, --report-json, --plot or verify strict,\n"
        "tcap supervises the command instead of exec-ing it; strict exits 86 when a\n"
        "pool went over its cap. --kernel: with verification on, tcap also checks\n"
        "the pools after every cell of the kernel.",
        (("tcap run -p serial -- python fit.py", "one thread per pool"),
         ("tcap run -p kmeans --workers 2 -- python fit.py", "a pool of 2 fits sharing the CPUs"),
         ("tcap run --threads cpus/2 --report -- python fit.py", "then a report of every process"),
         ("tcap run -p kmeans --dry-run -- python fit.py", "print the plan; run nothing")),
    ),
    "show": Help(
        "print the plan a profile makes here: caps, CPUs, variables, why",
        ("tcap show [PLAN OPTIONS] [--python PATH] [--json]",),
        "Print the plan tcap run would make on this machine, each variable with\n"
        "the profile line or flag it comes from.",
        (("plan options", PLAN),
         ("show options", (PYTHON, ("--json", "the plan as JSON")))),
        PLAN_NOTES + "\n\n"
        "--python PATH is the interpreter whose recorded library limits apply\n"
        "(default: the python3 on PATH); tcap run uses the command's.",
        (("tcap show -p kmeans --workers 2", "the plan for 2 parallel fits"),
         ("tcap show --threads 4 --json", "the plan as JSON")),
    ),
    "env": Help(
        "print the plan as shell variable assignments, to eval",
        ("tcap env [PLAN OPTIONS] [--python PATH] [--shell sh|bash|zsh|fish]",),
        "Print the plan's variables as shell commands, for a shell or a job script\n"
        "that cannot put tcap run in front of the program (no affinity, no probe).",
        (("plan options", PLAN),
         ("env options", (PYTHON, ("--shell SHELL", "sh, bash, zsh or fish syntax (default: $SHELL's)")))),
        PLAN_NOTES + "\n\n"
        "--python PATH is the interpreter whose recorded library limits apply\n"
        "(default: the python3 on PATH).",
        (('eval "$(tcap env -p serial)"', "cap this shell's later commands"),
         ("tcap env --threads 2 --shell fish | source", "the same in fish")),
    ),
    "doctor": Help(
        "check the machine and a Python's libraries for pool hazards",
        ("tcap doctor [PLAN OPTIONS] [--python PATH] [--json]",),
        "Load the interpreter's numeric libraries in a child, record their build\n"
        "limits, and list the machine, the libraries, hazards with their fixes and\n"
        "the plan.",
        (("plan options", PLAN),
         ("doctor options", (
             ("--python PATH", "the interpreter to examine (default: the python3 on PATH)"),
             ("--json", "the findings as JSON"),
         ))),
        PLAN_NOTES + "\n\n"
        "doctor exits 0 when there is no hazard, 1 when there is one.",
        (("tcap doctor", "the python3 on PATH under the default profile"),
         ("tcap doctor --python .venv/bin/python -p kmeans", "a venv's interpreter, another profile")),
    ),
    "profiles": Help(
        "list the profiles tcap finds and its search path",
        ("tcap profiles [--json | --names]",),
        "List the search path (user, site, built-in) and every profile on it with\n"
        "where it comes from and its description.",
        (("options", (
            ("--json", "the search path and profiles as JSON"),
            ("--names", "only the names, one a line (for shell completion)"),
        )),),
        "",
        (("tcap profiles", "the search path and the profiles"),),
    ),
    "alias": Help(
        "print shell aliases that run commands under profiles",
        ("tcap alias [-p P ...] [--shell bash|zsh|fish] [--static]",),
        "Print an alias per profile (tcap-NAME, or the profile's alias key) that\n"
        "runs a command under it (see docs/shared-servers.md).",
        (("options", (
            ("-p, --profile P", "a profile to make an alias for (repeatable; default: all)"),
            ("--shell SHELL", "bash, zsh or fish syntax (default: $SHELL's)"),
            ("--static", "bake the resolved plan in: no Python runs in front"),
        )),),
        "A --static alias is stale when the profile changes.",
        (("tcap alias -p serial >> ~/.bashrc", "then: tcap-serial python fit.py"),
         ("tcap alias --static", "aliases that start no Python")),
    ),
    "shell-init": Help(
        "print the aliases and completion for eval in a shell's rc file",
        ("tcap shell-init [bash|zsh|fish] [-p P ...] [--static]",),
        "Print the profiles' aliases (as tcap alias) and tab completion for tcap's\n"
        "commands, options and profile names (see docs/shared-servers.md).",
        (("options", (
            ("-p, --profile P", "a profile to make an alias for (repeatable; default: all)"),
            ("--static", "bake the resolved plan into the aliases (as tcap alias)"),
        )),),
        "The shell defaults to $SHELL's.",
        (('eval "$(tcap shell-init bash)"', "in ~/.bashrc: aliases and completion"),
         ("tcap shell-init fish | source", "in ~/.config/fish/config.fish")),
    ),
    "bookings": Help(
        "list the CPUs held by live cpus = \"auto:N\" launches",
        ("tcap bookings [--json]",),
        "List the bookings of live tcap launches that placed themselves with\n"
        "cpus = \"auto:N\": their CPUs, user, processes and command.",
        (("options", (("--json", "the bookings as JSON, with each booking's file"),)),),
        "",
        (("tcap bookings", "who holds which CPUs now"),),
    ),
    "report": Help(
        "merge the --report-json files of launches into one verdict",
        ("tcap report [--json FILE] [--plot FILE] REPORT.json...",),
        "Merge the --report-json files of several launches (the ranks of a job, on\n"
        "one node or many) and print a table per node, the launch budget per node\n"
        "and one verdict.",
        (("options", (
            ("--json FILE", "the merged report as JSON into FILE"),
            ("--plot FILE", "a picture of them into FILE, a panel per node"),
        )),),
        "report exits 0 when every cap and budget held, 1 otherwise. --plot needs\n"
        "matplotlib (pip install 'tcap[plot]').",
        (("tcap report rank-*.json", "one verdict for a job's ranks"),
         ("tcap report --plot job.png r0.json r1.json", "and a picture of them")),
    ),
    "sweep": Help(
        "time a command under combinations of caps and rank them",
        ("tcap sweep [-p BASE] [--threads LIST] [--blas LIST] [--openmp LIST]",
         "           [--workers LIST] [--repeat N] [--save NAME] [--plot FILE]",
         "           [--json] -- COMMAND [ARG...]"),
        "Run COMMAND under every combination of the lists, --repeat times each\n"
        "(interleaved), and rank them by median wall time.",
        (("options", (
            ("-p, --profile BASE", "the profile the combinations start from (default: default)"),
            ("--threads LIST", "caps for every pool to try, e.g. 1,2,4"),
            ("--blas LIST", "BLAS caps to try"),
            ("--openmp LIST", "OpenMP caps to try"),
            ("--workers LIST", "--workers values to try"),
            ("--repeat N", "runs of each combination (default 3)"),
            ("--save NAME", "write the winner as a profile NAME"),
            ("--plot FILE", "a picture of the timings into FILE (needs matplotlib)"),
            ("--json", "the results as JSON"),
        )),),
        "",
        (("tcap sweep --threads 1,2,4 --workers 1,2 -- python fit.py", "6 combinations, 3 runs each"),
         ("tcap sweep --threads 1,2 --save fit -- python fit.py", "then: tcap run -p fit -- ...")),
    ),
    "kernel install": Help(
        "install a Jupyter kernel that runs under a profile",
        ("tcap kernel install [PLAN OPTIONS] [--name N] [--display-name D]",
         "                    [--user | --sys-prefix | --prefix DIR]",
         "                    [--python PATH] [--freeze] [--force]"),
        "Install a kernelspec whose kernel starts under tcap run with the plan\n"
        "(see docs/jupyter.md).",
        (("plan options", PLAN),
         ("kernel install options", (
             ("--name N", "kernelspec name (default tcap-PROFILE)"),
             ("--display-name D", "name shown in Jupyter (default: Python, profile and caps)"),
             ("--user", "install for this user, as for ipykernel install"),
             ("--sys-prefix", "install into sys.prefix (a venv's or conda env's Jupyter)"),
             ("--prefix DIR", "install under DIR (default of all three: system-wide)"),
             ("--python PATH", "the kernel's Python (needs ipykernel; default: tcap's)"),
             ("--freeze", "store the resolved plan; no profile read at each start"),
             ("--force", "replace an existing kernelspec of that name"),
         ))),
        PLAN_NOTES,
        (("tcap kernel install -p serial --user", "a kernel tcap-serial for this user"),
         ("tcap kernel install -p kmeans --workers 2 --sys-prefix --freeze", "a frozen plan in the venv")),
    ),
    "kernel list": Help(
        "list the kernelspecs tcap installed",
        ("tcap kernel list [--json]",),
        "List the tcap kernelspecs Jupyter finds: name, profile, frozen or not, and\n"
        "where they are.",
        (("options", (("--json", "the kernels as JSON"),)),),
        "",
        (("tcap kernel list", "the tcap kernels Jupyter finds"),),
    ),
    "kernel remove": Help(
        "remove a kernelspec tcap installed",
        ("tcap kernel remove [--force] NAME",),
        "Remove the kernelspec NAME (tcap kernel list names them).",
        (("options", (("--force", "remove it even if tcap did not make it"),)),),
        "",
        (("tcap kernel remove tcap-serial", "remove the kernel tcap-serial"),),
    ),
}

#: The kernel command's own page: its subcommands.
KERNEL = Help(
    "install, list or remove Jupyter kernels that run under a profile",
    (*HELP["kernel install"].usage, *HELP["kernel list"].usage, *HELP["kernel remove"].usage),
    "Jupyter kernels whose pools and CPUs tcap caps (see docs/jupyter.md).",
    (("commands", tuple((f"{name}", HELP[f"kernel {name}"].summary) for name in ("install", "list", "remove"))),),
    "Run 'tcap kernel SUBCOMMAND --help' for a subcommand's options.",
    (*HELP["kernel install"].examples[:1], *HELP["kernel list"].examples),
)

#: The top-level commands in the order tcap --help lists them.
ORDER = ("run", "show", "env", "doctor", "profiles", "alias", "shell-init", "bookings", "report", "sweep", "kernel")

_OPTION_RE = re.compile(r"(?<![\w-])(--?[a-z][a-z-]*)")


def options_of(help: Help) -> set[str]:
    """Every option a help page describes (without -h/--help)."""
    found: set[str] = set()
    for _, entries in help.sections:
        for option, _ in entries:
            found.update(_OPTION_RE.findall(option))
    return found


def _entry(option: str, text: str) -> list[str]:
    if len(option) <= COLUMN - 3:
        return [f"  {option:<{COLUMN - 3}} {text}"]
    return [f"  {option}", " " * COLUMN + text]


def _usage(lines: tuple[str, ...]) -> list[str]:
    return [("usage: " if index == 0 else "       ") + line for index, line in enumerate(lines)]


def _page(help: Help, extra: tuple[str, ...] = ()) -> str:
    lines = [*_usage(help.usage), "", help.about]
    for title, entries in help.sections:
        lines += ["", f"{title}:"]
        for option, text in entries:
            lines += _entry(option, text)
    if not help.sections[-1][0].endswith("options"):
        lines += ["", "options:"]
    lines += _entry("-h, --help", "show this help")
    if help.notes:
        lines += ["", help.notes]
    lines += ["", "examples:"]
    for command, what in help.examples:
        lines += [f"  {command}", f"      {what}"]
    lines += list(extra)
    return "\n".join(lines) + "\n"


def command_help(name: str) -> str:
    """``tcap NAME --help`` (``kernel`` or ``kernel install`` etc. too)."""
    if name == "kernel":
        return _page(KERNEL)
    return _page(HELP[name], ("", EXIT_CODES) if name == "run" else ())


def summary(name: str) -> str:
    return KERNEL.summary if name == "kernel" else HELP[name].summary


def top_help() -> str:
    """``tcap --help``: every command with its summary, the plan options and
    the exit codes."""
    lines = ["usage: tcap COMMAND [OPTIONS] [ARG...]", "       tcap --version", "", ABOUT, "", "commands:"]
    for name in ORDER:
        lines.append(f"  {name:<12}{summary(name)}")
    lines.append(f"  {'':<12}(kernel install | kernel list | kernel remove)")
    lines += ["", "plan options (run, show, env, doctor, kernel install):"]
    for option, text in PLAN:
        lines += _entry(option, text)
    lines += ["", PLAN_NOTES, "", EXIT_CODES, "",
              "Run 'tcap COMMAND --help' (or 'tcap help COMMAND') for a command's usage,",
              "options and examples."]
    return "\n".join(lines) + "\n"

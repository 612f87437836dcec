"""tcap's command-line grammar as data: each command's options, below both
the parser (tcap.cli) and the commands that need it (the kernelspec argv,
shell completion), so that imports only go down."""

from __future__ import annotations

PLAN_OPTIONS = {
    "-p": "profile",
    "--profile": "profile",
    "--threads": "threads",
    "--blas": "blas",
    "--openmp": "openmp",
    "--workers": "workers",
    "--cpus": "cpus",
    "--set": "set",
    "--verify": "verify",
    "--share": "share",
}


# command -> (options taking a value, flags without one, what else it takes:
# True a command (options end at its first word), "args" plain arguments
# among the options, False nothing)
COMMANDS: dict[str, tuple[dict[str, str], tuple[str, ...], bool | str]] = {
    "run": (
        {**PLAN_OPTIONS, "--report-json": "report_json", "--plot": "plot", "--plan": "plan"},
        ("--dry-run", "--report", "--kernel"),
        True,
    ),
    "show": ({**PLAN_OPTIONS, "--python": "python"}, ("--json",), False),
    "env": ({**PLAN_OPTIONS, "--shell": "shell", "--python": "python"}, (), False),
    "doctor": ({**PLAN_OPTIONS, "--python": "python"}, ("--json",), False),
    "profiles": ({}, ("--json", "--names"), False),
    "alias": ({"-p": "profiles", "--profile": "profiles", "--shell": "shell"}, ("--static",), False),
    "shell-init": ({"-p": "profiles", "--profile": "profiles"}, ("--static",), "args"),
    "bookings": ({}, ("--json",), False),
    "report": ({"--json": "json", "--plot": "plot"}, (), "args"),
    "sweep": (
        {"-p": "profile", "--profile": "profile", "--threads": "threads", "--blas": "blas", "--openmp": "openmp",
         "--workers": "workers", "--repeat": "repeat", "--save": "save", "--plot": "plot"},
        ("--json",),
        True,
    ),
    "kernel install": (
        {**PLAN_OPTIONS, "--name": "name", "--display-name": "display_name", "--prefix": "prefix",
         "--python": "python"},
        ("--user", "--sys-prefix", "--freeze", "--force"),
        False,
    ),
    "kernel list": ({}, ("--json",), False),
    "kernel remove": ({}, ("--force",), "args"),
}
KERNEL_COMMANDS = ("install", "list", "remove")

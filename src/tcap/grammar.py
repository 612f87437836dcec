"""tcap's command-line grammar as data: each command's options, below both
the parser (tcap.cli) and the commands that need it (the kernelspec argv,
shell completion), so that imports only go down."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection

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


def is_option(word: str, known: Collection[str]) -> bool:
    """Whether ``word``, found where a value was due, is one of the
    command's options (or ``--``, ``-h``) rather than the value: then the
    option before it "needs a value" (tcap's parser and ``%tcap apply``)."""
    if word == "--" or word in ("-h", "--help"):
        return True
    option = word.partition("=")[0] if word.startswith("--") else word
    return option in known or (word.startswith("-p") and "-p" in known)

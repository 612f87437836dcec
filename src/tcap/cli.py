"""tcap's command line: parse, dispatch, map errors to exit codes.

The parser is hand-written rather than argparse because ``tcap run`` sits
in front of every program it launches: argparse (with gettext) costs more
than the whole cached launch.  The commands live in ``tcap.commands``.
"""

from __future__ import annotations

import os
import sys

from tcap.errors import EXIT_INTERNAL, EXIT_IO, TcapError, one_line
from tcap.grammar import COMMANDS, KERNEL_COMMANDS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

USAGE = """\
usage: tcap run      [PLAN OPTIONS] [--dry-run] [--report] [--report-json FILE]
                     [--plot FILE] [--kernel] [--] COMMAND [ARG...]
       tcap run      --plan FILE [--kernel] [--] COMMAND [ARG...]
       tcap show     [PLAN OPTIONS] [--python PATH] [--json]
       tcap env      [PLAN OPTIONS] [--python PATH] [--shell sh|bash|zsh|fish]
       tcap doctor   [PLAN OPTIONS] [--python PATH] [--json]
       tcap profiles [--json | --names]
       tcap alias    [-p P ...] [--shell bash|zsh|fish] [--static]
       tcap shell-init [bash|zsh|fish] [-p P ...] [--static]
       tcap bookings [--json]
       tcap report   [--json FILE] [--plot FILE] REPORT.json...
       tcap sweep    [-p BASE] [--threads LIST] [--blas LIST] [--openmp LIST]
                     [--workers LIST] [--repeat N] [--save NAME] [--plot FILE]
                     [--json] -- COMMAND [ARG...]
       tcap kernel install [PLAN OPTIONS] [--name N] [--display-name D]
                     [--user | --sys-prefix | --prefix DIR] [--python PATH]
                     [--freeze] [--force]
       tcap kernel list [--json]
       tcap kernel remove [--force] NAME
       tcap --version

Cap every thread pool (OpenBLAS, OpenMP, MKL, ...) and the CPU affinity of a
program before it starts, from a TOML profile.

plan options:
  -p, --profile P    profile name or path to a .toml file (default: default)
  --threads N        cap for every pool
  --blas N           cap for BLAS pools (OpenBLAS, MKL, BLIS, Accelerate)
  --openmp N         cap for OpenMP pools
  --workers N        processes the program runs in parallel: pools get
                     cpus / N threads each, joblib's n_jobs=-1 means N
  --cpus SPEC        all | a CPU list like 0-3,8 | first:N | physical |
                     auto:N (N CPUs no other tcap launch holds) | rank (this
                     rank's own block of the CPUs the local ranks of Slurm,
                     MPI or torchrun share)
  --set VAR=VALUE    also set VAR (repeatable)
  --verify MODE      off | warn | strict | enforce
  --share MODE       busy (default): the probes share the CPUs among the
                     processes busy at run time | off: pools stay at their caps
N may be an expression over cpus and physical, e.g. 'cpus/2' or 'max(1,cpus-2)'.

run options:
  --dry-run          print the plan and the command; run nothing
  --report           run the command as a child, then print every process's
                     pools (threads/cap), peak OS threads and a verdict
  --report-json FILE the same report as JSON into FILE; {rank}, {host} and
                     {pid} in FILE are filled in (one file per rank of a job)
  --plot FILE        a picture of the run into FILE (.png, .svg or .pdf;
                     needs matplotlib: pip install 'tcap[plot]'): busy
                     threads per process over time against the CPUs, the
                     shares and the violations; {rank}, {host}, {pid} too
  --plan FILE        run a frozen plan (tcap kernel install --freeze) instead
                     of resolving a profile
  --kernel           the command is an IPython kernel: with verification on,
                     also check the pools after every cell
With --report, --report-json, --plot or verify strict, tcap supervises the
command instead of exec-ing it; strict exits 86 when a pool went over its cap.

kernel install options (see docs/jupyter.md):
  --name N           kernelspec name (default tcap-PROFILE)
  --display-name D   name shown in Jupyter (default: profile and caps)
  --user | --sys-prefix | --prefix DIR
                     where to install, as for ipykernel install (default:
                     the system-wide Jupyter directory)
  --python PATH      the kernel's interpreter (needs ipykernel; default: tcap's)
  --freeze           store the resolved plan instead of re-reading the
                     profile at each kernel start
  --force            replace an existing kernelspec of that name (install);
                     remove one tcap did not make (remove)

show, env and doctor: --python PATH is the interpreter whose recorded library
limits apply (default: the python3 on PATH); tcap run uses the command's.
doctor loads that interpreter's numeric libraries in a child, records their
build limits, and lists the machine, the libraries, hazards with their fixes
and the plan; it exits 0 when there is no hazard, 1 when there is one.

alias and shell-init (see docs/shared-servers.md):
  -p P               a profile to make an alias for (repeatable; default: all)
  --static           bake the resolved plan into the alias: no Python runs
                     in front of the command (stale when the profile changes)
  eval "$(tcap shell-init bash)" in ~/.bashrc defines the aliases and
  completion; bookings lists the CPUs held by cpus = "auto:N" launches.

report: merges the --report-json files of several launches (the ranks of a
job, on one node or many) and prints, on standard output, a table per node,
the launch budget per node and one verdict; exits 0 when every cap and
budget held, 1 otherwise. --plot FILE draws them, a panel per node.

sweep: runs COMMAND under every combination of the lists (e.g. --threads
1,2,4 --workers 1,2), --repeat times each (default 3, interleaved), and
ranks them by median wall time; --save NAME writes the winner as a profile.

exit codes: the command's own; 2 usage or configuration error; 74 an I/O
error (full disk, failing output, unwritable directory); 125 other failure
of tcap; 126 command not executable; 127 command not found; 86 a pool over
its cap under verify strict (the command itself exited 0); 75 too few free
CPUs for auto:N under the site policy's on_full = error/wait.
"""



def parse(argv: Sequence[str]) -> tuple[str, dict[str, object], list[str]]:
    """Split argv into (command, options, the command to run)."""
    if not argv:
        raise TcapError("missing command: run, show, env or profiles (see tcap --help)")
    name, args = argv[0], list(argv[1:])
    if name == "kernel":
        if not args or args[0] not in KERNEL_COMMANDS:
            given = f" {args[0]!r}" if args else ""
            raise TcapError(f"tcap kernel: unknown or missing subcommand{given}: install, list or remove")
        name, args = f"kernel {args[0]}", args[1:]
    if name not in COMMANDS:
        from tcap.profiles import did_you_mean

        raise TcapError(f"unknown command {name!r}{did_you_mean(name, list(COMMANDS))} (see tcap --help)")
    valued, flags, takes_command = COMMANDS[name]
    options: dict[str, object] = {"set": []}
    positional: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            index += 1
            break
        if not arg.startswith("-") or arg == "-":
            if takes_command == "args":
                positional.append(arg)
                index += 1
                continue
            break
        option, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if option in ("-h", "--help"):
            options["help"] = True
            index += 1
            continue
        if option not in valued and option.startswith("-p") and len(option) > 2 and "-p" in valued:
            option, eq, value = "-p", "=", option[2:]
        if option in flags:
            if eq:
                raise TcapError(f"tcap {name}: {option} takes no value")
            options[option[2:].replace("-", "_")] = True
        elif option in valued:
            if not eq:
                index += 1
                if index >= len(args):
                    raise TcapError(f"tcap {name}: {option} needs a value")
                value = args[index]
            dest = valued[option]
            if dest in ("set", "profiles"):  # repeatable
                options.setdefault(dest, []).append(value)  # type: ignore[attr-defined]
            else:
                options[dest] = value
        else:
            from tcap.profiles import did_you_mean

            known = [*valued, *flags]
            raise TcapError(f"tcap {name}: unknown option {option}{did_you_mean(option, known)}")
        index += 1
    rest = positional + args[index:]
    if rest and not takes_command:
        raise TcapError(f"tcap {name}: unexpected argument {rest[0]!r}")
    return name, options, rest


def _silence_stdout() -> None:
    """Point standard output at /dev/null, so the interpreter's last flush of
    what could not be written does not fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run tcap; return the exit code (``run`` only returns on failure)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] in ("-h", "--help", "help"):
            sys.stdout.write(USAGE)
            return 0
        if args and args[0] == "--version":
            from tcap import __version__

            print(f"tcap {__version__}")
            return 0
        name, options, rest = parse(args)
        if options.get("help"):
            sys.stdout.write(USAGE)
            return 0
        from tcap import commands

        result: int = getattr(commands, name.replace(" ", "_").replace("-", "_"))(options, rest, os.environ)
        sys.stdout.flush()  # a full disk or a failing pipe shows here, not at interpreter exit
        return result
    except TcapError as error:
        # One line, whatever a path or a profile's text in the message holds.
        sys.stderr.write(f"tcap: error: {one_line(str(error))}\n")
        return error.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return 0
    except OSError as error:
        where = error.filename
        if where is None:
            try:
                os.getcwd()
                where = "standard output"
            except OSError:  # os.path.abspath and friends fail without one
                sys.stderr.write("tcap: error: the current directory no longer exists (cd to another one)\n")
                return EXIT_IO
        _silence_stdout()
        sys.stderr.write(f"tcap: error: I/O error on {one_line(str(where))}: {error.strerror or error}\n")
        return EXIT_IO
    except Exception as error:  # anything else is a bug in tcap: say so briefly
        if os.environ.get("TCAP_DEBUG"):
            raise
        sys.stderr.write(
            f"tcap: error: internal error: {type(error).__name__}: {error} (set TCAP_DEBUG=1 for the traceback)\n"
        )
        return EXIT_INTERNAL


"""tcap's command line: parse, dispatch, map errors to exit codes.

The parser is hand-written rather than argparse because ``tcap run`` sits
in front of every program it launches: argparse (with gettext) costs more
than the whole cached launch.  The commands live in ``tcap.commands``; the
help pages in ``tcap.helptext``, imported only when help is asked for.
"""

from __future__ import annotations

import os
import sys

from tcap.errors import EXIT_INTERNAL, EXIT_IO, TcapError, one_line
from tcap.grammar import COMMANDS, KERNEL_COMMANDS, is_option

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence


def _command_names() -> list[str]:
    """The top-level commands, in grammar order (kernel once)."""
    return list(dict.fromkeys(name.partition(" ")[0] for name in COMMANDS))


def _help(words: Sequence[str]) -> str:
    """The help page ``tcap help WORDS`` asks for (none: the top level)."""
    from tcap import helptext

    if not words or words[0] == "help":
        return helptext.top_help()
    name = " ".join(words[:2]) if words[0] == "kernel" and len(words) > 1 else words[0]
    if name != "kernel" and name not in COMMANDS:
        from tcap.profiles import did_you_mean

        choices = [*_command_names(), *(n for n in COMMANDS if " " in n)]
        raise TcapError(f"tcap help: unknown command {name!r}{did_you_mean(name, choices)} (see tcap --help)")
    return helptext.command_help(name)


def parse(argv: Sequence[str]) -> tuple[str, dict[str, object], list[str]]:
    """Split argv into (command, options, the command to run)."""
    if not argv:
        names = _command_names()
        raise TcapError(f"missing command: {', '.join(names[:-1])} or {names[-1]} (see tcap --help)")
    name, args = argv[0], list(argv[1:])
    if name == "kernel":
        if args and args[0] in ("-h", "--help"):
            return name, {"help": True}, []
        if not args or args[0] not in KERNEL_COMMANDS:
            given = f" {args[0]!r}" if args else ""
            raise TcapError(f"tcap kernel: unknown or missing subcommand{given}: install, list or remove")
        name, args = f"kernel {args[0]}", args[1:]
    if name not in COMMANDS:
        from tcap.profiles import did_you_mean

        raise TcapError(f"unknown command {name!r}{did_you_mean(name, [*_command_names(), 'help'])} (see tcap --help)")
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
            return name, {"help": True}, []
        if option not in valued and option.startswith("-p") and len(option) > 2 and "-p" in valued:
            option, eq, value = "-p", "=", option[2:]
        if option in flags:
            if eq:
                raise TcapError(f"tcap {name}: {option} takes no value")
            options[option[2:].replace("-", "_")] = True
        elif option in valued:
            if not eq:
                index += 1
                if index >= len(args) or is_option(args[index], [*valued, *flags]):
                    raise TcapError(f"tcap {name}: {option} needs a value")
                value = args[index]
            elif not value:
                raise TcapError(f"tcap {name}: {option} needs a value")
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
            sys.stdout.write(_help(args[1:]))  # tcap help run, tcap --help run
            return 0
        if args and args[0] == "--version":
            from tcap import __version__

            print(f"tcap {__version__}")
            return 0
        name, options, rest = parse(args)
        if options.get("help"):
            sys.stdout.write(_help(name.split(" ")))
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


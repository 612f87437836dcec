"""The one error type tcap raises, and the exit codes it maps to."""

from __future__ import annotations

#: Usage or configuration error: bad flag, bad TOML, unknown key, bad value,
#: extends cycle, missing profile, CPUs outside the usable set.
EXIT_USAGE = 2
#: ``verify = strict``: the command exited 0 but a process of the run had a
#: thread pool over its cap (chosen outside the ranges of the others and of
#: 128+signal, so it cannot be mistaken for them).
EXIT_VIOLATION = 86
#: An I/O error tcap met writing or reading what it needed: a full disk, a
#: closed or failing standard output, an unwritable cache, report, bookings
#: or kernelspec directory (sysexits' EX_IOERR). The message names the path
#: or stream and the OS error.
EXIT_IO = 74
#: Any other failure of tcap itself before the command was started.
EXIT_INTERNAL = 125
#: The command was found but could not be executed.
EXIT_NOT_EXECUTABLE = 126
#: The command was not found.
EXIT_NOT_FOUND = 127


class TcapError(Exception):
    """A failure reported to the user as one line, with an exit code.

    ``path`` and ``line`` locate the problem in a file when there is one.
    """

    def __init__(
        self,
        message: str,
        *,
        code: int = EXIT_USAGE,
        path: str | None = None,
        line: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.path = path
        self.line = line

    def __str__(self) -> str:
        where = ""
        if self.path is not None:
            where = f"{self.path}:{self.line}: " if self.line else f"{self.path}: "
        return where + self.message


def one_line(text: str) -> str:
    """``text`` with every control character escaped (newline as ``\\n``, CR
    as ``\\r``, ESC as ``\\x1b``...): a message tcap prints is one line, and
    a file name or a profile's text can neither forge nor hide tcap's lines."""
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char.isprintable() or char == "\t":
            out.append(char)
        else:
            out.append({"\n": "\\n", "\r": "\\r"}.get(char) or repr(char)[1:-1])
    return "".join(out)


def printable(text: object) -> str:
    """``text`` as :func:`one_line` makes it, tabs escaped too (they would
    break columns): what a profile, a child, a probe record or a report
    file holds reaches a table without moving the cursor or faking a line."""
    return one_line(str(text)).replace("\t", "\\t")

"""Finding, reading and validating profiles (one TOML file per profile).

A profile's name is its file's stem.  ``-p NAME`` searches, in order:
``$TCAP_PROFILE_PATH`` (colon-separated), ``$XDG_CONFIG_HOME/tcap/profiles``,
``$TCAP_SITE_DIR/profiles`` (default ``/etc/tcap``) and the built-in
profiles.  ``-p path/to/file.toml`` reads that file.  ``extends`` merges
parents first; a profile that extends its own name gets the next profile of
that name further down the search path.

Nothing here imports tomllib until a file is actually read: the launcher's
plan cache usually makes that unnecessary.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from tcap import safefile
from tcap.bounds import MAX_FILE, MAX_THREADS
from tcap.cache import signature
from tcap.cpuset import CPU_SPEC_FORMS, parse_cpu_spec
from tcap.errors import EXIT_IO, EXIT_USAGE, TcapError
from tcap.search import is_path, search_path
from tcap.variables import CAP_KEYS

VERIFY_MODES = ("off", "warn", "strict", "enforce")
#: The ``share`` key's values (tcap.plan.DEFAULT_SHARE is the default).
SHARE_MODES = ("busy", "off")
TOP_KEYS = ("description", "extends", "alias", *CAP_KEYS, "workers", "cpus", "verify", "share", "env")
#: (``\Z``, not ``$``, which also matches before a final newline.)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\Z")
#: What an alias name may be (a profile's ``alias``, or ``tcap-STEM``): a
#: plain command word in bash, zsh and fish, never an option (``-``) nor the
#: ``.`` builtin or a path (only dots).
ALIAS_RE = re.compile(r"^(?!-)(?!\.+\Z)[A-Za-z0-9_.-]+\Z")
ALIAS_CHARS = "letters, digits, '_', '.', '-'; not starting with '-'"

#: Variable names the shells tcap prints for (``tcap env``, ``tcap alias
#: --static``, ``tcap shell-init``) treat specially, refused in ``[env]``
#: and in ``tcap env --set``: assigning one does more than set a variable
#: for programs. zsh's UID, EUID, GID, EGID and USERNAME switch the shell
#: to another user; zsh evaluates the value of an integer parameter
#: (COLUMNS, HISTSIZE, SHLVL, ...) as arithmetic, where a subscript runs
#: ``$(...)`` however the value is quoted; prompts, PROMPT_COMMAND, FPATH
#: and fish_function_path run code; read-only ones (bash's UID, PPID,
#: SHELLOPTS; fish's status) fail the ``eval`` halfway; others never hold
#: (RANDOM, SECONDS, LINENO, PWD). From zshparam(1) ("parameters set by the
#: shell", and those zsh's own ``$parameters`` marks special), bash(1)
#: ("Shell Variables") and fish's read-only and electric variables;
#: tests/test_hostile_config.py checks them against the installed shells.
#: Ordinary variables the shells merely also read (PATH, HOME, LANG, LC_*,
#: MANPATH, CDPATH, TERM, ENV, BASH_ENV) stay allowed.
def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


SHELL_SPECIAL: dict[str, frozenset[str]] = {
    "zsh": _words("""
        ARGC COLUMNS EGID EPOCHREALTIME EPOCHSECONDS ERRNO EUID FIGNORE FPATH FUNCNEST GID HISTCHARS HISTCMD
        HISTSIZE IFS KEYBOARD_HACK KEYTIMEOUT LINENO LINES LISTMAX MAILCHECK MAILPATH MODULE_PATH NULLCMD OLDPWD
        OPTARG OPTIND PPID PROMPT PROMPT2 PROMPT3 PROMPT4 PROMPT_EOL_MARK PS1 PS2 PS3 PS4 PSVAR PWD RANDOM
        READNULLCMD RPROMPT RPROMPT2 RPS1 RPS2 SAVEHIST SECONDS SHLVL SPROMPT SRANDOM STTY TMOUT TRY_BLOCK_ERROR
        TRY_BLOCK_INTERRUPT TTYIDLE UID USERNAME WATCH WATCHFMT WORDCHARS ZLE_RPROMPT_INDENT ZSH_ARGZERO
        ZSH_EVAL_CONTEXT ZSH_EXECUTION_STRING ZSH_NAME ZSH_PATCHLEVEL ZSH_SCRIPT ZSH_SUBSHELL ZSH_VERSION _
        aliases argv builtins cdpath commands dirstack dis_aliases dis_builtins dis_functions dis_functions_source
        dis_galiases dis_patchars dis_reswords dis_saliases epochtime errnos fignore fpath funcfiletrace
        funcsourcetrace funcstack functions functions_source functrace galiases histchars history historywords
        jobdirs jobstates jobtexts keymaps langinfo mailpath manpath mapfile module_path modules nameddirs options
        parameters patchars path pipestatus prompt psvar reswords saliases signals status sysparams termcap
        terminfo userdirs usergroups watch widgets zsh_eval_context zsh_scheduled_events
    """),
    "bash": _words("""
        BASH BASHOPTS BASHPID BASH_ALIASES BASH_ARGC BASH_ARGV BASH_ARGV0 BASH_CMDS BASH_COMMAND BASH_COMPAT
        BASH_EXECUTION_STRING BASH_LINENO BASH_LOADABLES_PATH BASH_MONOSECONDS BASH_REMATCH BASH_SOURCE
        BASH_SUBSHELL BASH_TRAPSIG BASH_VERSINFO BASH_VERSION BASH_XTRACEFD COMP_CWORD COMP_KEY COMP_LINE
        COMP_POINT COMP_TYPE COMP_WORDBREAKS COMP_WORDS COMPREPLY COPROC DIRSTACK EPOCHREALTIME EPOCHSECONDS EUID
        FUNCNAME GLOBIGNORE GROUPS HISTCMD IFS LINENO MAILCHECK MAILPATH MAPFILE OLDPWD OPTARG OPTIND PIPESTATUS
        POSIXLY_CORRECT PPID PROMPT_COMMAND PS0 PS1 PS2 PS3 PS4 PWD RANDOM READLINE_ARGUMENT READLINE_LINE
        READLINE_MARK READLINE_POINT SECONDS SHELLOPTS SHLVL SRANDOM TMOUT UID histchars
    """),
    "fish": _words("""
        CMD_DURATION COLUMNS EUID FISH_VERSION IFS LINES PWD SHLVL _ argv fish_bind_mode fish_complete_path
        fish_function_path fish_key_bindings fish_kill_signal fish_killring fish_pid fish_private_mode history
        hostname last_pid pipestatus status status_generation umask version
    """),
}


def special_to(name: str) -> list[str]:
    """The shells (of ``SHELL_SPECIAL``) that treat variable ``name`` specially."""
    shells = [shell for shell, names in SHELL_SPECIAL.items() if name in names]
    if name.startswith("__fish") and "fish" not in shells:
        shells.append("fish")  # fish's own internals
    return shells


def special_problem(name: str) -> str | None:
    """Why ``name`` may not be set through a shell, or None."""
    shells = special_to(name)
    if not shells:
        return None
    return (f"{name} is a special parameter of {' and '.join(shells)}: assigning it there does more than set a "
            "variable (see docs/profiles.md), so tcap refuses it")

# A file's identity for the plan cache (see tcap.cache.signature).
Signature = Optional[tuple[int, int, int]]


@dataclass(frozen=True)
class Origin:
    """Where a setting came from: a file and line, or a flag."""

    source: str
    line: int | None = None
    key: str = ""

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where} {self.key}".rstrip()


@dataclass(frozen=True)
class Setting:
    value: Any
    origin: Origin

    def __str__(self) -> str:
        """Where it came from and what it says: ``file:3 blas = 1``."""
        if self.origin.source.startswith("flag "):
            return str(self.origin)
        shown = "false" if self.value is None else repr(self.value)
        return f"{self.origin} = {shown}"


@dataclass
class Profile:
    """A profile with its ``extends`` chain merged in."""

    name: str
    path: str
    description: str = ""
    #: The shell alias this profile's own file asks for (never inherited).
    alias: str | None = None
    settings: dict[str, Setting] = field(default_factory=dict)
    #: Extra variables: value is a string, or None to unset.
    env: dict[str, Setting] = field(default_factory=dict)
    #: Every file whose presence or content decided this profile.
    depends: list[tuple[str, Signature]] = field(default_factory=list)


def find(
    name: str,
    environ: Mapping[str, str],
    depends: list[tuple[str, Signature]],
    *,
    below: str | None = None,
) -> str | None:
    """The file of profile ``name``, searching after directory ``below`` if given.

    Records every candidate looked at in ``depends``: a file appearing
    earlier on the path would change the answer.
    """
    dirs = [d for _, d in search_path(environ)]
    if below is not None:
        below = os.path.abspath(below)
        absolute = [os.path.abspath(d) for d in dirs]
        dirs = dirs[absolute.index(below) + 1:] if below in absolute else []
    for directory in dirs:
        candidate = os.path.join(directory, name + ".toml")
        depends.append((os.path.abspath(candidate), signature(candidate)))
        try:
            os.stat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            pass  # there, or cannot be told (a directory that cannot be searched): the read says which
        return candidate
    return None


def load(spec: str, environ: Mapping[str, str]) -> Profile:
    """Load profile ``spec`` (a name or a path) with its parents merged."""
    depends: list[tuple[str, Signature]] = []
    if is_path(spec):
        path = spec
        depends.append((os.path.abspath(path), signature(path)))
        missing = _missing(path)
        if missing is not None:
            raise TcapError(f"profile file not found: {path}{missing}")
    else:
        _check_name(spec, None)
        found = find(spec, environ, depends)
        if found is None:
            searched = _path_text(environ)
            raise TcapError(f"no profile named {spec!r} on the search path ({searched}); see `tcap profiles`")
        path = found
    profile = Profile(name=_stem(path), path=path, depends=depends)
    _merge_file(profile, path, environ, stack=[])
    return profile


def _merge_file(profile: Profile, path: str, environ: Mapping[str, str], stack: list[str]) -> None:
    real = os.path.realpath(path)
    stack = [*stack, real]
    data, text = read_toml(path)
    validate(data, text, path)
    parents = data.get("extends", [])
    if isinstance(parents, str):
        parents = [parents]
    for parent in parents:
        line = locate(text, None, "extends")
        parent_path = _find_parent(parent, path, environ, profile.depends, line)
        parent_real = os.path.realpath(parent_path)
        if parent_real in stack:
            cycle = " -> ".join(_stem(p) for p in [*stack[stack.index(parent_real):], parent_real])
            raise TcapError(f"extends cycle: {cycle}", path=path, line=line)
        _merge_file(profile, parent_path, environ, stack)
    for key, value in data.items():
        if key in ("extends", "env"):
            continue
        origin = Origin(path, locate(text, None, key), key)
        if key == "description":
            profile.description = value
        elif key == "alias":
            if os.path.realpath(path) == os.path.realpath(profile.path):
                profile.alias = value
        else:
            profile.settings[key] = Setting(value, origin)
    for name, value in data.get("env", {}).items():
        origin = Origin(path, locate(text, "env", name), f"env.{name}")
        profile.env[name] = Setting(None if value is False else str(value), origin)


def _find_parent(
    parent: str, child: str, environ: Mapping[str, str], depends: list[tuple[str, Signature]], line: int | None
) -> str:
    if is_path(parent):
        full = os.path.join(os.path.dirname(child), parent)
        depends.append((os.path.abspath(full), signature(full)))
        missing = _missing(full)
        if missing is not None:
            raise TcapError(f"extends: profile file not found: {full}{missing}", path=child, line=line)
        return full
    _check_name(parent, child, line)
    # A profile extending its own name means the one it shadows.
    below = os.path.dirname(child) if parent == _stem(child) else None
    found = find(parent, environ, depends, below=below)
    if found is None:
        where = "further down the search path" if below else "on the search path"
        raise TcapError(f"extends: no profile named {parent!r} {where}", path=child, line=line)
    return found


def _missing(path: str) -> str | None:
    """"" when ``path`` does not exist, " (a symlink to ..., which does not
    exist)" when it is a dangling symlink, None otherwise: anything else
    (a symlink loop, a directory that cannot be searched) is said by the
    read, with its own reason."""
    try:
        os.stat(path)
        return None
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError:
        return None
    try:
        return f" (a symlink to {os.readlink(path)}, which does not exist)"
    except OSError:
        return ""


def read_bounded(path: str, limit: int, what: str, owners: frozenset[int] | None = None) -> bytes:
    """The bytes of the regular file ``path``, no more than ``limit`` (through
    :func:`tcap.safefile.read`: a FIFO, a device or a directory is refused
    without blocking, a larger file before a byte is read, a file other users
    can write too); TcapError names the file and the reason, exit 2 (74 for
    an I/O error of the system)."""
    try:
        return safefile.read(path, limit, owners=owners)
    except OSError as error:
        raise TcapError(f"cannot read {what}: {read_problem(error, limit)}", path=path,
                        code=EXIT_USAGE if error.errno in CONFIG_ERRNOS else EXIT_IO) from None


#: Read failures that say something about the file named (exit 2), not the system (exit 74).
CONFIG_ERRNOS = frozenset((
    errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ELOOP, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG,
    errno.EFBIG, errno.ENXIO, errno.ENODEV, errno.EAGAIN, errno.EEXIST,
))


def read_problem(error: OSError, limit: int) -> str:
    """One line for a failed read: safefile's reason, or the OS's."""
    if isinstance(error, safefile.Refused):
        return str(error.strerror)
    if error.errno == errno.ELOOP:
        return f"symlink loop ({error.strerror})"
    return str(error.strerror or error)


def toml_module() -> Any:
    """tomllib (Python 3.11+), or tomli, the same parser as a package, before."""
    try:
        import tomllib
    except ImportError:  # pragma: no cover (Python < 3.11)
        import tomli as tomllib  # type: ignore[import-not-found,no-redef]
    return tomllib


def read_toml(path: str, what: str = "profile", owners: frozenset[int] | None = None) -> tuple[dict[str, Any], str]:
    """Parse one TOML file; errors carry the file and line. A file other
    users can write, or one of another user's in a directory anybody can
    write, is refused (as sudo refuses such a sudoers file): whoever can
    change a profile chooses what the launches under it run with."""
    tomllib = toml_module()

    problem = directory_problem(path)
    if problem:
        raise TcapError(f"cannot use {what}: {problem}", path=path)
    raw = read_bounded(path, MAX_FILE, what, owners)
    if raw.startswith(b"\xef\xbb\xbf"):  # a byte-order mark, as Windows editors save: TOML has none
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise TcapError(f"not UTF-8 text (byte {error.start + 1})", path=path,
                        line=raw[: error.start].count(b"\n") + 1) from None
    try:
        return tomllib.loads(text), text
    except RecursionError:  # arrays or inline tables nested hundreds deep
        raise TcapError("invalid TOML: nested too deeply", path=path) from None
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        match = re.search(r"\(at line (\d+), column (\d+)\)$", message)
        line = None
        if match:
            line = int(match.group(1))
            message = message[: match.start()].rstrip() + f" (column {match.group(2)})"
        elif message.endswith("(at end of document)"):
            line = text.count("\n") + 1
            message = message.replace(" (at end of document)", " (at end of file)")
        raise TcapError(f"invalid TOML: {message}", path=path, line=line) from None


def directory_problem(path: str) -> str | None:
    """Why the directory of ``path`` lets others choose its content, or None:
    writable by other users without the sticky bit (anyone may replace the
    file), or sticky (as /tmp) and the file is neither root's nor yours."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        info = os.stat(directory)
    except OSError:
        return None  # the read itself says what is wrong
    if not info.st_mode & stat.S_IWOTH:
        return None
    mode = stat.S_IMODE(info.st_mode)
    if not info.st_mode & stat.S_ISVTX:
        return f"its directory {directory} is writable by other users (mode {mode:04o}), who may have replaced it"
    try:
        owner = os.stat(path).st_uid
    except OSError:
        return None
    if owner not in safefile.mine() | {0}:
        return (f"owned by uid {owner}, in {directory}, which every user can write (mode {mode:04o}): "
                "not trusted")
    return None


def validate(data: Mapping[str, Any], text: str, path: str) -> None:
    """Check every key and value of one profile file; raise on the first fault."""

    def fail(message: str, key: str, table: str | None = None) -> TcapError:
        return TcapError(message, path=path, line=locate(text, table, key))

    for key, value in data.items():
        if key not in TOP_KEYS:
            raise fail(f"unknown key {key!r}{did_you_mean(key, TOP_KEYS)}", key)
        if key == "description":
            if not isinstance(value, str):
                raise fail("description: expected a string", key)
        elif key == "alias":
            if not isinstance(value, str) or not ALIAS_RE.match(value):
                raise fail(f"alias: expected a command name ({ALIAS_CHARS}), not {shown(value)}", key)
        elif key == "extends":
            names = [value] if isinstance(value, str) else value
            if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
                raise fail("extends: expected a profile name or a list of names", key)
        elif key in CAP_KEYS or key == "workers":
            problem = count_problem(value)
            if problem:
                raise fail(f"{key}: {problem}", key)
        elif key == "cpus":
            if not isinstance(value, str):
                raise fail(f"cpus: expected a string: {CPU_SPEC_FORMS}", key)
            try:
                parse_cpu_spec(value)
            except ValueError as error:
                raise fail(f"cpus: {error}", key) from None
        elif key == "verify":
            if value not in VERIFY_MODES:
                raise fail(f"verify: expected one of {', '.join(VERIFY_MODES)}, not {shown(value)}", key)
        elif key == "share":
            if value not in SHARE_MODES:
                raise fail(f"share: expected one of {', '.join(SHARE_MODES)}, not {shown(value)}", key)
        elif key == "env":
            if not isinstance(value, dict):
                raise fail("env: expected a table ([env])", key)
            for name, item in value.items():
                if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*\Z", name):
                    raise fail(f"env: {shown(name)} is not a valid variable name", name, "env")
                problem = special_problem(name)
                if problem:
                    raise fail(f"env.{name}: {problem}", name, "env")
                if item is True or not isinstance(item, (str, int, float, bool)):
                    raise fail(f"env.{name}: expected a string, a number, or false to unset", name, "env")


def shown(value: Any, width: int = 40) -> str:
    """``repr(value)`` cut to ``width`` characters, for one-line messages."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def count_problem(value: Any) -> str | None:
    """Why ``value`` is not a valid thread count, or None if it is."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return f"expected an integer >= 1 or an expression string, not {shown(value)}"
    if isinstance(value, int):
        if value > MAX_THREADS:
            number = str(value) if value < 10**20 else "a number"
            return f"{number} is above tcap's ceiling of {MAX_THREADS} threads per pool"
        return None if value >= 1 else f"expected an integer >= 1, not {value}"
    from tcap.expr import Expr, ExprError

    try:
        Expr(value)
    except ExprError as error:
        return str(error)
    return None


def did_you_mean(word: str, choices: tuple[str, ...] | list[str]) -> str:
    """`` (did you mean 'X'?)`` when ``word`` looks like a slip for choice X,
    else "". A slip: at most 1 edit (a letter added, dropped, changed, or two
    neighbours swapped) in a word of 3 to 5 letters, 2 up to 9 and 3 beyond,
    or the start of one choice only (3 letters at least); the dashes in front
    of an option do not count, and letter case does not."""
    stem = word.lstrip("-").lower()
    limit = 0 if len(stem) <= 2 else 1 if len(stem) <= 5 else 2 if len(stem) <= 9 else 3
    best: tuple[int, str] | None = None
    for choice in choices:
        distance = _edits(stem, choice.lstrip("-").lower())
        if distance <= limit and (best is None or distance < best[0]):
            best = (distance, choice)
    if best is None and len(stem) >= 3:
        starting = [choice for choice in choices if choice.lstrip("-").lower().startswith(stem)]
        if len(starting) == 1:
            best = (0, starting[0])
    return f" (did you mean {best[1]!r}?)" if best else ""


def _edits(a: str, b: str) -> int:
    """The edits from ``a`` to ``b``: letters inserted, deleted, substituted
    and neighbours transposed (optimal string alignment distance)."""
    before: list[int] = []
    row = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        previous, before, row = before, row, [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            row[j] = min(before[j] + 1, row[j - 1] + 1, before[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], previous[j - 2] + 1)
    return row[-1]


def locate(text: str, table: str | None, key: str) -> int | None:
    """The line where ``key`` is assigned in ``[table]`` (None: top level)."""
    current: str | None = None
    pattern = re.compile(r'^\s*(?:"([^"]*)"|\'([^\']*)\'|([A-Za-z0-9_-]+))\s*=')
    for number, line in enumerate(text.splitlines(), 1):
        header = re.match(r"^\s*\[\s*([^\]]+?)\s*\]", line)
        if header:
            current = header.group(1).lstrip("[ ").strip("\"'")
            if table is not None and current == table and key == table:
                return number
            # A top-level key written as a table: [key], [key.sub] or [[key]].
            if table is None and (current == key or current.startswith(key + ".")):
                return number
            continue
        match = pattern.match(line)
        if match and current == table:
            name = next(g for g in match.groups() if g is not None)
            if name == key:
                return number
    if table is None and key == "env":
        return locate(text, "env", "env")
    return None


def _check_name(name: str, path: str | None, line: int | None = None) -> None:
    if not NAME_RE.match(name):
        raise TcapError(f"invalid profile name {name!r} (letters, digits, '.', '_', '-')", path=path, line=line)


def _stem(path: str) -> str:
    base = os.path.basename(path)
    return base[:-5] if base.endswith(".toml") else base


def _path_text(environ: Mapping[str, str]) -> str:
    return ", ".join(d for _, d in search_path(environ))


@dataclass(frozen=True)
class Listing:
    """One profile file on the search path, for ``tcap profiles``."""

    name: str
    path: str
    source: str
    description: str
    shadowed_by: str | None
    error: str | None
    alias: str | None = None


def list_profiles(environ: Mapping[str, str]) -> list[Listing]:
    """Every profile file on the search path, in search order."""
    seen: dict[str, str] = {}
    listings = []
    for label, directory in search_path(environ):
        try:
            names = sorted(n for n in os.listdir(directory) if n.endswith(".toml"))
        except OSError:
            continue
        for filename in names:
            path = os.path.join(directory, filename)
            name = _stem(path)
            description, error, alias = "", None, None
            if not NAME_RE.match(name):
                error = f"{path}: invalid profile name {name!r} (letters, digits, '.', '_', '-'); not usable with -p"
                listings.append(Listing(name, path, label, description, seen.get(name), error, alias))
                continue
            try:
                data, text = read_toml(path)
                validate(data, text, path)
                description = data.get("description", "")
                alias = data.get("alias")
            except TcapError as problem:
                error = str(problem)
            listings.append(Listing(name, path, label, description, seen.get(name), error, alias))
            seen.setdefault(name, path)
    return listings

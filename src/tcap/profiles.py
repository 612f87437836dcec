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

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from tcap.bounds import MAX_FILE, MAX_THREADS
from tcap.cache import signature
from tcap.cpuset import CPU_SPEC_FORMS, parse_cpu_spec
from tcap.errors import TcapError
from tcap.search import is_path, search_path
from tcap.variables import CAP_KEYS

VERIFY_MODES = ("off", "warn", "strict", "enforce")
TOP_KEYS = ("description", "extends", "alias", *CAP_KEYS, "workers", "cpus", "verify", "env")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: What a profile's ``alias`` may be: a plain command word in bash, zsh and fish.
ALIAS_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")

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
        sig = signature(candidate)
        depends.append((os.path.abspath(candidate), sig))
        if sig is not None:
            return candidate
    return None


def load(spec: str, environ: Mapping[str, str]) -> Profile:
    """Load profile ``spec`` (a name or a path) with its parents merged."""
    depends: list[tuple[str, Signature]] = []
    if is_path(spec):
        path = spec
        depends.append((os.path.abspath(path), signature(path)))
        if not os.path.exists(path):
            raise TcapError(f"profile file not found: {path}")
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
        if not os.path.exists(full):
            raise TcapError(f"extends: profile file not found: {full}", path=child, line=line)
        return full
    _check_name(parent, child, line)
    # A profile extending its own name means the one it shadows.
    below = os.path.dirname(child) if parent == _stem(child) else None
    found = find(parent, environ, depends, below=below)
    if found is None:
        where = "further down the search path" if below else "on the search path"
        raise TcapError(f"extends: no profile named {parent!r} {where}", path=child, line=line)
    return found


def read_bounded(path: str, limit: int, what: str) -> bytes:
    """The bytes of ``path``, read no further than ``limit``; TcapError names the file."""
    try:
        with open(path, "rb") as f:
            raw = f.read(limit + 1)
    except OSError as error:
        raise TcapError(f"cannot read {what}: {error.strerror}", path=path) from None
    if len(raw) > limit:
        raise TcapError(f"larger than {limit >> 20} MiB, tcap's limit for a {what} file", path=path)
    return raw


def toml_module() -> Any:
    """tomllib (Python 3.11+), or tomli, the same parser as a package, before."""
    try:
        import tomllib
    except ImportError:  # pragma: no cover (Python < 3.11)
        import tomli as tomllib  # type: ignore[import-not-found,no-redef]
    return tomllib


def read_toml(path: str, what: str = "profile") -> tuple[dict[str, Any], str]:
    """Parse one TOML file; errors carry the file and line."""
    tomllib = toml_module()

    raw = read_bounded(path, MAX_FILE, what)
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
                raise fail("alias: expected a command name (letters, digits, '_', '.', '+', '-'), not "
                           f"{shown(value)}", key)
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
        elif key == "env":
            if not isinstance(value, dict):
                raise fail("env: expected a table ([env])", key)
            for name, item in value.items():
                if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
                    raise fail(f"env: {name!r} is not a valid variable name", name, "env")
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
    import difflib

    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


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

"""Hostile configuration: file names that are shell code, ``[env]`` names the
shells treat specially, profiles, policies and kernelspecs that are FIFOs,
devices, huge, looping, writable by others or behind a directory that cannot
be searched, and profile text that would drive the terminal.

Each case gives its documented exit code and one line, within a bounded
time (a subprocess timeout: a hang fails instead of stalling the suite), or
behaves correctly; what tcap prints for a shell is evaluated by real bash,
zsh and fish, and a marker file proves nothing ran. With real Unix users
(tests/users.py) the site policy and kernelspecs are another user's, and the
tests check nothing of theirs changed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import TCAP, Isolated
from tcap.profiles import SHELL_SPECIAL
from users import SRC, User, shared_tmp, users  # noqa: F401

HANG = 20  # seconds: every case here that passes runs in well under one
SHELL_NAMES = ("bash", "zsh", "fish")
FLAGS = {"bash": ["--norc", "--noprofile"], "zsh": ["-f"], "fish": ["--no-config"]}


def needs(shell: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(shutil.which(shell) is None, reason=f"{shell} not installed")


SHELLS = [pytest.param(shell, marks=needs(shell)) for shell in SHELL_NAMES]


def single_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    """tcap exited ``code`` with exactly one stderr line (no traceback); return it."""
    return Isolated.error_line(result, code)


def timed(iso: Isolated, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    start = time.monotonic()
    result = iso.run(*args, timeout=HANG, **kwargs)  # type: ignore[arg-type]
    assert time.monotonic() - start < HANG
    return result


def evaluate(shell: str, script_dir: Path, args: list[str], body: list[str], env: dict[str, str],
             cwd: Path) -> subprocess.CompletedProcess[bytes]:
    """A real shell evaluating what ``args`` prints (``eval "$(...)"``, fish:
    ``... | source``), then running ``body``: the way an rc file does."""
    if shell == "fish":
        lines = ["$argv | source", *body]
    else:
        lines = ['eval "$("$@")"', *body]
        if shell == "bash":
            lines.insert(0, "shopt -s expand_aliases")
    script = script_dir / f"rc-{len(list(script_dir.glob('rc-*')))}.{shell}"
    script.write_text("\n".join(lines) + "\n")
    exe = shutil.which(shell)
    assert exe is not None
    return subprocess.run([exe, *FLAGS[shell], str(script), *args], env=env, cwd=cwd, capture_output=True,
                          timeout=HANG, check=False)


def markers(*roots: Path) -> list[Path]:
    """Files a shell made by running a ``touch MARK...`` (the profile files only contain the word)."""
    return sorted(path for root in roots for path in root.rglob("MARK*"))


# --- file names that are shell code ------------------------------------------------------

#: Profile file stems that are shell code in one shell or another; each
#: would create a MARK file if a shell ran it.
HOSTILE_STEMS = [
    "x$(touch MARK_subst)",
    "a;touch MARK_semi",
    "nl\ntouch MARK_newline",
    "`touch MARK_tick`",
    "sp ace; touch MARK_space",
    "(touch MARK_fish)",
    "a|touch MARK_pipe",
    "é",
]
#: Also not a profile name (-p NAME cannot take it), though "tcap--rf" is a fine alias.
NOT_NAMES = [*HOSTILE_STEMS, "-rf"]


@pytest.fixture
def hostile_dir(iso: Isolated) -> Path:
    directory = iso.root / "team-profiles"
    directory.mkdir()
    for stem in NOT_NAMES:
        (directory / f"{stem}.toml").write_text("threads = 1\n")
    return directory


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("stem", HOSTILE_STEMS, ids=range(len(HOSTILE_STEMS)))
@pytest.mark.parametrize("command", ["alias", "alias --static", "shell-init", "shell-init --static"])
def test_a_profile_path_that_is_shell_code_gets_no_alias_and_runs_nothing(
        iso: Isolated, hostile_dir: Path, shell: str, stem: str, command: str) -> None:
    path = f"./{stem}.toml"
    words = command.split()
    args = [*words, "-p", path, *(["--shell", shell] if words[0] == "alias" else [shell])]
    result = timed(iso, *args, cwd=hostile_dir)
    line = single_line(result, 2)
    assert "is not a valid alias name" in line and "alias = " in line, line
    assert result.stdout == ""
    evaluated = evaluate(shell, iso.root, [str(TCAP), *args], ["echo done"], iso.env, hostile_dir)
    assert evaluated.stdout == b"done\n", evaluated.stderr
    assert markers(iso.root) == []


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("command", ["alias", "alias --static", "shell-init", "shell-init --static"])
def test_every_profile_mode_skips_shell_code_names_with_one_note_each(
        iso: Isolated, hostile_dir: Path, shell: str, command: str) -> None:
    words = command.split()
    args = [*words, *(["--shell", shell] if words[0] == "alias" else [shell])]
    env = dict(iso.env, TCAP_PROFILE_PATH=str(hostile_dir))
    result = timed(iso, *args, env=env)
    assert result.returncode == 0, result.stderr
    notes = result.stderr.splitlines()
    assert len(notes) == len(NOT_NAMES), result.stderr
    assert all(note.startswith("tcap: note: no alias: ") and "invalid profile name" in note for note in notes)
    assert all("\x1b" not in note and "\r" not in note for note in notes)
    assert "nl\\ntouch MARK_newline" in result.stderr  # the newline shown, not obeyed
    check = "functions -q tcap-serial; and echo ok" if shell == "fish" else \
        "type tcap-serial >/dev/null && echo ok"
    evaluated = evaluate(shell, iso.root, [str(TCAP), *args], [check], env, iso.work)
    assert evaluated.stdout == b"ok\n", evaluated.stderr
    assert markers(iso.root) == []


def test_an_alias_key_that_is_shell_code_is_a_config_error(iso: Isolated) -> None:
    path = iso.write_profile("fine", 'threads = 1\nalias = "x$(touch MARK)"\n')
    line = single_line(timed(iso, "alias", "-p", "fine"), 2)
    assert line.startswith(f"tcap: error: {path}:2: alias: expected a command name"), line


# --- [env] names the shells treat specially -------------------------------------------------

REFUSED = ["USERNAME", "UID", "EUID", "GID", "EGID", "status", "pipestatus", "argv", "HISTCMD", "LINENO",
           "RANDOM", "SECONDS", "ERRNO", "TTYIDLE", "PPID", "ZSH_SUBSHELL", "options", "parameters", "functions",
           "COLUMNS", "LINES", "SHLVL", "HISTSIZE", "BASHOPTS", "BASH_VERSINFO", "SHELLOPTS", "BASHPID",
           "FUNCNAME", "GROUPS", "BASH_ALIASES", "PROMPT_COMMAND", "PS1", "PS4", "IFS", "FPATH", "path",
           "fish_function_path", "fish_pid", "umask", "PWD", "_", "__fish_bin_dir"]


@pytest.mark.parametrize("name", REFUSED)
def test_a_special_env_name_is_refused_naming_file_line_and_key(iso: Isolated, name: str) -> None:
    path = iso.write_profile("special", f'description = "x"\n[env]\nOK_NAME = "1"\n{name} = "hana"\n')
    for args in (["env", "--shell", "zsh"], ["show"], ["run"], ["alias", "--static"]):
        line = single_line(timed(iso, *args, "-p", "special", *(["--", "true"] if args == ["run"] else [])), 2)
        assert line.startswith(f"tcap: error: {path}:4: env.{name}: {name} is a special parameter of "), line
    listed = json.loads(timed(iso, "profiles", "--json").stdout)["profiles"]
    assert any(item["name"] == "special" and f"env.{name}" in (item["error"] or "") for item in listed)


@pytest.mark.parametrize("name", ["USERNAME", "UID", "RANDOM", "status", "COLUMNS"])
def test_tcap_env_refuses_a_special_set_name(iso: Isolated, name: str) -> None:
    line = single_line(timed(iso, "env", "--shell", "bash", "--set", f"{name}=0"), 2)
    assert line.startswith(f"tcap: error: --set {name}=0: {name} is a special parameter of "), line


@needs("zsh")
def test_zsh_cannot_be_switched_to_another_user(iso: Isolated, users: tuple[User, User, User]) -> None:  # noqa: F811
    """As root, ``USERNAME=name`` in zsh is setuid(name): the eval must not get there."""
    hana = users[0]
    iso.write_profile("switch", f'threads = 1\n[env]\nUSERNAME = "{hana.name}"\nUID = "{hana.uid}"\n')
    for args in (["env", "--shell", "zsh", "-p", "switch"], ["alias", "--static", "--shell", "zsh", "-p", "switch"]):
        body = ["print -r -- uid=$(id -u) euid=$EUID"]
        evaluated = evaluate("zsh", iso.root, [str(TCAP), *args], body, iso.env, iso.work)
        assert evaluated.stdout == b"uid=0 euid=0\n", evaluated
        assert b"is a special parameter of" in evaluated.stderr
    # What the refusal protects against, shown for real: zsh does switch.
    direct = subprocess.run(["zsh", "-f", "-c", f"USERNAME={hana.name}; id -u"], capture_output=True, text=True,
                            timeout=HANG, check=False)
    assert direct.stdout.strip() == str(hana.uid)


@needs("zsh")
def test_zsh_arithmetic_of_an_integer_parameter_would_run_code(iso: Isolated) -> None:
    """Why COLUMNS, HISTSIZE, SHLVL... are refused: quoted or not, zsh
    evaluates their value as arithmetic, and a subscript runs $(...)."""
    marker = iso.root / "MARK_arith"
    subprocess.run(["zsh", "-f", "-c", f"export COLUMNS='path[$(touch {marker})1]'"], capture_output=True,
                   timeout=HANG, check=False)
    assert marker.exists()
    marker.unlink()
    iso.write_profile("arith", f'[env]\nCOLUMNS = "path[$(touch {marker})1]"\n')
    evaluated = evaluate("zsh", iso.root, [str(TCAP), "env", "--shell", "zsh", "-p", "arith"], [], iso.env, iso.work)
    assert b"env.COLUMNS" in evaluated.stderr
    assert not marker.exists()


#: Ordinary variables the shells also read, which [env] keeps: each must
#: arrive as written, whatever the value, in every shell.
ALLOWED = ["PATH", "HOME", "LANG", "LC_ALL", "MANPATH", "CDPATH", "TERM", "TMPDIR", "ENV", "BASH_ENV"]


@pytest.mark.parametrize("shell", SHELLS)
def test_allowed_names_that_shells_read_take_a_hostile_value_as_data(iso: Isolated, shell: str) -> None:
    value = f"path[$(touch {iso.root}/MARK_allowed)1]:=ls:~root `touch {iso.root}/MARK_tick`"
    table = "".join(f"{name} = {json.dumps(value)}\n" for name in ALLOWED if name != "PATH")
    iso.write_profile("allowed", "threads = 1\n[env]\n" + table)
    # What a program started from the shell sees (fish splits its own *PATH lists, and joins them again).
    show = [f"/usr/bin/env printenv {name}" for name in ALLOWED if name != "PATH"]
    evaluated = evaluate(shell, iso.root, [str(TCAP), "env", "--shell", shell, "-p", "allowed"], show,
                         iso.env, iso.work)
    assert evaluated.returncode == 0, evaluated.stderr
    assert evaluated.stdout.decode().splitlines() == [value] * (len(ALLOWED) - 1)
    assert markers(iso.root) == []


def _zsh_parameters() -> dict[str, str]:
    script = ("zmodload zsh/parameter zsh/datetime zsh/system zsh/mapfile zsh/langinfo zsh/terminfo "
              "zsh/termcap 2>/dev/null; for k in ${(k)parameters}; print -r -- \"$k ${parameters[$k]}\"")
    out = subprocess.run(["zsh", "-f", "-c", script], capture_output=True, text=True, timeout=HANG, check=True,
                         env={"HOME": "/nonexistent", "PATH": os.environ["PATH"]}).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


@needs("zsh")
def test_every_special_zsh_parameter_is_refused_or_an_ordinary_variable() -> None:
    variable = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
    kinds = _zsh_parameters()
    special = {name for name, kind in kinds.items() if "special" in kind and variable.match(name)}
    assert special - SHELL_SPECIAL["zsh"] <= {"PATH", "HOME", "MANPATH", "CDPATH"}, special - SHELL_SPECIAL["zsh"]
    # An integer one evaluates its value (arithmetic can run code): none is allowed.
    integer = {name for name, kind in kinds.items() if kind.startswith("integer") and variable.match(name)}
    assert integer <= SHELL_SPECIAL["zsh"], integer - SHELL_SPECIAL["zsh"]


@needs("bash")
def test_every_readonly_or_integer_bash_variable_is_refused() -> None:
    out = subprocess.run(["bash", "--norc", "--noprofile", "-i", "-c", "declare -p"], capture_output=True,
                         text=True, timeout=HANG, check=False, env={"HOME": "/nonexistent", "TERM": "dumb"},
                         stdin=subprocess.DEVNULL).stdout
    found = set(re.findall(r"^declare -[a-zA-Z]*[ir][a-zA-Z]* ([A-Za-z_][A-Za-z0-9_]*)", out, re.M))
    assert found and found <= SHELL_SPECIAL["bash"], found - SHELL_SPECIAL["bash"]


@needs("fish")
def test_every_variable_fish_will_not_set_is_refused() -> None:
    script = "for v in (set -n); if not set -gx $v x 2>/dev/null; echo $v; end; end"
    out = subprocess.run(["fish", "--no-config", "-c", script], capture_output=True, text=True, timeout=HANG,
                         check=False, env={"HOME": "/nonexistent", "PATH": os.environ["PATH"]}).stdout
    refused = set(out.split())
    assert refused and refused <= SHELL_SPECIAL["fish"], refused - SHELL_SPECIAL["fish"]


# --- profiles and policies that are not plain files of the right people --------------------


def _sparse(path: Path, size: int = 3 << 30) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


@pytest.mark.parametrize("kind", ["fifo", "device", "huge", "loop", "directory", "dangling"])
def test_a_profile_that_is_not_a_readable_file_is_one_line_quickly(iso: Isolated, kind: str) -> None:
    path = iso.work / "p.toml"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path.symlink_to("/dev/zero")
    elif kind == "huge":
        _sparse(path)
    elif kind == "loop":
        path.symlink_to(path)
    elif kind == "directory":
        path.mkdir()
    else:
        path.symlink_to(iso.work / "gone.toml")
    expected = {
        "fifo": "cannot read profile: a FIFO, not a regular file",
        "device": "cannot read profile: a device, not a regular file",
        "huge": "cannot read profile: 3221225472 bytes, larger than tcap's limit of 1 MiB for it",
        "loop": "cannot read profile: symlink loop (Too many levels of symbolic links)",
        "directory": "cannot read profile: a directory, not a regular file",
        "dangling": f"profile file not found: {path} (a symlink to {iso.work / 'gone.toml'}, which does not exist)",
    }[kind]
    for args in (["show", "-p", str(path)], ["run", "-p", str(path), "--", "true"], ["alias", "-p", str(path)],
                 ["env", "-p", str(path)]):
        line = single_line(timed(iso, *args), 2)
        assert line in (f"tcap: error: {path}: {expected}", f"tcap: error: {expected}"), line


def test_dev_zero_as_a_profile(iso: Isolated) -> None:
    line = single_line(timed(iso, "show", "-p", "/dev/zero"), 2)
    assert line == "tcap: error: /dev/zero: cannot read profile: a device, not a regular file"


@pytest.mark.parametrize("kind", ["fifo", "huge", "device"])
def test_a_bad_file_in_a_profile_directory_is_listed_not_waited_on(iso: Isolated, kind: str) -> None:
    path = iso.user_profiles / "planted.toml"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "huge":
        _sparse(path)
    else:
        path.symlink_to("/dev/zero")
    result = timed(iso, "profiles")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^planted\s+user\s+BROKEN: .*planted\.toml: cannot read profile: ", result.stdout, re.M)
    listed = {item["name"]: item for item in json.loads(timed(iso, "profiles", "--json").stdout)["profiles"]}
    assert "cannot read profile" in listed["planted"]["error"]
    assert "planted" not in timed(iso, "profiles", "--names").stdout.split()
    init = timed(iso, "shell-init", "bash")
    assert init.returncode == 0 and "alias tcap-serial=" in init.stdout
    assert init.stderr.startswith("tcap: note: no alias: ") and init.stderr.count("\n") == 1, init.stderr
    single_line(timed(iso, "show", "-p", "planted"), 2)


@pytest.mark.parametrize("kind", ["fifo", "huge", "device", "loop"])
def test_a_policy_that_is_not_a_readable_file_stops_every_launch(iso: Isolated, kind: str) -> None:
    policy = iso.site / "policy.toml"
    if kind == "fifo":
        os.mkfifo(policy)
    elif kind == "huge":
        _sparse(policy)
    elif kind == "device":
        policy.symlink_to("/dev/zero")
    else:
        policy.symlink_to(policy)
    marker = iso.work / "MARK_ran"
    for args in (["run", "--", "touch", str(marker)], ["show"], ["env"], ["alias", "--static", "-p", "serial"]):
        line = single_line(timed(iso, *args), 2)
        assert line.startswith(f"tcap: error: {policy}: cannot read policy: "), line
    assert not marker.exists()


def test_a_profile_others_can_write_is_refused(iso: Isolated) -> None:
    path = iso.write_profile("open", "threads = 1\n")
    path.chmod(0o666)
    line = single_line(timed(iso, "show", "-p", "open"), 2)
    assert line == f"tcap: error: {path}: cannot read profile: writable by other users (mode 0666); refusing it"
    path.chmod(0o664)  # a team's group may write it
    assert timed(iso, "show", "-p", "open").returncode == 0


def test_a_profile_in_a_directory_anyone_can_write_is_refused(iso: Isolated) -> None:
    directory = iso.root / "open-dir"
    directory.mkdir()
    directory.chmod(0o777)
    path = iso.write_profile("planted", "threads = 1\n", directory)
    env = dict(iso.env, TCAP_PROFILE_PATH=str(directory))
    line = single_line(timed(iso, "show", "-p", "planted", env=env), 2)
    assert line == (f"tcap: error: {path}: cannot use profile: its directory {directory} is writable by other "
                    "users (mode 0777), who may have replaced it")


def test_a_policy_others_can_write_is_refused(iso: Isolated) -> None:
    policy = iso.site / "policy.toml"
    policy.write_text("max_threads = 1\n")
    policy.chmod(0o646)
    marker = iso.work / "MARK_ran"
    line = single_line(timed(iso, "run", "--", "touch", str(marker)), 2)
    assert line == f"tcap: error: {policy}: cannot read policy: writable by other users (mode 0646); refusing it"
    assert not marker.exists()


# --- with real users: another user's files ----------------------------------------------------


def user_env(user: User, root: Path, **extra: str) -> dict[str, str]:
    """``user``'s environment with a private cache and config of their own under ``root``."""
    home = root / user.name
    home.mkdir(mode=0o700, exist_ok=True)
    os.chown(home, user.uid, user.gid)
    return user.env(XDG_CACHE_HOME=str(home / "cache"), XDG_CONFIG_HOME=str(home / "config"), **extra)


def snapshot(*paths: Path) -> list[tuple[str, int, int, bytes | None]]:
    out = []
    for path in paths:
        info = os.lstat(path)
        content = path.read_bytes() if stat.S_ISREG(info.st_mode) else None
        out.append((str(path), info.st_mode, info.st_uid, content))
    return out


@pytest.fixture
def private_site(shared_tmp: Path) -> Iterator[Path]:  # noqa: F811
    """A site directory root made under ``umask 077``: mode 0700, a policy
    holding everyone to one thread."""
    old = os.umask(0o077)
    try:
        site = shared_tmp / "etc-tcap"
        site.mkdir()
        (site / "policy.toml").write_text("max_threads = 1\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(site.stat().st_mode) == 0o700
    yield site


def test_a_policy_behind_a_directory_a_user_cannot_search_stops_their_launches(
        users: tuple[User, User, User], private_site: Path, shared_tmp: Path) -> None:  # noqa: F811
    ana = users[0]
    policy = private_site / "policy.toml"
    before = snapshot(private_site, policy)
    env = user_env(ana, shared_tmp, TCAP_SITE_DIR=str(private_site))
    for args in (["run", "--", "true"], ["show"], ["run", "--threads", "8", "--", "true"], ["env"]):
        result = ana.tcap(*args, env=env, timeout=HANG)
        line = single_line(result, 2)
        assert line == (f"tcap: error: {policy}: cannot read policy: cannot search {private_site} (Permission "
                        "denied), so whether a site policy is there cannot be known; the administrator must make "
                        "it searchable (chmod o+x)"), line
    # Root, who can read it, is held to it.
    root = subprocess.run([str(TCAP), "show", "--json", "--threads", "8"], env=dict(env, HOME="/root"),
                          capture_output=True, text=True, timeout=HANG, check=False)
    assert root.returncode == 0, root.stderr
    assert set(json.loads(root.stdout)["caps"].values()) == {1}
    assert snapshot(private_site, policy) == before


def test_a_cached_launch_notices_a_policy_it_can_no_longer_see(
        users: tuple[User, User, User], shared_tmp: Path) -> None:  # noqa: F811
    """The plan cache recorded "no policy"; then the admin makes a private
    /etc/tcap with one: the cached plan must not be used around it."""
    ben = users[1]
    site = shared_tmp / "later-site"
    env = user_env(ben, shared_tmp, TCAP_SITE_DIR=str(site))
    for _ in range(2):  # the second one is a cache hit
        result = ben.tcap("run", "--", "true", env=env, timeout=HANG)
        assert result.returncode == 0, result.stderr
    old = os.umask(0o077)
    try:
        site.mkdir()
        (site / "policy.toml").write_text("max_threads = 1\n")
    finally:
        os.umask(old)
    line = single_line(ben.tcap("run", "--", "true", env=env, timeout=HANG), 2)
    assert f"cannot search {site} (Permission denied)" in line


def test_a_policy_a_user_cannot_read_stops_their_launches(
        users: tuple[User, User, User], shared_tmp: Path) -> None:  # noqa: F811
    cyd = users[2]
    site = shared_tmp / "site"
    site.mkdir()
    policy = site / "policy.toml"
    policy.write_text("max_threads = 1\n")
    policy.chmod(0o600)
    env = user_env(cyd, shared_tmp, TCAP_SITE_DIR=str(site))
    line = single_line(cyd.tcap("run", "--", "true", env=env, timeout=HANG), 2)
    assert line == f"tcap: error: {policy}: cannot read policy: Permission denied"


def test_a_policy_owned_by_another_user_is_refused(users: tuple[User, User, User], shared_tmp: Path) -> None:  # noqa: F811
    ana, ben = users[0], users[1]
    site = shared_tmp / "site"
    site.mkdir()
    policy = site / "policy.toml"
    policy.write_text("max_threads = 64\n")
    os.chown(policy, ben.uid, ben.gid)
    env = user_env(ana, shared_tmp, TCAP_SITE_DIR=str(site))
    line = single_line(ana.tcap("show", env=env, timeout=HANG), 2)
    assert line == f"tcap: error: {policy}: cannot read policy: owned by uid {ben.uid}, not by root or you"


def test_another_users_profile_in_a_sticky_shared_directory_is_not_trusted(
        users: tuple[User, User, User], shared_tmp: Path) -> None:  # noqa: F811
    ana, ben = users[0], users[1]
    planted = shared_tmp / "team.toml"
    planted.write_text('threads = 1\n[env]\nLD_PRELOAD = "/tmp/evil.so"\n')
    os.chown(planted, ben.uid, ben.gid)
    planted.chmod(0o644)
    before = snapshot(planted)
    env = user_env(ana, shared_tmp, TCAP_PROFILE_PATH=str(shared_tmp))
    line = single_line(ana.tcap("show", "-p", "team", env=env, timeout=HANG), 2)
    assert line == (f"tcap: error: {planted}: cannot use profile: owned by uid {ben.uid}, in {shared_tmp}, which "
                    "every user can write (mode 1777): not trusted")
    os.chown(planted, ana.uid, ana.gid)  # their own file there is theirs to use
    assert ana.tcap("show", "-p", "team", env=env, timeout=HANG).returncode == 0
    os.chown(planted, ben.uid, ben.gid)
    assert snapshot(planted) == before


# --- control characters from a profile never reach the terminal ------------------------------

FORGED = "\x1b[2K\r\x1b[1Atcap: error: forged line\x07\x1b]0;title\x07\u202eevil"


def _assert_escaped(text: str) -> None:
    for char in ("\x1b", "\r", "\x07", "\u202e"):
        assert char not in text, repr(text)


def test_profile_text_is_escaped_in_show_and_profiles(iso: Isolated) -> None:
    iso.write_profile("forger", f"description = {json.dumps(FORGED)}\nthreads = 1\n[env]\nT_X = "
                                f"{json.dumps(FORGED)}\n")
    show = timed(iso, "show", "-p", "forger")
    assert show.returncode == 0, show.stderr
    _assert_escaped(show.stdout)
    assert "\\x1b[2K\\r\\x1b[1Atcap: error: forged line\\x07" in show.stdout
    listing = timed(iso, "profiles")
    _assert_escaped(listing.stdout)
    assert re.search(r"^forger\s+user\s+\\x1b\[2K\\r", listing.stdout, re.M), listing.stdout
    env = timed(iso, "env", "--shell", "bash", "-p", "forger")
    assert [line for line in env.stdout.splitlines() if line.startswith("#") and "\x1b" in line] == []


def test_a_profile_name_with_control_characters_is_shown_escaped(iso: Isolated) -> None:
    directory = iso.root / "odd"
    directory.mkdir()
    (directory / "a\x1b[31mred\r.toml").write_text("threads = 1\n")
    env = dict(iso.env, TCAP_PROFILE_PATH=str(directory))
    listing = timed(iso, "profiles", env=env)
    assert listing.returncode == 0, listing.stderr
    _assert_escaped(listing.stdout)
    assert "a\\x1b[31mred\\r" in listing.stdout
    init = timed(iso, "shell-init", "bash", env=env)
    _assert_escaped(init.stderr)
    _assert_escaped(init.stdout)


def test_an_extends_with_control_characters_is_one_escaped_error_line(iso: Isolated) -> None:
    path = iso.write_profile("child", f"extends = {json.dumps(FORGED)}\n")
    line = single_line(timed(iso, "show", "-p", "child"), 2)
    _assert_escaped(line)
    assert line.startswith(f"tcap: error: {path}:1: ")


# --- kernelspecs -----------------------------------------------------------------------------

def site_packages() -> str:
    """Where jupyter_client is (skip without it): other users' tcap imports it from there."""
    jupyter_client = pytest.importorskip("jupyter_client")
    pytest.importorskip("ipykernel")
    return str(Path(jupyter_client.__file__).resolve().parent.parent)


class Kernels:
    """Jupyter's directories for one test: a prefix whose kernels are on the search path."""

    def __init__(self, iso: Isolated, prefix: Path) -> None:
        self.site_packages = site_packages()
        self.iso = iso
        self.prefix = prefix
        self.kernels = prefix / "share" / "jupyter" / "kernels"
        self.env = dict(iso.env, JUPYTER_PATH=str(prefix / "share" / "jupyter"),
                        JUPYTER_DATA_DIR=str(iso.root / "jupyter-data"),
                        JUPYTER_CONFIG_DIR=str(iso.root / "jupyter-config"))
        self.env.pop("JUPYTER_PREFER_ENV_PATH", None)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return timed(self.iso, *args, env=self.env)

    def install(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("kernel", "install", "--prefix", str(self.prefix), *args)

    def listed(self) -> dict[str, dict]:  # type: ignore[type-arg]
        result = self.run("kernel", "list", "--json")
        assert result.returncode == 0, result.stderr
        return {item["name"]: item for item in json.loads(result.stdout)}

    def spec_dir(self, name: str, data: object) -> Path:
        directory = self.kernels / name
        directory.mkdir(parents=True)
        (directory / "kernel.json").write_text(json.dumps(data))
        return directory


@pytest.fixture
def kernels(iso: Isolated) -> Kernels:
    return Kernels(iso, iso.root / "prefix")


def _modes(top: Path) -> dict[str, int]:
    return {str(path.relative_to(top)): stat.S_IMODE(path.stat().st_mode) for path in [top, *top.rglob("*")]}


def test_a_kernelspec_made_under_umask_077_is_readable_by_everyone(
        iso: Isolated, shared_tmp: Path, users: tuple[User, User, User]) -> None:  # noqa: F811
    prefix = shared_tmp / "opt-jupyter"
    jup = Kernels(iso, prefix)
    old = os.umask(0o077)
    try:
        result = jup.install("-p", "serial", "--freeze")
    finally:
        os.umask(old)
    assert result.returncode == 0, result.stderr
    modes = _modes(prefix)
    assert {mode for name, mode in modes.items() if (prefix / name).is_dir()} == {0o755}, modes
    assert {mode for name, mode in modes.items() if (prefix / name).is_file()} == {0o644}, modes
    spec = jup.kernels / "tcap-serial"
    assert {p.name for p in spec.iterdir()} >= {"kernel.json", "tcap-plan.json"}
    assert not [p for p in jup.kernels.iterdir() if p.name.startswith(".")]  # no staging left behind
    ana = users[0]
    env = ana.env(JUPYTER_PATH=str(prefix / "share" / "jupyter"), PYTHONPATH=f"{SRC}:{jup.site_packages}")
    listed = subprocess.run(ana.argv("kernel", "list", "--json"), env=env, capture_output=True, text=True,
                            timeout=HANG, check=False, cwd=str(ana.home))
    assert listed.returncode == 0, listed.stderr
    [item] = [item for item in json.loads(listed.stdout) if item["name"] == "tcap-serial"]
    assert item["frozen"] and item["caps"] == {"blas": 1, "openmp": 1}, item
    # The test venv's interpreter lives under /root, which they cannot enter: true, and all that is stale.
    assert all(problem.startswith(("interpreter gone", "tcap's interpreter gone")) for problem in item["stale"])


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (root only), to be filled by the test."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True,
                          check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


def test_a_kernel_install_on_a_full_disk_leaves_nothing_half_written(iso: Isolated, full_disk: Path) -> None:
    jup = Kernels(iso, full_disk / "prefix")
    assert jup.install("-p", "serial", "--name", "tk-old").returncode == 0
    old = (jup.kernels / "tk-old" / "kernel.json").read_bytes()
    filler = _fill(full_disk)
    for args in (["--name", "tk-new"], ["--name", "tk-old", "--force", "--freeze"]):
        line = single_line(jup.install("-p", "serial", *args), 74)
        assert "No space left on device" in line and "None" not in line, line
    assert not (jup.kernels / "tk-new").exists()
    assert (jup.kernels / "tk-old" / "kernel.json").read_bytes() == old  # the old spec whole
    assert not (jup.kernels / "tk-old" / "tcap-plan.json").exists()
    assert not [p for p in jup.kernels.iterdir() if p.name.startswith(".")]
    filler.unlink()
    assert jup.install("-p", "serial", "--name", "tk-new").returncode == 0  # nothing blocks the next one
    assert json.loads((jup.kernels / "tk-new" / "kernel.json").read_text())["argv"]


MADE_BY = {"made_by": "tcap", "profile": "serial", "flags": ["--profile", "serial"], "frozen": False}


@pytest.mark.parametrize("case", ["empty-argv", "argv-numbers", "flags-number", "python-number", "not-json",
                                  "huge", "deep", "list", "frozen-fifo", "frozen-huge", "frozen-wrong-types",
                                  "frozen-not-json"])
def test_kernel_list_survives_a_broken_tcap_spec(kernels: Kernels, case: str) -> None:
    name = "tcap-broken"
    meta = dict(MADE_BY)
    data: object = {"argv": ["/bin/true"], "display_name": "x", "metadata": {"tcap": meta}}
    if case.startswith("frozen"):
        meta["frozen"] = True
    directory = kernels.spec_dir(name, data)
    spec = directory / "kernel.json"
    plan = directory / "tcap-plan.json"
    if case == "empty-argv":
        spec.write_text(json.dumps({**data, "argv": []}))  # type: ignore[dict-item]
    elif case == "argv-numbers":
        spec.write_text(json.dumps({**data, "argv": [1, 2]}))  # type: ignore[dict-item]
    elif case == "flags-number":
        meta["flags"] = 5  # type: ignore[assignment]
        spec.write_text(json.dumps(data))
    elif case == "python-number":
        meta["python"] = 7  # type: ignore[assignment]
        spec.write_text(json.dumps(data))
    elif case == "not-json":
        spec.write_text('{"metadata": {"tcap": {"made_by": "tcap"')
    elif case == "huge":
        _sparse(spec)
    elif case == "deep":
        spec.write_text("[" * 100_000)
    elif case == "list":
        spec.write_text("[1, 2]")
    elif case == "frozen-fifo":
        os.mkfifo(plan)
    elif case == "frozen-huge":
        _sparse(plan)
    elif case == "frozen-wrong-types":
        plan.write_text(json.dumps({"recipe": {"bootstrap": 5}, "plan": {"caps": [1], "env": 3}}))
    else:
        plan.write_text("{")
    listed = kernels.listed()
    if case == "list":
        assert name not in listed  # valid JSON that is not tcap's: not ours to judge
    else:
        assert listed[name]["stale"], listed[name]
    text = kernels.run("kernel", "list")
    assert text.returncode == 0, text.stderr
    assert "internal error" not in text.stderr


def test_kernel_list_skips_a_fifo_kernel_json(kernels: Kernels) -> None:
    directory = kernels.kernels / "tcap-fifo"
    directory.mkdir(parents=True)
    os.mkfifo(directory / "kernel.json")
    assert "tcap-fifo" not in kernels.listed()  # Jupyter itself does not see it either


def test_kernel_list_escapes_control_characters(kernels: Kernels) -> None:
    kernels.spec_dir("tcap-forged", {"argv": ["/bin/true"], "display_name": FORGED,
                                     "metadata": {"tcap": {**MADE_BY, "profile": FORGED}}})
    text = kernels.run("kernel", "list")
    assert text.returncode == 0, text.stderr
    _assert_escaped(text.stdout)
    assert "\\x1b[2K" in text.stdout


def test_a_user_cannot_remove_roots_kernelspec(
        iso: Isolated, shared_tmp: Path, users: tuple[User, User, User]) -> None:  # noqa: F811
    prefix = shared_tmp / "system-jupyter"
    jup = Kernels(iso, prefix)
    assert jup.install("-p", "serial").returncode == 0
    spec = jup.kernels / "tcap-serial"
    before = snapshot(spec, spec / "kernel.json")
    ana = users[0]
    env = ana.env(JUPYTER_PATH=str(prefix / "share" / "jupyter"), PYTHONPATH=f"{SRC}:{jup.site_packages}")
    result = subprocess.run(ana.argv("kernel", "remove", "tcap-serial"), env=env, capture_output=True, text=True,
                            timeout=HANG, check=False, cwd=str(ana.home))
    line = single_line(result, 74)
    assert line == (f"tcap: error: cannot remove kernel 'tcap-serial' ({spec}): Permission denied: you cannot "
                    f"write {jup.kernels}")
    assert snapshot(spec, spec / "kernel.json") == before

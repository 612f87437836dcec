"""``tcap alias`` and ``tcap shell-init`` evaluated by real bash, zsh and fish.

Every test here has a real shell read what tcap prints, the way a user's rc
file would (``eval "$(tcap ...)"``, fish: ``tcap ... | source``), then run
an alias whose command is a Python script that dumps its environment, CPU
affinity and whether tcap's probe loaded. Values are compared with what
``tcap show --json`` says the plan is. The shells start without rc files
(``bash --norc --noprofile``, ``zsh -f``, ``fish --no-config``) in the
isolated environment of conftest.py; the tests that need zsh or fish skip
when it is not installed.

Scripts are files, not ``-c`` strings: zsh parses a whole ``-c`` string
before running any of it, so an alias defined by ``eval`` there could never
be used, while a script file is read one line at a time (as an rc file is).
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

import tcap
from conftest import PYTHON, TCAP, Isolated
from tcap.search import builtin_dir

SHELL_NAMES = ("bash", "zsh", "fish")
AFFINITY = sorted(os.sched_getaffinity(0))
PACKAGE = Path(tcap.__file__).resolve().parent
BOOTSTRAP = str(PACKAGE / "_bootstrap")
TASKSET = shutil.which("taskset")


def needs(shell: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(shutil.which(shell) is None, reason=f"{shell} not installed")


SHELLS = [pytest.param(shell, marks=needs(shell)) for shell in SHELL_NAMES]

#: Prints the child's view as one JSON line: every variable, the CPU
#: affinity and whether tcap's probe (loaded by the bootstrap) is there.
REPORT = """\
import json, os, sys
json.dump({"environ": dict(os.environ), "affinity": sorted(os.sched_getaffinity(0)),
           "probe": "_tcap_probe" in sys.modules, "pid": os.getpid()}, sys.stdout)
sys.stdout.write("\\n")
"""


def shell_env(iso: Isolated, **extra: str) -> dict[str, str]:
    """The isolated environment, without an inherited PYTHONPATH, plus the
    report script and the interpreter to run it with."""
    report = iso.root / "report.py"
    if not report.exists():
        report.write_text(REPORT)
    env = {k: v for k, v in iso.env.items() if k != "PYTHONPATH"}
    env.update(PY=PYTHON, REPORT=str(report))
    env.update(extra)
    return env


_scripts = 0


def run_script(
    iso: Isolated, shell: str, body: list[str], args: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run a script that first evaluates the output of the command ``args``
    (passed as the script's positional parameters, so nothing in them needs
    quoting), then the lines ``body``, each on a line of its own."""
    global _scripts
    _scripts += 1
    if shell == "fish":
        lines = ["$argv | source", *body]
    else:
        lines = ['eval "$("$@")"', *body]
        if shell == "bash":
            lines.insert(0, "shopt -s expand_aliases")
    script = iso.root / f"script{_scripts}.{shell}"
    script.write_text("\n".join(lines) + "\n")
    exe = shutil.which(shell)
    assert exe is not None
    flags = {"bash": ["--norc", "--noprofile"], "zsh": ["-f"], "fish": ["--no-config"]}[shell]
    return subprocess.run(
        [exe, *flags, str(script), *args],
        env=shell_env(iso) if env is None else env,
        cwd=iso.work,
        capture_output=True,
        timeout=60,
        check=False,
    )


def use(shell: str, command: str) -> str:
    """A line running ``command`` on the report script."""
    if shell == "fish":
        return f"{command} $PY $REPORT"
    return f'{command} "$PY" "$REPORT"'


def children(
    iso: Isolated, shell: str, args: list[str], commands: list[str], env: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Evaluate ``args``' output, run each of ``commands`` on the report
    script, and return what each child saw. Nothing else may reach stdout."""
    result = run_script(iso, shell, [use(shell, command) for command in commands], args, env)
    stderr = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 0, stderr
    lines = result.stdout.decode("utf-8").splitlines()
    assert len(lines) == len(commands), (result.stdout, stderr)
    return [json.loads(line) for line in lines]


def alias_args(shell: str, *args: str) -> list[str]:
    return [str(TCAP), "alias", "--shell", shell, *args]


def assert_follows_plan(iso: Isolated, child: dict[str, Any], profile: str) -> None:
    """The child has every variable of the plan of ``profile`` (and none it unsets)."""
    plan = iso.show_json("-p", profile)
    environ = child["environ"]
    for name, value, _why in plan["env"]:
        if value is None:
            assert name not in environ, name
        else:
            assert environ.get(name) == value, name
    assert environ["TCAP_PROFILE"] == profile
    assert environ["TCAP_VERIFY"] == plan["verify"]
    assert child["affinity"] == (sorted(plan["pin"]) if plan["pin"] is not None else AFFINITY)


def environ_but_underscore(child: dict[str, Any]) -> dict[str, str]:
    """A child's environment without ``_``, which shells set to the path of the command they started,
    and with the launch's root pid out of TCAP_SHARE_LAUNCH (the pid of the launch, whoever set it:
    tcap's launcher, or under a static alias the probe of the first Python process)."""
    env = {k: v for k, v in child["environ"].items() if k != "_"}
    if "TCAP_SHARE_LAUNCH" in env:
        root, _, directory = env["TCAP_SHARE_LAUNCH"].partition(":")
        assert root == str(child["pid"]), env["TCAP_SHARE_LAUNCH"]
        env["TCAP_SHARE_LAUNCH"] = directory
    return env


# --- aliases run the right profile --------------------------------------------------------


@pytest.mark.parametrize("shell", SHELLS)
def test_dynamic_and_static_aliases_apply_the_plan(iso: Isolated, shell: str) -> None:
    iso.write_profile("fitting", 'alias = "fit"\nblas = 1\n[env]\nT_FROM_PROFILE = "fitting"\n')
    run_both = ["fit", "tcap-serial"]
    dynamic = children(iso, shell, alias_args(shell, "-p", "fitting", "-p", "serial"), run_both)
    static = children(iso, shell, alias_args(shell, "--static", "-p", "fitting", "-p", "serial"), run_both)
    for dyn, stat, profile in zip(dynamic, static, ["fitting", "serial"]):
        assert_follows_plan(iso, dyn, profile)
        assert_follows_plan(iso, stat, profile)
        # The static alias is the dynamic one with the plan baked in.
        assert environ_but_underscore(stat) == environ_but_underscore(dyn)
        assert dyn["probe"] and stat["probe"]
    assert dynamic[0]["environ"]["T_FROM_PROFILE"] == "fitting"
    assert dynamic[0]["environ"]["OPENBLAS_NUM_THREADS"] == "1"


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_pinning_profile_alias_pins(iso: Isolated, shell: str, static: bool) -> None:
    if static and TASKSET is None:
        pytest.skip("taskset not installed")
    cpu = AFFINITY[-1]
    iso.write_profile("pinned", f'cpus = "{cpu}"\nthreads = 1\n')
    assert iso.show_json("-p", "pinned")["pin"] == [cpu]
    args = alias_args(shell, *(["--static"] if static else []), "-p", "pinned")
    if static:
        text = iso.run(*args[1:]).stdout
        if shell == "fish":
            assert re.search(rf"^    '[^']*taskset' -c '{cpu}' \$argv$", text, re.M), text
        else:
            assert f"taskset'\\'' -c '\\''{cpu}'\\''" in text, text
    [child] = children(iso, shell, args, ["tcap-pinned"])
    assert_follows_plan(iso, child, "pinned")
    assert child["affinity"] == [cpu]


def test_static_alias_without_taskset_says_it_does_not_pin(iso: Isolated) -> None:
    iso.write_profile("pinned", f'cpus = "{AFFINITY[-1]}"\n')
    result = iso.run("alias", "--shell", "bash", "--static", "-p", "pinned", extra_env={"PATH": str(iso.root)})
    assert result.returncode == 0, result.stderr
    assert "# taskset was not found, so this alias does not pin CPUs" in result.stdout
    assert "taskset" not in result.stdout.splitlines()[-1]


@pytest.mark.parametrize("shell", SHELLS)
def test_static_alias_keeps_verification_and_inherited_pythonpath(iso: Isolated, shell: str) -> None:
    env = shell_env(iso, PYTHONPATH="/inherited/one:/inherited/two")
    [child] = children(iso, shell, alias_args(shell, "--static", "-p", "serial"), ["tcap-serial"], env)
    assert child["probe"], "the probe did not load: the bootstrap is not on PYTHONPATH"
    assert child["environ"]["TCAP_VERIFY"] == "warn"
    assert child["environ"]["PYTHONPATH"].split(":") == [BOOTSTRAP, "/inherited/one", "/inherited/two"]
    # Without an inherited PYTHONPATH, no empty entry (the current directory) is added.
    [child] = children(iso, shell, alias_args(shell, "--static", "-p", "serial"), ["tcap-serial"])
    assert child["environ"]["PYTHONPATH"] == BOOTSTRAP


@pytest.mark.parametrize("shell", SHELLS)
def test_static_alias_with_verify_off_leaves_pythonpath_alone(iso: Isolated, shell: str) -> None:
    iso.write_profile("quiet", 'threads = 1\nverify = "off"\n')
    env = shell_env(iso, PYTHONPATH="/inherited")
    [child] = children(iso, shell, alias_args(shell, "--static", "-p", "quiet"), ["tcap-quiet"], env)
    assert not child["probe"]
    assert child["environ"]["PYTHONPATH"] == "/inherited"
    assert "TCAP_PROBE" not in child["environ"]
    assert child["environ"]["OMP_NUM_THREADS"] == "1"


@pytest.mark.parametrize("shell", SHELLS)
def test_static_alias_unsets_variables_of_the_plan(iso: Isolated, shell: str) -> None:
    iso.write_profile("unsetting", "threads = 1\n[env]\nT_GONE = false\nT_KEPT = \"kept\"\n")
    env = shell_env(iso, T_GONE="inherited")
    [child] = children(iso, shell, alias_args(shell, "--static", "-p", "unsetting"), ["tcap-unsetting"], env)
    assert "T_GONE" not in child["environ"]
    assert child["environ"]["T_KEPT"] == "kept"
    assert child["probe"]


@pytest.mark.parametrize("shell", SHELLS)
def test_static_alias_of_profile_unsetting_pythonpath_keeps_the_bootstrap(iso: Isolated, shell: str) -> None:
    iso.write_profile("nopath", "threads = 1\n[env]\nPYTHONPATH = false\n")
    env = shell_env(iso, PYTHONPATH="/inherited")
    dynamic, static = (
        children(iso, shell, alias_args(shell, *flag, "-p", "nopath"), ["tcap-nopath"], env)[0]
        for flag in ([], ["--static"])
    )
    assert dynamic["environ"]["PYTHONPATH"] == BOOTSTRAP and dynamic["probe"]
    assert static["environ"].get("PYTHONPATH") == BOOTSTRAP
    assert static["probe"]


@pytest.mark.parametrize("name", ["argv", "status", "USERNAME", "UID", "COLUMNS", "PROMPT_COMMAND"])
def test_a_variable_a_shell_keeps_for_itself_is_refused(iso: Isolated, name: str) -> None:
    # fish cannot `set -lx argv`, zsh switches user on USERNAME=..., and so on:
    # no alias is printed for such a profile (tests/test_hostile_config.py runs the shells).
    path = iso.write_profile("special", f'threads = 1\n[env]\n{name} = "true"\n')
    for shell in SHELL_NAMES:
        result = iso.run("alias", "--static", "--shell", shell, "-p", "special")
        line = iso.error_line(result, 2)
        assert line.startswith(f"tcap: error: {path}:3: env.{name}: {name} is a special parameter of "), line
        assert result.stdout == ""


@pytest.mark.parametrize("shell", SHELLS)
def test_static_falls_back_to_dynamic_for_strict_and_auto_placement(iso: Isolated, shell: str) -> None:
    iso.write_profile("strictprof", 'threads = 1\nverify = "strict"\n')
    iso.write_profile("autoprof", 'threads = 1\ncpus = "auto:1"\n')
    result = iso.run("alias", "--shell", shell, "--static", "-p", "strictprof", "-p", "autoprof")
    assert result.returncode == 0, result.stderr
    assert "# tcap-strictprof: not static: verify strict needs tcap to supervise the run" in result.stdout
    assert "# tcap-autoprof: not static: auto CPU placement books CPUs at each launch" in result.stdout
    assert result.stdout.count(f"{TCAP} run -p ") == 2, result.stdout
    [child] = children(iso, shell, alias_args(shell, "--static", "-p", "strictprof"), ["tcap-strictprof"])
    assert_follows_plan(iso, child, "strictprof")


def test_static_alias_header_says_it_goes_stale(iso: Isolated) -> None:
    result = iso.run("alias", "--shell", "bash", "--static", "-p", "serial")
    comments = [line for line in result.stdout.splitlines() if line.startswith("#")]
    assert comments and "static alias of profile serial" in comments[0]
    assert any("goes stale" in line and "tcap alias --static" in line for line in comments)


@pytest.mark.parametrize("shell", SHELLS)
def test_alias_for_every_valid_profile_by_default(iso: Isolated, shell: str) -> None:
    iso.write_profile("mine", 'alias = "mine-alias"\nthreads = 1\n')
    iso.write_profile("broken", "threads = \n")
    names = iso.run("profiles", "--names").stdout.split()
    assert "mine" in names and "broken" not in names
    expected = sorted("mine-alias" if name == "mine" else f"tcap-{name}" for name in names)
    if shell == "fish":
        listing = "for f in (functions -a); functions -q $f; and string match -q 'tcap-*' $f; and echo $f; end"
        body = [listing, "functions -q mine-alias; and echo mine-alias"]
    else:
        body = ["alias | sed -n 's/^\\(alias \\)\\{0,1\\}\\([^=]*\\)=.*/\\2/p'"]
    result = run_script(iso, shell, body, [str(TCAP), "alias", "--shell", shell])
    assert result.returncode == 0, result.stderr
    defined = {name for name in result.stdout.decode().split() if name.startswith("tcap-") or name == "mine-alias"}
    assert sorted(defined) == expected


# --- hostile values arrive byte for byte, nothing runs --------------------------------------

HOSTILE = {
    "H_SQUOTE": "it's 'single' '' '\\''",
    "H_DQUOTE": 'say "hi" "" \\"',
    "H_SUBST": "$(touch {marker}_subst)",
    "H_TICK": "`touch {marker}_tick`",
    "H_SEMI": "a; touch {marker}_semi; b",
    "H_PIPE": "a | touch {marker}_pipe",
    "H_AMP": "a & touch {marker}_amp && b",
    "H_FISH": "(touch {marker}_fish)",
    "H_BACKSLASH": "back\\slash \\' \\\" \\\\ \\n \\$HOME end\\",
    "H_GLOB": "* ? [a-z] **/*",
    "H_TILDE": "~ ~root ~/x a:~/b",
    "H_SPACES": "  two  spaces  ",
    "H_TAB": "\ttab\t",
    "H_NEWLINE": "line one\nline two\n",
    "H_CONTROL": "\x1b[31mred\x1b[0m \r cr",
    "H_UNICODE": "caf\u00e9 \u2603 \u00a0 \u65e5\u672c \U0001f642",
    "H_DASH": "-e",
    "H_DASHES": "--help -n --",
    "H_PERCENT": "%self %1",
    "H_BRACE": "{a,b} {1..3}",
    "H_DOLLAR": "$HOME ${HOME} $0 $$ $argv $status $( ${",
    "H_HISTORY": "!! !$ ^a^b",
    "H_EQUALS": "=ls a=b",
    "H_BARE": "a=b:c@d+e/f.g-h_i",
    "H_EMPTY": "",
}


def hostile_values(marker: Path) -> dict[str, str]:
    return {name: value.replace("{marker}", str(marker)) for name, value in HOSTILE.items()}


def env_table(values: dict[str, str]) -> str:
    # A JSON string is a TOML basic string (without \u escapes of non-BMP characters).
    return "[env]\n" + "".join(f"{name} = {json.dumps(value, ensure_ascii=False)}\n" for name, value in values.items())


def assert_nothing_ran(iso: Isolated) -> None:
    assert sorted(iso.root.rglob("PWNED*")) == []


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("kind", ["alias", "shell-init", "env"])
def test_hostile_values_arrive_byte_for_byte_and_nothing_runs(iso: Isolated, shell: str, kind: str) -> None:
    values = hostile_values(iso.root / "PWNED")
    iso.write_profile("hostile", "threads = 1\n" + env_table(values))
    command = "tcap-hostile"
    if kind == "alias":
        args = alias_args(shell, "--static", "-p", "hostile")
    elif kind == "shell-init":
        args = [str(TCAP), "shell-init", "--static", "-p", "hostile", shell]
    else:
        # tcap env also takes --set, whose values come straight from argv.
        flags = [f"--set=S{name}={value}" for name, value in values.items()]
        args = [str(TCAP), "env", "--shell", shell, "-p", "hostile", *flags]
        values.update({f"S{name}": value for name, value in list(values.items())})
        command = ""
    [child] = children(iso, shell, args, [command])
    got = {name: child["environ"].get(name) for name in values}
    assert got == values
    assert child["environ"]["OMP_NUM_THREADS"] == "1"
    assert_nothing_ran(iso)


HOSTILE_DIR = "we ird 'sq' \"dq\" $(touch PWNED_dir) `touch PWNED_tick` ; & | ~ * {a,b} %self \\ \u00e9\nnl"


@pytest.mark.parametrize("shell", SHELLS)
def test_profile_directory_with_hostile_name(iso: Isolated, shell: str) -> None:
    directory = iso.root / HOSTILE_DIR
    directory.mkdir()
    value = "it's $(touch PWNED_value) `touch PWNED_v2` ; rm -rf x \\ \n new line"
    iso.write_profile("dirprof", f'alias = "dirp"\nthreads = 1\n[env]\nT_HOSTILE = {json.dumps(value)}\n', directory)
    env = shell_env(iso, TCAP_PROFILE_PATH=str(directory))
    assert "dirprof" in iso.run("profiles", "--names", extra_env={"TCAP_PROFILE_PATH": str(directory)}).stdout
    for flags in ([], ["--static"]):
        text = iso.run("alias", "--shell", shell, *flags, "-p", "dirprof", extra_env=env).stdout
        if flags:  # the path is only in a comment, its newline escaped
            on_path = [line for line in text.splitlines() if "PWNED_dir" in line or "nl/dirprof.toml" in line]
            assert len(on_path) == 1 and on_path[0].startswith("# ") and "\\nnl/dirprof.toml" in on_path[0], text
        [child] = children(iso, shell, alias_args(shell, *flags, "-p", "dirprof"), ["dirp"], env)
        assert child["environ"]["T_HOSTILE"] == value
        assert child["environ"]["TCAP_PROFILE"] == "dirprof"
        assert child["probe"]
    assert sorted(iso.work.rglob("PWNED*")) == []
    assert_nothing_ran(iso)


@pytest.fixture
def hostile_install(iso: Isolated) -> tuple[Path, Path]:
    """tcap's interpreter and package under a directory whose name is shell
    code: a venv there (sharing the test venv's libraries) whose ``tcap`` is
    a wrapper marking the commands it starts with T_VIA, and a copy of the
    package, so that the probe and its bootstrap live there too."""
    root = iso.root / HOSTILE_DIR.replace("PWNED_", "PWNED_install_")
    real = Path(PYTHON).parent.parent
    if not (real / "pyvenv.cfg").is_file():
        pytest.skip("the tests do not run in a venv")
    venv = root / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text((real / "pyvenv.cfg").read_text())
    (venv / "lib").symlink_to(real / "lib")
    (venv / "bin" / "python").symlink_to(os.path.realpath(PYTHON))
    wrapper = venv / "bin" / "tcap"
    wrapper.write_text(f'#!/bin/sh\nT_VIA=hostile exec {shlex.quote(str(TCAP))} "$@"\n')
    wrapper.chmod(0o755)
    shutil.copytree(PACKAGE, root / "src" / "tcap", ignore=shutil.ignore_patterns("__pycache__"))
    return venv / "bin" / "python", root / "src"


@pytest.mark.parametrize("shell", SHELLS)
def test_tcap_installed_under_a_hostile_path(iso: Isolated, shell: str, hostile_install: tuple[Path, Path]) -> None:
    python, src = hostile_install
    value = "'\"$(touch PWNED_value)\"' \\"
    iso.write_profile("here", f"threads = 1\n[env]\nT_HOSTILE = {json.dumps(value)}\n")
    generate = ["env", f"PYTHONPATH={src}", str(python), "-m", "tcap", "alias", "--shell", shell, "-p", "here"]
    check = subprocess.run(generate, env=shell_env(iso), capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    assert "PWNED_install_dir" in check.stdout  # tcap's own path is in the alias
    [dynamic] = children(iso, shell, generate, ["tcap-here"])
    [static] = children(iso, shell, [*generate, "--static"], ["tcap-here"])
    for child in (dynamic, static):
        assert child["environ"]["T_HOSTILE"] == value
        assert child["environ"]["OMP_NUM_THREADS"] == "1"
        assert child["probe"]
    # The dynamic alias ran the tcap of that directory; the static one runs
    # no tcap, and its probe and bootstrap are the ones in that directory.
    assert dynamic["environ"].get("T_VIA") == "hostile"
    assert "T_VIA" not in static["environ"]
    assert static["environ"]["TCAP_PROBE"] == str(src / "tcap" / "probe.py")
    assert static["environ"]["PYTHONPATH"] == str(src / "tcap" / "_bootstrap")
    assert_nothing_ran(iso)


# --- shell-init: aliases and completion ------------------------------------------------------

#: (words on the line, the last being completed) -> the completions expected.
COMPLETION_CASES: list[tuple[list[str], set[str]]] = [
    (["tcap", "ru"], {"run"}),
    (["tcap", "sh"], {"show", "shell-init"}),
    (["tcap", "kernel", "in"], {"install"}),
    (["tcap", "kernel", ""], {"install", "list", "remove"}),
    (["tcap", "run", "-p", "km"], {"kmeans", "kmwhatever"}),
    (["tcap", "alias", "--profile", "kmw"], {"kmwhatever"}),
    (["tcap", "run", "--verify", ""], {"off", "warn", "strict", "enforce"}),
    (["tcap", "run", "--share", ""], {"busy", "off"}),
    (["tcap", "run", "--rep"], {"--report", "--report-json"}),
    (["tcap", "show", "--j"], {"--json"}),
    (["tcap", "env", "--shell", "f"], {"fish"}),
    (["tcap", "kernel", "install", "--fr"], {"--freeze"}),
    (["tcap", "run", "-p", "serial", "--", "tcapcmd"], {"tcapcmdxyz"}),
]


@pytest.fixture
def completion_env(iso: Isolated) -> dict[str, str]:
    """Profiles to complete (one broken), and a command to complete after ``--``."""
    iso.write_profile("kmwhatever", "threads = 1\n")
    iso.write_profile("kmbroken", "threads = \n")
    iso.write_profile("fitting", 'alias = "fit"\n')
    bin_dir = iso.root / "bin"
    bin_dir.mkdir()
    command = bin_dir / "tcapcmdxyz"
    command.write_text("#!/bin/sh\n")
    command.chmod(0o755)
    env = shell_env(iso)
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    return env


def only_the_broken_profile_note(iso: Isolated, stderr: bytes) -> None:
    """The one thing shell-init says on stderr with completion_env: the broken profile gets no alias."""
    broken = iso.user_profiles / "kmbroken.toml"
    assert stderr.decode() == f"tcap: note: no alias: {broken}:1: invalid TOML: Invalid value (column 11)\n"



def completion_blocks(output: str) -> list[set[str]]:
    blocks: list[set[str]] = []
    for line in output.splitlines():
        if line == "@@case":
            blocks.append(set())
        elif blocks and line:
            blocks[-1].add(line.split("\t")[0])
    return blocks


@needs("bash")
def test_bash_shell_init_defines_aliases_and_completion(iso: Isolated, completion_env: dict[str, str]) -> None:
    body = ["complete -p tcap", "type -t fit tcap-serial; type -t tcap-fitting || echo no-tcap-fitting"]
    for words, _ in COMPLETION_CASES:
        body += [
            "echo @@case",
            f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)}); COMP_CWORD={len(words) - 1}; COMPREPLY=()",
            "_tcap_complete; printf '%s\\n' \"${COMPREPLY[@]}\"",
        ]
    result = run_script(iso, "bash", body, [str(TCAP), "shell-init", "bash"], completion_env)
    assert result.returncode == 0, result.stderr
    only_the_broken_profile_note(iso, result.stderr)
    out = result.stdout.decode()
    assert out.startswith("complete -F _tcap_complete tcap\nalias\nalias\nno-tcap-fitting\n"), out
    assert completion_blocks(out) == [expected for _, expected in COMPLETION_CASES]


@needs("zsh")
def test_zsh_shell_init_defines_aliases_and_completion(iso: Isolated, completion_env: dict[str, str]) -> None:
    """zsh runs the bash completion function through bashcompinit, whose
    compgen does not filter by the word (zsh's own matching does that,
    interactively; see test_interactive_completion), so this filters."""
    body = ["whence -w _tcap_complete fit tcap-serial", "complete -p | grep -F tcap"]
    for words, _ in COMPLETION_CASES:
        body += [
            "print -r -- @@case",
            f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)}); COMP_CWORD={len(words) - 1}",
            f"compgen -F _tcap_complete -- {shlex.quote(words[-1])}",
        ]
    result = run_script(iso, "zsh", body, [str(TCAP), "shell-init", "zsh"], completion_env)
    assert result.returncode == 0, result.stderr
    only_the_broken_profile_note(iso, result.stderr)
    out = result.stdout.decode()
    head = "_tcap_complete: function\nfit: alias\ntcap-serial: alias\ncomplete -F _tcap_complete tcap\n"
    assert out.startswith(head), out
    blocks = completion_blocks(out)
    assert len(blocks) == len(COMPLETION_CASES)
    for (words, expected), got in zip(COMPLETION_CASES, blocks):
        assert {word for word in got if word.startswith(words[-1])} == expected, words


@needs("fish")
def test_fish_shell_init_defines_functions_and_completion(iso: Isolated, completion_env: dict[str, str]) -> None:
    cases = [
        ("tcap ru", {"run"}),
        ("tcap run -p km", {"kmeans", "kmwhatever"}),
        ("tcap run --profile kmw", {"kmwhatever"}),
        ("tcap kernel ", {"install", "list", "remove"}),
        ("tcap run --rep", {"--report", "--report-json"}),
        ("tcap run --verify ", {"off", "warn", "strict", "enforce"}),
        ("tcap run --share ", {"busy", "off"}),
        ("tcap show --j", {"--json"}),
    ]
    body = ["functions -q fit; and echo fit", "functions -q tcap-serial; and echo tcap-serial",
            "functions -q tcap-fitting; or echo no-tcap-fitting"]
    for line, _ in cases:
        body += ["echo @@case", f"complete -C {shlex.quote(line)}"]
    result = run_script(iso, "fish", body, [str(TCAP), "shell-init", "fish"], completion_env)
    assert result.returncode == 0, result.stderr
    only_the_broken_profile_note(iso, result.stderr)
    out = result.stdout.decode()
    assert out.startswith("fit\ntcap-serial\nno-tcap-fitting\n"), out
    assert completion_blocks(out) == [expected for _, expected in cases]


def interactive(argv: list[str], env: dict[str, str], cwd: Path, keys: str, timeout: float = 30.0) -> str:
    """Type ``keys`` into an interactive shell on a pseudo-terminal; return
    everything it wrote until it exited."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd, start_new_session=True)
    os.close(slave)
    chunks = []
    try:
        os.write(master, keys.encode())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the shell exited and closed the terminal
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            elif proc.poll() is not None:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        os.close(master)
    return b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.parametrize("shell", [pytest.param(s, marks=needs(s)) for s in ("bash", "zsh")])
def test_interactive_completion(iso: Isolated, shell: str, completion_env: dict[str, str]) -> None:
    """Real <Tab> presses at a prompt; a ``tcap`` shell function shows the
    line completion left (the completion is bound to the name, not the file)."""
    argv = {"bash": ["bash", "--norc", "--noprofile", "-i"], "zsh": ["zsh", "-f", "-i"]}[shell]
    env = dict(completion_env, PS1="$ ", TERM="dumb", TCAP_EXE=str(TCAP))
    keys = (
        f'eval "$("$TCAP_EXE" shell-init {shell})"\r'
        "tcap() { printf 'ARGS:%s:END\\n' \"$*\"; }\r"
        "tcap ru\t-p kmw\t--ver\twa\t\r"
        "tcap kernel in\t--fre\t\r"
        "exit\r"
    )
    out = interactive(argv, env, iso.work, keys)
    got = [args for args in re.findall(r"ARGS:(.*?):END", out) if args != "%s"]
    assert got == ["run -p kmwhatever --verify warn", "kernel install --freeze"], out


@pytest.mark.parametrize("shell", SHELLS)
def test_shell_init_options_after_the_shell_name(iso: Isolated, shell: str) -> None:
    result = iso.run("shell-init", shell, "--static", "-p", "serial")
    assert result.returncode == 0, result.stderr
    assert "static alias of profile serial" in result.stdout


@needs("bash")
def test_bash_completion_offers_shell_names_to_shell_init(iso: Isolated) -> None:
    body = ["COMP_WORDS=(tcap shell-init ''); COMP_CWORD=2; _tcap_complete; printf '%s\\n' \"${COMPREPLY[@]}\""]
    result = run_script(iso, "bash", body, [str(TCAP), "shell-init", "bash"])
    assert {"bash", "zsh", "fish"} <= set(result.stdout.decode().split())


@needs("bash")
def test_bash_completion_never_runs_profile_file_names(iso: Isolated) -> None:
    directory = iso.root / "shared"
    directory.mkdir()
    iso.write_profile("$(touch PWNED_completion)", "threads = 1\n", directory)
    env = shell_env(iso, TCAP_PROFILE_PATH=str(directory))
    body = ["COMP_WORDS=(tcap run -p ''); COMP_CWORD=3; _tcap_complete; printf '%s\\n' \"${COMPREPLY[@]}\""]
    result = run_script(iso, "bash", body, [str(TCAP), "shell-init", "-p", "serial", "bash"], env)
    assert result.returncode == 0, result.stderr
    assert "serial" in result.stdout.decode().split()
    assert not (iso.work / "PWNED_completion").exists()


def test_file_with_an_invalid_profile_name_is_not_a_profile(iso: Isolated) -> None:
    iso.write_profile("bad name", "threads = 1\n")
    assert "bad name" not in iso.run("profiles", "--names").stdout.splitlines()
    result = iso.run("alias", "--shell", "bash")
    assert result.returncode == 0, result.stderr
    assert "tcap-serial" in result.stdout


# --- errors -------------------------------------------------------------------------------


def test_alias_unknown_profile_prints_nothing(iso: Isolated) -> None:
    result = iso.run("alias", "-p", "serial", "-p", "nope")
    assert "no profile named 'nope'" in iso.error_line(result, 2)
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args", [["alias", "--shell", "tcsh"], ["alias", "--shell", "sh"], ["shell-init", "tcsh"]], ids=" ".join
)
def test_unsupported_shell(iso: Isolated, args: list[str]) -> None:
    result = iso.run(*args)
    assert "unsupported shell" in iso.error_line(result, 2)
    assert result.stdout == ""


def test_shell_init_takes_one_shell(iso: Isolated) -> None:
    result = iso.run("shell-init", "bash", "zsh")
    assert "unexpected argument 'zsh'" in iso.error_line(result, 2)
    assert result.stdout == ""


@pytest.mark.parametrize("command", ["alias", "shell-init"])
def test_two_profiles_asking_for_the_same_alias(iso: Isolated, command: str) -> None:
    iso.write_profile("one", 'alias = "same"\n')
    iso.write_profile("two", 'alias = "same"\n')
    shell = ["bash"] if command == "shell-init" else []
    # Asked for by name: an error, nothing printed.
    result = iso.run(command, "-p", "one", "-p", "two", *shell)
    line = iso.error_line(result, 2)
    assert "'same'" in line and "'one'" in line and "'two'" in line
    assert result.stdout == ""
    # Every profile (a login shell): the first keeps it, the second gets a note.
    result = iso.run(command, *shell)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "tcap: note: no alias: alias 'same' is asked for by both profile 'one' and 'two'\n"
    assert result.stdout.count("alias same=") == 1 and "-p one --" in result.stdout
    assert "tcap-serial" in result.stdout


def test_static_shell_init_leaves_out_a_profile_that_does_not_resolve(iso: Isolated) -> None:
    path = iso.write_profile("toobig", 'cpus = "8000"\n')  # a CPU this machine does not have
    result = iso.run("shell-init", "--static", "bash")
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith(f"tcap: note: no alias: {path}:1: ") and result.stderr.count("\n") == 1
    assert "alias tcap-serial=" in result.stdout and "tcap-toobig" not in result.stdout
    iso.error_line(iso.run("shell-init", "--static", "-p", "toobig", "bash"), 2)  # asked for: an error
    (iso.site / "policy.toml").write_text("max_threads = 0\n")  # a broken policy stops every alias
    result = iso.run("shell-init", "--static", "bash")
    assert "policy.toml:1: max_threads" in iso.error_line(result, 2)
    assert result.stdout == ""


def test_alias_colliding_with_a_default_alias_name(iso: Isolated) -> None:
    iso.write_profile("one", 'alias = "tcap-serial"\n')
    result = iso.run("alias", "-p", "one", "-p", "serial")
    assert "'tcap-serial'" in iso.error_line(result, 2)
    assert result.stdout == ""


@pytest.mark.parametrize("value", ['"a b"', '"a+b"', '"."', '".."', '"$(x)"', '"`x`"', '"a;b"', '""', '"-x"',
                                   '"a\\nb"', '"\u00fc"', "3"])
def test_invalid_alias_value(iso: Isolated, value: str) -> None:
    path = iso.write_profile("badalias", f'description = "x"\nalias = {value}\n')
    result = iso.run("alias", "-p", "badalias")
    line = iso.error_line(result, 2)
    assert f"{path}:2: alias:" in line
    assert result.stdout == ""
    # Listing every profile skips it, as it skips every broken profile.
    listing = iso.run("alias", "--shell", "bash")
    assert listing.returncode == 0, listing.stderr
    assert "badalias" not in listing.stdout and "tcap-serial" in listing.stdout


# --- profiles --names ---------------------------------------------------------------------


def test_profiles_names_lists_each_valid_profile_once(iso: Isolated) -> None:
    extra = iso.root / "extra"
    extra.mkdir()
    iso.write_profile("serial", "threads = 2\n")  # shadows the built-in
    iso.write_profile("serial", "threads = 3\n", extra)  # shadows both
    iso.write_profile("only-extra", "threads = 1\n", extra)
    iso.write_profile("mine", "threads = 1\n")
    iso.write_profile("broken", "threads = \n")
    iso.write_profile("badkey", "thread = 1\n")
    (iso.user_profiles / "notes.txt").write_text("not a profile\n")
    result = iso.run("profiles", "--names", extra_env={"TCAP_PROFILE_PATH": str(extra)})
    assert result.returncode == 0, result.stderr
    names = result.stdout.splitlines()
    builtins = [p.stem for p in sorted(Path(builtin_dir()).glob("*.toml"))]
    expected = ["only-extra", "serial", "mine", *[b for b in builtins if b != "serial"]]
    assert sorted(names) == sorted(expected)
    assert len(names) == len(set(names))
    # In search order: the TCAP_PROFILE_PATH directory first.
    assert names[:2] == ["only-extra", "serial"]

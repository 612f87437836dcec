"""A command line that explains itself: help per command, the top-level
list of every command, counts that read right for one, "did you mean" for
close slips only, and a flag missing its value named as such.

Most cases call ``tcap.cli.main`` in this process (its output through
capsys); a few run the installed ``tcap`` script as a subprocess."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PYTHON, TCAP, Isolated
from tcap import helptext
from tcap.cli import main
from tcap.grammar import COMMANDS
from tcap.plural import counted
from tcap.profiles import _edits, did_you_mean
from tcap.supervise import budget_text, share_line

TOP = ["run", "show", "env", "doctor", "profiles", "alias", "shell-init", "bookings", "report", "sweep", "kernel"]


def helped(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code = main(list(args))
    out, err = capsys.readouterr()
    assert (code, err) == (0, ""), err
    return out


def failed(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """The one error line of a usage error (exit 2, nothing on stdout)."""
    code = main(list(args))
    out, err = capsys.readouterr()
    assert (code, out) == (2, ""), (code, out)
    assert err.startswith("tcap: error: ") and err.count("\n") == 1, err
    return err


# --- help per command -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_of_the_grammar_has_a_help_line_and_no_other(name: str) -> None:
    valued, flags, _ = COMMANDS[name]
    assert helptext.options_of(helptext.HELP[name]) == {*valued, *flags}


@pytest.mark.parametrize("name", sorted(COMMANDS))
@pytest.mark.parametrize("ask", ["--help", "-h", "help"])
def test_command_help_has_usage_options_and_an_example(capsys: pytest.CaptureFixture[str], name: str,
                                                       ask: str) -> None:
    words = name.split(" ")
    out = helped(capsys, *(["help", *words] if ask == "help" else [*words, ask]))
    assert out.startswith(f"usage: tcap {name} "), out
    valued, flags, _ = COMMANDS[name]
    entries = [line for line in out.splitlines() if re.match(r"^  -", line)]
    for option in [*valued, *flags, "--help"]:
        line = next((line for line in entries if re.search(rf"(^  |, ){re.escape(option)}([\s,]|$)", line)), None)
        assert line is not None, f"{option} has no line in tcap {name} --help"
        assert len(line.split(None, 1)[0]) > 0 and len(line) > 22, line  # the option and a description
    examples = out.split("\nexamples:\n", 1)[1].splitlines()
    assert examples and examples[0].startswith("  ") and re.search(rf"\btcap {name}( |$)", examples[0]), out
    assert all(len(line) <= 79 for line in out.splitlines()), [line for line in out.splitlines() if len(line) > 79]


def test_the_help_of_two_commands_differs(capsys: pytest.CaptureFixture[str]) -> None:
    pages = {name: helped(capsys, *name.split(" "), "--help") for name in COMMANDS}
    assert len(set(pages.values())) == len(pages)
    assert "doctor exits 0 when there is no hazard, 1 when there is one" in pages["doctor"]
    assert not re.search(r"^  --dry-run", pages["doctor"], re.M) and not re.search(r"^  --freeze", pages["run"], re.M)


def test_kernel_help_lists_its_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    out = helped(capsys, "kernel", "--help")
    assert out == helped(capsys, "help", "kernel") == helped(capsys, "kernel", "-h")
    for sub in ("install", "list", "remove"):
        assert re.search(rf"^  {sub} +\S", out, re.M) and "usage: tcap kernel install" in out
    assert helped(capsys, "kernel", "install", "--help") == helped(capsys, "help", "kernel", "install")


def test_help_wins_over_what_follows_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert helped(capsys, "run", "--help", "--bogus").startswith("usage: tcap run ")
    assert helped(capsys, "run", "-p", "serial", "-h", "--", "python").startswith("usage: tcap run ")


def test_help_after_the_command_to_run_is_the_command_s(iso: Isolated) -> None:
    result = iso.run("run", "--", PYTHON, "-c", "import sys; print(sys.argv[1:])", "--help")
    assert (result.returncode, result.stdout) == (0, "['--help']\n"), result.stderr


def test_help_before_or_after_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert helped(capsys, "--help", "sweep") == helped(capsys, "sweep", "--help") == helped(capsys, "-h", "sweep")
    assert helped(capsys, "help", "help") == helped(capsys, "--help")


def test_help_for_an_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert "unknown command 'rnu' (did you mean 'run'?)" in failed(capsys, "help", "rnu")
    assert "unknown command 'kernel nope'" in failed(capsys, "help", "kernel", "nope")


# --- the top level --------------------------------------------------------------------------------


def test_top_level_help_lists_every_command_with_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    out = helped(capsys, "--help")
    assert out == helped(capsys, "-h") == helped(capsys, "help")
    assert out.startswith("usage: tcap COMMAND [OPTIONS] [ARG...]\n       tcap --version\n")
    listed = re.findall(r"^  ([a-z-]+) {2,}(\S.*)$", out.split("\ncommands:\n", 1)[1].split("\n\n", 1)[0], re.M)
    assert [name for name, _ in listed] == TOP == list(helptext.ORDER)
    for name, summary in listed:
        assert summary == helptext.summary(name)
    assert "kernel install | kernel list | kernel remove" in out
    for option in ("--profile", "--threads", "--blas", "--openmp", "--workers", "--cpus", "--set", "--verify",
                   "--share"):
        assert re.search(rf"^  (-p, )?{option} ", out, re.M), option
    assert "'cpus/2'" in out and "auto:N" in out
    assert "exit codes:" in out and "127 command not found" in out and "86 a pool over" in out
    assert "tcap COMMAND --help" in out
    assert all(len(line) <= 79 for line in out.splitlines())


def test_the_usage_s_old_information_is_all_somewhere(capsys: pytest.CaptureFixture[str]) -> None:
    """What the single help page said before it was split stays in one page or another."""
    pages = helped(capsys, "--help") + "".join(helped(capsys, *name.split(" "), "-h") for name in COMMANDS)
    flat = " ".join(pages.split())
    for said in ("joblib's n_jobs=-1 means N", "N CPUs no other tcap launch holds", "torchrun share",
                 "pools stay at their caps", "pip install 'tcap[plot]'", "{rank}, {host} and {pid}",
                 "tcap supervises the command instead of exec-ing it", "strict exits 86",
                 "checks the pools after every cell", "default tcap-PROFILE", "needs ipykernel",
                 "docs/jupyter.md", "docs/shared-servers.md", "record their build limits",
                 "exits 0 when every cap and budget held, 1 otherwise", "rank them by median wall time",
                 "--repeat times each", "74 an I/O error", "125 other failure of tcap",
                 "126 command not executable", "75 too few free CPUs for auto:N",
                 "tcap run uses the command's", "the python3 on PATH", 'eval "$(tcap shell-init bash)"'):
        assert said in flat, said


def test_no_command_names_them_all_and_exits_2(iso: Isolated) -> None:
    result = iso.run()
    line = iso.error_line(result, 2)
    assert line == ("tcap: error: missing command: run, show, env, doctor, profiles, alias, shell-init, bookings, "
                    "report, sweep or kernel (see tcap --help)")
    assert result.stdout == ""


def test_help_through_the_installed_script(iso: Isolated) -> None:
    for args, first in ((["--help"], "usage: tcap COMMAND"), (["sweep", "--help"], "usage: tcap sweep "),
                        (["kernel", "install", "-h"], "usage: tcap kernel install "),
                        (["help", "report"], "usage: tcap report ")):
        result = iso.run(*args)
        assert (result.returncode, result.stderr) == (0, ""), result.stderr
        assert result.stdout.startswith(first)
    module = subprocess.run([PYTHON, "-m", "tcap", "doctor", "--help"], env=iso.env, capture_output=True, text=True,
                            timeout=60)
    assert module.returncode == 0 and module.stdout.startswith("usage: tcap doctor ")


def test_the_launch_path_does_not_import_the_help(iso: Isolated) -> None:
    """``tcap run`` on a cached plan imports neither the help text nor the
    suggestion code (the command execs, so -X importtime tells)."""
    command = ["run", "-p", "serial", "--", "true"]
    assert iso.run(*command).returncode == 0  # fills the cache
    program = f"import sys; sys.argv = ['tcap', *{command!r}]; from tcap import _entry; sys.exit(_entry())"
    result = subprocess.run([PYTHON, "-X", "importtime", "-c", program], env=iso.env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "tcap.cli" in imported and "tcap.grammar" in imported  # the measurement sees tcap's modules
    assert not imported & {"tcap.helptext", "tcap.plural", "tcap.profiles", "difflib", "textwrap"}, imported


# --- did you mean -------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "suggested"), [
    (["run", "--bogus"], None),
    (["run", "--thread", "2"], "--threads"),
    (["run", "--treads", "2"], "--threads"),
    (["run", "-threads", "2"], "--threads"),
    (["run", "--dry"], "--dry-run"),
    (["run", "--rep"], None),  # the start of --report and --report-json
    (["run", "--x"], None),
    (["show", "--jsno"], "--json"),
    (["sweep", "--repaet", "2"], "--repeat"),
    (["rnu"], "run"),
    (["shwo"], "show"),
    (["kernl"], "kernel"),
    (["bogus"], None),
    (["zz"], None),
])
def test_did_you_mean_only_for_close_slips(capsys: pytest.CaptureFixture[str], args: list[str],
                                           suggested: str | None) -> None:
    line = failed(capsys, *args)
    if suggested is None:
        assert "did you mean" not in line, line
    else:
        assert f"(did you mean {suggested!r}?)" in line, line


def test_a_profile_key_slip_is_still_suggested(iso: Isolated) -> None:
    iso.write_profile("typo", "treads = 2\nevn = 1\n")
    assert "unknown key 'treads' (did you mean 'threads'?)" in iso.error_line(iso.run("show", "-p", "typo"), 2)
    iso.write_profile("far", "colour = 2\n")
    assert "did you mean" not in iso.error_line(iso.run("show", "-p", "far"), 2)


@pytest.mark.parametrize(("a", "b", "edits"), [
    ("", "", 0), ("abc", "abc", 0), ("", "ab", 2), ("ab", "", 2), ("rnu", "run", 1), ("thread", "threads", 1),
    ("kitten", "sitting", 3), ("bogus", "cpus", 3), ("ca", "abc", 3), ("abcd", "badc", 2),
])
def test_edit_distance(a: str, b: str, edits: int) -> None:
    assert _edits(a, b) == edits == _edits(b, a)


def test_did_you_mean_scales_with_the_word() -> None:
    assert did_you_mean("verfy", ["verify"]) == " (did you mean 'verify'?)"
    assert did_you_mean("max_thrads", ["max_threads", "max_cpus"]) == " (did you mean 'max_threads'?)"
    assert did_you_mean("ab", ["ac"]) == ""  # two letters: only an exact (other case, other dashes) match
    assert did_you_mean("-P", ["-p"]) == " (did you mean '-p'?)"
    assert did_you_mean("abcdefgh", ["abcdxyzh"]) == ""  # 3 edits in 8 letters
    assert did_you_mean("abcdefghijkl", ["abcdxyzhijkl"]) == " (did you mean 'abcdxyzhijkl'?)"
    assert did_you_mean("env", ["enc", "evn"]) == " (did you mean 'enc'?)"  # the first of the closest


# --- a flag missing its value ------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["--threads", "--"],
    ["--threads"],
    ["--threads", "--verify", "warn"],
    ["--threads", "--verify=warn"],
    ["--threads", "-p", "serial"],
    ["--threads", "-pserial"],
    ["--threads", "--help"],
    ["--threads="],
    ["-p", "--"],
    ["--set", "--"],
    ["--plot", "--report"],
])
def test_a_flag_missing_its_value_says_so(iso: Isolated, args: list[str]) -> None:
    marker = iso.work / "started"
    result = iso.run("run", *args, *(["--", "touch", str(marker)] if args[-1] != "--" else ["touch", str(marker)]))
    flag = args[0].rstrip("=")
    assert iso.error_line(result, 2) == f"tcap: error: tcap run: {flag} needs a value"
    assert not marker.exists()


@pytest.mark.parametrize(("name", "args", "flag"), [
    ("show", ["--cpus"], "--cpus"), ("env", ["--shell", "--"], "--shell"), ("report", ["--json", "--plot"], "--json"),
    ("sweep", ["--repeat", "--", "true"], "--repeat"), ("kernel install", ["--name", "--user"], "--name"),
    ("alias", ["-p", "--static"], "-p"),
])
def test_every_command_names_a_missing_value(capsys: pytest.CaptureFixture[str], name: str, args: list[str],
                                             flag: str) -> None:
    assert failed(capsys, *name.split(" "), *args) == f"tcap: error: tcap {name}: {flag} needs a value\n"


def test_values_that_only_look_like_options_are_values(iso: Isolated) -> None:
    planned = iso.planned_env("--set", "TCAP_X=--", "--set", "TCAP_Y=-p")
    assert (planned["TCAP_X"], planned["TCAP_Y"]) == ("--", "-p")
    assert "VAR=VALUE" in iso.error_line(iso.run("run", "--set", "-x", "--", "true"), 2)  # its own complaint


# --- counts ----------------------------------------------------------------------------------------


def test_counted() -> None:
    assert [counted(n, "CPU") for n in (0, 1, 2)] == ["0 CPUs", "1 CPU", "2 CPUs"]
    assert counted(1, "process", "processes") == "1 process" and counted(3, "process", "processes") == "3 processes"
    assert counted(1.0, "CPU") == "1 CPU" and counted(1.5, "CPU") == "1.5 CPUs"


def test_a_report_of_one_launch_reads_in_the_singular(iso: Isolated) -> None:
    """A real one-process launch, its --report-json merged by tcap report."""
    result = iso.run("run", "-p", "serial", "--report-json", "r.json", "--", PYTHON, "-c", "pass", cwd=iso.work)
    assert result.returncode == 0, result.stderr
    merged = iso.run("report", "r.json", cwd=iso.work)
    assert merged.returncode == 0, merged.stderr
    first, last = merged.stdout.splitlines()[0], merged.stdout.splitlines()[-1]
    assert re.fullmatch(r"node \S+: 1 launch, 1 process", first), first
    assert last.startswith("verdict: 1 report from 1 node: "), last
    assert "(1 process, " in last and not re.search(r"\b1 (processes|reports|nodes|launches)\b", merged.stdout)


def test_budget_and_sharing_lines_count_right() -> None:
    one = {"peak_pool_threads": 1, "cpus": 1, "processes_at_peak": 1, "longest_over_seconds": 0}
    assert budget_text(one) == "peak 1 busy thread on 1 CPU across 1 busy process"
    many = {"peak_pool_threads": 4, "cpus": 2, "processes_at_peak": 2, "longest_over_seconds": 5.5}
    assert budget_text(many) == "peak 4 busy threads on 2 CPUs across 2 busy processes, above them for 5.5 s"
    one_share = {"mode": "busy", "cpus": 1, "busy_peak": 1}
    assert share_line(one_share) == "sharing: busy, 1 CPU; up to 1 busy process at once"


def test_one_cpu_plans_read_in_the_singular(iso: Isolated) -> None:
    show = iso.run("show", "-p", "physical", "--cpus", "first:1")
    assert show.returncode == 0, show.stderr
    assert "\nphysical  1 core in the set\n" in show.stdout and "(1 CPU in the set " in show.stdout
    env = iso.run("env", "--cpus", "first:1", "--shell", "bash")
    assert env.returncode == 0, env.stderr
    assert env.stdout.startswith("# tcap env: profile default (1 usable CPU)\n")
    assert re.search(r"^# this plan pins to CPU \d+; ", env.stdout, re.M), env.stdout


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_setaffinity"), reason="needs CPU affinity")
def test_doctor_on_one_cpu_reads_in_the_singular(iso: Isolated) -> None:
    result = subprocess.run(["taskset", "-c", "0", str(TCAP), "doctor", "--python", sys.executable, "--json"],
                            env=iso.env, capture_output=True, text=True, timeout=120)
    assert result.returncode in (0, 1), result.stderr
    assert json.loads(result.stdout)["machine"]["affinity_count"] == 1
    text = subprocess.run(["taskset", "-c", "0", str(TCAP), "doctor", "--python", sys.executable], env=iso.env,
                          capture_output=True, text=True, timeout=120)
    assert re.search(r"^  affinity mask    1 CPU: 0$", text.stdout, re.M), text.stdout


def test_no_user_facing_count_of_one_in_the_plural(iso: Isolated, tmp_path: Path) -> None:
    """Every command run on one CPU: no "1 CPUs", "1 processes" and the like."""
    outputs = []
    for args in (["show", "--cpus", "first:1"], ["show", "-p", "physical", "--cpus", "first:1"],
                 ["env", "--cpus", "first:1"], ["run", "--cpus", "first:1", "--dry-run", "--", "true"],
                 ["alias", "--static", "-p", "serial"]):
        result = iso.run(*args)
        assert result.returncode == 0, (args, result.stderr)
        outputs.append(result.stdout + result.stderr)
    plural = re.compile(r"(?<![\d.])1 (CPUs|cores|processes|launches|reports|runs|threads|nodes|usable CPUs)\b")
    found = [match.group(0) for text in outputs for match in plural.finditer(text)]
    assert not found, outputs

"""The ``share`` setting from the outside: the profile key, the ``--share``
flag of every plan command, what ``tcap show`` says, and what a launch
exports, through the installed ``tcap`` (see conftest.py)."""

from __future__ import annotations

import json

import pytest

from conftest import PYTHON, Isolated
from tcap.errors import TcapError
from tcap.grammar import COMMANDS, PLAN_OPTIONS
from tcap.recipe import overrides_from, parse_plan_flags, plan_flags

RULE = ("at run time the probes share the launch's {n} CPU{s} among its busy processes: each pool gets "
        "min(its cap, {n} / busy processes / busy Python threads in that process), never below 1; explicit caps "
        "and --workers stay ceilings")


def rule(cpus: int) -> str:
    return RULE.format(n=cpus, s="s" if cpus != 1 else "")


def share_lines(text: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("share "))
    return lines[start:start + 2]


@pytest.mark.parametrize("value", ['"sometimes"', '"BUSY"', "true", "1", '["busy"]'])
def test_bad_share_key_is_one_line_naming_file_and_line(iso: Isolated, value: str) -> None:
    path = iso.write_profile("bad", f'description = "x"\nshare = {value}\n')
    for command in ("show", "env"):
        line = iso.error_line(iso.run(command, "-p", "bad"), 2)
        assert line.startswith(f"tcap: error: {path}:2: share: expected one of busy, off, not "), line
    listed = iso.run("profiles", "--json")
    assert listed.returncode == 0
    broken = next(p for p in json.loads(listed.stdout)["profiles"] if p["name"] == "bad")
    assert "share: expected one of busy, off" in broken["error"]


@pytest.mark.parametrize("command", ["show", "env", "run"])
def test_bad_share_flag_is_a_usage_error(iso: Isolated, command: str) -> None:
    args = [command, "--share", "sometimes"] + (["--", PYTHON, "-c", "pass"] if command == "run" else [])
    line = iso.error_line(iso.run(*args), 2)
    assert line == "tcap: error: --share must be one of busy, off, not 'sometimes'"


def test_show_states_the_default_rule_with_the_plans_cpus(iso: Isolated) -> None:
    data = iso.show_json("--cpus", "first:1")
    assert (data["cpus"], data["share"], data["why"]["share"]) == (1, "busy", "default")
    assert data["share_rule"] == rule(1)
    text = iso.run("show", "--cpus", "first:1").stdout
    assert share_lines(text) == ["share     busy  (default)", "          " + rule(1)]
    full = iso.show_json()
    assert full["share_rule"] == rule(full["cpus"])


def test_profile_share_off_and_the_flag_over_it(iso: Isolated) -> None:
    path = iso.write_profile("quiet", 'description = "no sharing"\nshare = "off"\n')
    data = iso.show_json("-p", "quiet")
    assert (data["share"], data["why"]["share"]) == ("off", f"{path}:2 share = 'off'")
    assert data["share_rule"] == "pools stay at their caps"
    text = iso.run("show", "-p", "quiet").stdout
    assert share_lines(text)[0] == f"share     off  ({path}:2 share = 'off'): pools stay at their caps"
    over = iso.show_json("-p", "quiet", "--share", "busy")
    assert (over["share"], over["why"]["share"]) == ("busy", "flag --share busy")


def test_an_extending_profile_inherits_share(iso: Isolated) -> None:
    parent = iso.write_profile("parent", 'share = "off"\n')
    iso.write_profile("child", 'extends = "parent"\nthreads = 2\n')
    data = iso.show_json("-p", "child")
    assert (data["share"], data["why"]["share"]) == ("off", f"{parent}:1 share = 'off'")


def test_verify_off_turns_sharing_off(iso: Isolated) -> None:
    data = iso.show_json("--verify", "off", "--share", "busy")
    assert data["share"] == "off"
    assert data["why"]["share"] == ("flag --share busy does not apply: verify is off, so there is no probe to share "
                                    "the CPUs with")
    assert iso.show_json("--verify", "off")["why"]["share"] == "verify is off: there is no probe to share the CPUs with"


def test_launch_exports_the_share_and_the_cache_tells_the_flags_apart(iso: Isolated) -> None:
    code = "import os; print(os.environ.get('TCAP_SHARE'))"
    cpus = str(iso.show_json()["cpus"])
    # Twice each, alternating: the second of each is a cached launch.
    for args, expected in ((), cpus), (("--share", "off"), "None"), ((), cpus), (("--share", "off"), "None"):
        result = iso.run("run", *args, "--", PYTHON, "-c", code, timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == expected, args
    off = iso.run("run", "--verify", "off", "--", PYTHON, "-c", code, timeout=60)
    assert off.stdout.strip() == "None"


def test_share_is_a_plan_option_of_every_plan_command() -> None:
    assert PLAN_OPTIONS["--share"] == "share"
    for command in ("run", "show", "env", "doctor", "kernel install"):
        assert COMMANDS[command][0]["--share"] == "share", command
    # A kernelspec passes it on, and reads it back.
    flags = plan_flags({"profile": "p", "share": "off", "set": ["A=1"]})
    assert flags == ["--profile", "p", "--share", "off", "--set", "A=1"]
    assert parse_plan_flags(flags) == {"profile": "p", "share": "off", "set": ["A=1"]}
    assert overrides_from({"share": "off"}).share == "off"
    assert overrides_from({}).share is None
    with pytest.raises(TcapError, match="^--share must be one of busy, off, not 'no'$"):
        overrides_from({"share": "no"})

"""``tcap report`` and ``--report-json`` against hostile input: report files
damaged one field at a time, FIFOs, deep and huge files, outputs that are
inputs, destinations that are symlinks planted by another real user, full
and read-only filesystems, and probe records a child garbles. Each case
gives its documented exit code and one line, quickly, or behaves correctly;
nothing of another user's changes. Also: the merged launch budget against
its definition, and the report on stdout.

The mutation sweep calls ``tcap.cli.main`` in this process (the console
script's code path, as in test_fuzz.py), with an alarm against hangs; the
other cases run the real ``tcap``.
"""

# ruff: noqa: F811 (the users and shared_tmp fixtures are imported by name)
from __future__ import annotations

import base64
import contextlib
import copy
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import zlib
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import PYTHON, Isolated
from tcap import reports, supervise
from tcap.cli import main
from tcap.errors import EXIT_IO
from users import User, shared_tmp, users  # noqa: F401

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs Linux")

HANG = 20  # seconds: every case that passes takes well under one
#: A program with a pool over its cap, brought back under enforce: a report
#: with pools, violations and enforcements.
PROGRAM = """
import numpy, threadpoolctl, time
a = numpy.ones((200, 200)); a @ a
threadpoolctl.threadpool_limits(2)
a @ a
time.sleep(1.5)
"""
HAZARD = {"kind": "hazard", "what": "numpy's OpenBLAS is built for 4 threads at most"}


@pytest.fixture(scope="module")
def real_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The report of a real ``tcap run --report-json`` (and a hazard, as the
    probe records one, for its fields to be damaged too)."""
    iso = Isolated(tmp_path_factory.mktemp("real"))
    (iso.work / "prog.py").write_text(PROGRAM)
    out = iso.run("run", "--threads", "1", "--verify", "enforce", "--report-json", "r.json", "--", PYTHON, "prog.py",
                  timeout=120)
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = json.loads((iso.work / "r.json").read_text())
    assert data["processes"][0]["pools"] and data["processes"][0]["violations"] and data["processes"][0]["enforced"]
    assert len(unpacked(data["launch"]["budget_samples"])) >= 2
    assert data["processes"][0]["share"]["samples"] and data["launch"]["share"]["mode"] == "busy", data
    data["processes"][0]["hazards"].append(dict(HAZARD))
    data["hazards"].append({**HAZARD, "pids": [data["processes"][0]["pid"]]})
    return data


def unpacked(packed: dict[str, str]) -> list[list[int]]:
    """The rows [wall-clock ms, pool threads, busy processes] of packed budget samples."""
    columns = []
    for name, typecode in (("time_ms", "q"), ("changes", "i"), ("threads", "i"), ("processes", "i")):
        column = array(typecode)
        column.frombytes(zlib.decompress(base64.b64decode(packed[name])))
        if sys.byteorder == "big":
            column.byteswap()
        columns.append(column.tolist())
    times, changes, threads, processes = columns
    rows = []
    for index, when in enumerate(times):
        run = sum(1 for change in changes if change <= index) - 1
        rows.append([when, threads[run], processes[run]] if run >= 0 else [when, 0, 0])
    return rows


def as_earlier(data: dict[str, Any]) -> dict[str, Any]:
    """A report as tcap wrote it before the samples were packed: rows of
    [wall time in seconds, pool threads, busy processes]."""
    data = copy.deepcopy(data)
    data["launch"]["budget_samples"] = [[when / 1000, threads, processes] for when, threads, processes in
                                        unpacked(data["launch"]["budget_samples"])]
    return data


# --- one field damaged at a time ----------------------------------------------------------------

#: What each field is set to, in turn (1e400 parses as an infinite float).
DAMAGE: list[object] = [None, "x", [], {}, True, -1, 10**30, "1e400"]
INFINITE = "@@1e400@@"


def fields(value: object, path: tuple[object, ...] = ()) -> Iterator[tuple[object, ...]]:
    """Every path into ``value``: dict keys and list indices."""
    if path:
        yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from fields(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from fields(item, (*path, index))


def name(path: tuple[object, ...]) -> str:
    """``processes[0].pools[0].cap``: how tcap names a field."""
    text = ""
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else str(step))
    return text


def damaged(data: object, path: tuple[object, ...], value: object, delete: bool) -> str:
    data = copy.deepcopy(data)
    parent: Any = data
    for step in path[:-1]:
        parent = parent[step]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = INFINITE if value == "1e400" else value
    return json.dumps(data).replace(json.dumps(INFINITE), "1e400")


def _alarm(signum: int, frame: object) -> None:
    raise TimeoutError("tcap report took more than 5 s: it hangs")


def call(iso: Isolated, argv: list[str]) -> tuple[int, str, str]:
    """tcap.cli.main(argv) in this process, in ``iso``'s work directory: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(5)
    cwd = os.getcwd()
    os.chdir(iso.work)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        os.chdir(cwd)
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return code, out.getvalue(), err.getvalue()


def strict_json(text: str) -> object:
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} in tcap's JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("earlier", [False, True], ids=["packed samples", "rows of an earlier tcap"])
def test_every_field_of_a_real_report_damaged_is_merged_or_one_line(iso: Isolated, real_report: dict[str, Any],
                                                                    earlier: bool) -> None:
    """Each field deleted, or set to null, a string, a list, an object, a
    boolean, -1, a huge integer, 1e400: tcap report merges it (0, or 1 for the
    violation the report holds), writing strict JSON, or exits 2 with one line
    naming the file and the field; never 125, never a traceback. The same for
    the report with its samples as an earlier tcap wrote them."""
    report = as_earlier(real_report) if earlier else real_report
    source = iso.work / "r.json"
    out = iso.work / "merged.json"
    tried = refused = 0
    for path in fields(report):
        for value, delete in [(None, True), *((value, False) for value in DAMAGE)]:
            source.write_text(damaged(report, path, value, delete))
            out.unlink(missing_ok=True)
            code, stdout, stderr = call(iso, ["report", "--json", "merged.json", "r.json"])
            case = (name(path), "deleted" if delete else value, code, stderr)
            tried += 1
            if code == 2:
                refused += 1
                assert stderr.count("\n") == 1 and stderr.startswith("tcap: error: r.json: "), case
                assert name(path) in stderr or (delete and name(path[:-1]) in stderr), case
                assert stdout == "" and not out.exists(), case
            else:
                assert code in (0, 1), case
                assert stderr == "" and stdout.splitlines()[-1].startswith("verdict: 1 report from 1 node: "), case
                assert "\x1b" not in stdout
                strict_json(out.read_text())
    assert tried > 500 and 0 < refused < tried, (tried, refused)


@pytest.mark.parametrize("text", [
    "[" * 100_000 + "]" * 100_000,
    '{"processes": [], "verdict": "v", "launch": ' * 50_000 + "{}" + "}" * 50_000,
    '{"processes": [], "verdict": "v", "launch": {"host": "h", "rank": null, "node_cpus": 2, "budget_samples": '
    + "[" * 100_000 + "]" * 100_000 + "}}",
], ids=["deep list", "deep objects", "deep samples"])
def test_deeply_nested_json_is_one_line_and_exit_2(iso: Isolated, text: str) -> None:
    (iso.work / "deep.json").write_text(text)
    line = iso.error_line(iso.run("report", "deep.json", timeout=HANG), 2)
    assert "deep.json" in line and ("nested too deeply" in line or "budget_samples" in line), line


@pytest.mark.parametrize(("content", "field"), [
    ('{"processes": [{"pid": "7"}], "verdict": "v", "launch": {}}', "processes[0]"),
    ('{"processes": [], "verdict": "v", "launch": {"host": "h", "rank": null, "node_cpus": 2, '
     '"budget_samples": [[1, 2, 3], [2, 1e400, 0]]}}', "launch.budget_samples[1][1]"),
    ('{"processes": [], "verdict": "v", "launch": {"host": "h", "rank": null, "node_cpus": 2, '
     '"budget_samples": [[1e400, 2, 3]]}}', "launch.budget_samples[0][0]"),
    ('{"processes": [], "verdict": "v", "launch": {"host": 5, "rank": null, "node_cpus": 2, '
     '"budget_samples": []}}', "launch.host"),
    ('{"processes": [], "verdict": "v", "launch": {"host": "h", "rank": null, "node_cpus": 2, '
     '"budget_samples": [' + ", ".join(["[1, 0, 0]"] * 4097) + "]}}", "launch.budget_samples: 4097 samples"),
], ids=["pid", "threads", "time", "host", "too many samples"])
def test_a_bad_field_is_named(iso: Isolated, content: str, field: str) -> None:
    (iso.work / "r.json").write_text(content)
    line = iso.error_line(iso.run("report", "r.json", timeout=HANG), 2)
    assert line.startswith(f"tcap: error: r.json: {field}"), line


def packed_column(typecode: str, values: list[int]) -> str:
    column = array(typecode, values)
    if sys.byteorder == "big":
        column.byteswap()
    return packed_bytes(column.tobytes())


def packed_bytes(data: bytes) -> str:
    return base64.b64encode(zlib.compress(data)).decode()


#: Three samples as tcap writes them (a change at each), and each of their
#: columns damaged: (what, the field, the value, the start of the message).
PACKED = supervise.pack_samples([[1_800_000_000_000, 2, 1], [1_800_000_000_500, 0, 0], [1_800_000_001_000, 4, 2]])
TIMES = [1_800_000_000_000, 1_800_000_000_500, 1_800_000_001_000]
AT = "launch.budget_samples."
PACKED_DAMAGE = [
    ("another encoding", "encoding", "int64-le-base64", AT + "encoding: expected"),
    ("no encoding", "encoding", "(deleted)", AT + "encoding: missing"),
    ("a null encoding", "encoding", None, AT + "encoding: expected"),
    ("not base64", "threads", "AAAA*AAA", AT + "threads: not base64"),
    ("bad padding", "time_ms", "AAAAA", AT + "time_ms: not base64"),
    ("padding inside", "time_ms", "AA==AAAA", AT + "time_ms: not base64"),
    ("not ASCII", "processes", "AAAA\u00e9AAA", AT + "processes: not base64"),
    ("a number", "time_ms", 17, AT + "time_ms: expected a string (base64)"),
    ("a list", "threads", [2, 0, 4], AT + "threads: expected a string (base64)"),
    ("null", "changes", None, AT + "changes: expected a string (base64)"),
    ("missing", "processes", "(deleted)", AT + "processes: missing"),
    ("empty", "threads", "", AT + "threads: not base64 of zlib data (cut short)"),
    ("not compressed", "time_ms", base64.b64encode(b"\x01" * 24).decode(), AT + "time_ms: not base64 of zlib data "
     "(Error -3"),
    ("cut short", "time_ms", base64.b64encode(zlib.compress(b"\x01" * 24)[:-3]).decode(),
     AT + "time_ms: not base64 of zlib data (cut short)"),
    ("more after its end", "threads", base64.b64encode(zlib.compress(b"\0" * 12) + b"more").decode(),
     AT + "threads: not base64 of zlib data (more after its end)"),
    ("a zlib bomb", "processes", packed_bytes(b"\0" * (8 << 20)), AT + "processes: more than the 16384 bytes of "
     "the 4096 samples tcap writes"),
    ("part of a value", "time_ms", packed_bytes(b"\x01" * 20), AT + "time_ms: 20 bytes, not a whole number of "
     "64-bit integers"),
    ("a value short", "threads", packed_column("i", [2, 0]), AT + "threads: 2 values, where changes has 3"),
    ("a value more", "processes", packed_column("i", [1, 0, 2, 2]), AT + "processes: 4 values, where changes has 3"),
    ("no times", "time_ms", packed_column("q", []), AT + "changes[0]: 0, not the index of one of the 0 samples"),
    ("a change beyond the samples", "changes", packed_column("i", [0, 1, 3]), AT + "changes[2]: 3, not the index "
     "of one of the 3 samples of time_ms"),
    ("a negative change", "changes", packed_column("i", [-1, 1, 2]), AT + "changes[0]: -1, expected an integer"),
    ("changes out of order", "changes", packed_column("i", [0, 2, 1]), AT + "changes[2]: 1, not after the one "
     "before (2)"),
    ("a change twice", "changes", packed_column("i", [0, 1, 1]), AT + "changes[2]: 1, not after the one before"),
    ("negative threads", "threads", packed_column("i", [2, -1, 4]), AT + "threads[1]: -1, expected an integer from "
     "0 to 1073741823"),
    ("huge processes", "processes", packed_column("i", [1, 0, 1 << 30]), AT + "processes[2]: 1073741824, expected"),
    ("negative time", "time_ms", packed_column("q", [-1, *TIMES[1:]]), AT + "time_ms[0]: -1, expected milliseconds "
     "from 0 to 100000000000000"),
    ("time beyond the bound", "time_ms", packed_column("q", [*TIMES[:2], 10**14 + 1]),
     AT + "time_ms[2]: 100000000000001, expected"),
    ("time of 2**62", "time_ms", packed_column("q", [*TIMES[:2], 1 << 62]), AT + "time_ms[2]: "),
    ("times out of order", "time_ms", packed_column("q", [TIMES[0], TIMES[2], TIMES[1]]),
     AT + "time_ms[2]: 1800000000500, not after the one before (1800000001000)"),
    ("a time twice", "time_ms", packed_column("q", [TIMES[0], TIMES[0], TIMES[2]]),
     AT + "time_ms[1]: 1800000000000, not after the one before"),
    ("too many samples", "time_ms", packed_column("q", list(range(4097))), AT + "time_ms: more than the 32768 bytes "
     "of the 4096 samples tcap writes"),
    ("too long", "threads", base64.b64encode(os.urandom(17000) * 2).decode(), AT + "threads: 45336 characters, more "
     "than the 21952 of the 4096 samples tcap writes"),
]


@pytest.mark.parametrize(("field", "value", "message"), [case[1:] for case in PACKED_DAMAGE],
                         ids=[case[0] for case in PACKED_DAMAGE])
def test_damaged_packed_samples_are_named(iso: Isolated, field: str, value: object, message: str) -> None:
    """The real tcap on a report whose packed samples are damaged: exit 2
    and one line naming the file and the column (the value, where one is
    out of its range or order)."""
    samples: dict[str, object] = dict(PACKED)
    if value == "(deleted)":
        del samples[field]
    else:
        samples[field] = value
    launch = {"host": "h", "rank": None, "node_cpus": 2, "budget_samples": samples}
    (iso.work / "r.json").write_text(json.dumps({"processes": [], "verdict": "v", "launch": launch}))
    line = iso.error_line(iso.run("report", "r.json", timeout=HANG), 2)
    assert line.startswith(f"tcap: error: r.json: {message}"), line


def test_the_most_samples_a_launch_keeps_are_read(iso: Isolated) -> None:
    """Budget.KEPT samples (the longest columns accepted) merge; a report
    without samples too."""
    rows = [[1_800_000_000_000 + 500 * step, 8 * (step % 7 == 0), step % 7 == 0] for step in range(4096)]
    full = {"host": "h", "rank": None, "node_cpus": 2, "budget_samples": supervise.pack_samples(rows)}
    empty = {"host": "h", "rank": None, "node_cpus": 2, "budget_samples": supervise.pack_samples([])}
    for name, launch in (("full.json", full), ("empty.json", empty)):
        (iso.work / name).write_text(json.dumps({"processes": [], "verdict": "v", "launch": launch}))
    result = iso.run("report", "--json", "m.json", "full.json", "empty.json", timeout=HANG)
    assert result.returncode == 0, result.stderr
    budget = strict_json((iso.work / "m.json").read_text())["nodes"][0]["budget"]  # type: ignore[index]
    assert (budget["peak_pool_threads"], budget["longest_over_seconds"], budget["violated"]) == (8, 0, False)


def test_pack_samples_writes_what_tcap_report_reads() -> None:
    """Out of order (a clock set back), a time twice (the last one counts),
    values beyond the bounds: packed in time order, each time once, within
    the bounds; read back as they were packed."""
    packed = supervise.pack_samples([[3000, 1, 1], [1000, 2, 1], [3000, 5, 2], [-7, 1 << 40, 0], [10**20, 0, 0]])
    assert unpacked(packed) == [[0, (1 << 30) - 1, 0], [1000, 2, 1], [3000, 5, 2], [10**14, 0, 0]]
    samples = reports._samples(json.loads(json.dumps(packed)), "budget_samples")
    assert list(samples.times) == [0, 1000, 3000, 10**14]
    assert (list(samples.at), list(samples.threads), list(samples.processes)) == (
        [0, 1000, 3000, 10**14], [(1 << 30) - 1, 2 - (1 << 30) + 1, 3, -5], [0, 1, 1, -2])
    assert samples.last == (0, 0)


def test_packed_and_earlier_rows_read_the_same() -> None:
    """Random samples packed and as the rows of an earlier tcap (seconds,
    unsorted, times twice): the same samples, the same merged budget."""
    rng = random.Random(23)
    for _ in range(300):
        rows = [[1_800_000_000_000 + 500 * rng.randint(0, 30) + rng.choice([0, 1, 7]), rng.randint(0, 4),
                 rng.randint(0, 2)] for _ in range(rng.randint(0, 40))]
        packed = reports._samples(json.loads(json.dumps(supervise.pack_samples(rows))), "p")
        earlier = reports._samples([[when / 1000, threads, processes] for when, threads, processes in rows], "r")
        for name in ("times", "at", "threads", "processes", "last"):
            assert getattr(packed, name) == getattr(earlier, name), (name, rows)


def test_a_report_of_an_earlier_tcap_merges_as_its_packed_form(iso: Isolated, real_report: dict[str, Any]) -> None:
    """The real report and the same with its samples as rows, each merged
    with a second launch that overlaps it (over the node's CPUs for a
    while): the same merged budget and verdict."""
    samples = unpacked(real_report["launch"]["budget_samples"])
    start, end = samples[0][0], samples[-1][0]
    other = copy.deepcopy(real_report)
    other["launch"]["node_cpus"] = 2
    other["launch"]["budget_samples"] = supervise.pack_samples(
        [[when, 3, 2] for when in range(start - 250, end + 3000, 250)])
    (iso.work / "other.json").write_text(json.dumps(other))
    merged = []
    for name, data in (("packed.json", real_report), ("rows.json", as_earlier(real_report))):
        (iso.work / name).write_text(json.dumps(data))
        result = iso.run("report", "--json", "m.json", name, "other.json", timeout=HANG)
        assert result.returncode == 1, result.stderr
        out: Any = strict_json((iso.work / "m.json").read_text())
        merged.append((out["nodes"][0]["budget"], out["verdict"]))
    assert merged[0] == merged[1]
    assert merged[0][0]["violated"] and merged[0][0]["longest_over_seconds"] > 2, merged


# --- files that are not reports -----------------------------------------------------------------


def test_a_fifo_is_refused_without_waiting_for_a_writer(iso: Isolated) -> None:
    os.mkfifo(iso.work / "r.json")
    line = iso.error_line(iso.run("report", "r.json", timeout=HANG), 2)
    assert "r.json" in line and "FIFO" in line, line


def test_a_directory_and_a_device_are_refused(iso: Isolated) -> None:
    (iso.work / "dir.json").mkdir()
    assert "directory" in iso.error_line(iso.run("report", "dir.json", timeout=HANG), 2)
    assert "device" in iso.error_line(iso.run("report", "/dev/zero", timeout=HANG), 2)


def test_a_huge_report_is_refused_before_it_is_read(iso: Isolated) -> None:
    huge = iso.work / "huge.json"
    with open(huge, "wb") as f:
        f.truncate(3 << 30)  # sparse: 3 GiB that would take seconds and gigabytes to read
    result = iso.run("report", "huge.json", timeout=HANG)
    assert "larger than tcap's limit of 64 MiB" in iso.error_line(result, 2)


def test_a_missing_report_is_2(iso: Isolated) -> None:
    assert "cannot read report: No such file" in iso.error_line(iso.run("report", "nothing.json", timeout=HANG), 2)


# --- --json: never an input, written atomically -------------------------------------------------


@pytest.fixture
def small_report(iso: Isolated, real_report: dict[str, Any]) -> Path:
    path = iso.work / "in.json"
    path.write_text(json.dumps(real_report))
    return path


@pytest.mark.parametrize("alias", ["same", "hardlink", "symlink"])
def test_json_onto_one_of_its_inputs_is_refused_before_anything_is_written(iso: Isolated, small_report: Path,
                                                                           alias: str) -> None:
    out = "in.json"
    if alias == "hardlink":
        os.link(small_report, iso.work / "other.json")
        out = "other.json"
    elif alias == "symlink":
        (iso.work / "other.json").symlink_to("in.json")
        out = "other.json"
    before = small_report.read_bytes()
    result = iso.run("report", "--json", out, "in.json", "in.json", timeout=HANG)
    assert "one of the reports it merges" in iso.error_line(result, 2) or "a report it merges" in result.stderr
    assert result.stdout == ""
    assert small_report.read_bytes() == before
    assert sorted(p.name for p in iso.work.iterdir()) == sorted({"in.json", "other.json"} & {out, "in.json"})


def test_json_replaces_a_symlink_instead_of_following_it(iso: Isolated, small_report: Path) -> None:
    victim = iso.root / "victim.txt"
    victim.write_text("precious\n")
    (iso.work / "m.json").symlink_to(victim)
    result = iso.run("report", "--json", "m.json", "in.json", timeout=HANG)
    assert result.returncode == 1, result.stderr  # the report's violation
    assert victim.read_text() == "precious\n"
    assert not (iso.work / "m.json").is_symlink()
    assert strict_json((iso.work / "m.json").read_text())["verdict"].startswith("1 report from 1 node")  # type: ignore[index]


@pytest.mark.parametrize("what", ["fifo", "directory"])
def test_json_onto_a_fifo_or_directory_is_2_before_reading(iso: Isolated, small_report: Path, what: str) -> None:
    target = iso.work / "m.json"
    os.mkfifo(target) if what == "fifo" else target.mkdir()
    line = iso.error_line(iso.run("report", "--json", "m.json", "in.json", timeout=HANG), 2)
    assert "m.json" in line and "--json" in line, line


def test_json_into_a_missing_directory_is_74(iso: Isolated, small_report: Path) -> None:
    result = iso.run("report", "--json", "nowhere/m.json", "in.json", timeout=HANG)
    assert "No such file or directory" in iso.error_line(result, EXIT_IO)
    assert result.stdout == ""


# --- the report on stdout -----------------------------------------------------------------------


def test_the_report_goes_to_stdout_without_prefixes(iso: Isolated, small_report: Path) -> None:
    result = iso.run("report", "in.json", "in.json", timeout=HANG)
    assert result.returncode == 1 and result.stderr == "", result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"node \S+: 2 launches, 2 processes", lines[0]), lines
    assert lines[1].startswith("RANK ") and "STATUS" in lines[1]
    assert any(line.startswith("hazard: numpy's OpenBLAS") for line in lines), lines
    assert lines[-1].startswith("verdict: 2 reports from 1 node: 2 processes, 2 verified, 0 unverified, 2 violations")
    assert not any(line.startswith("tcap:") for line in lines)


def test_control_characters_in_a_report_never_reach_the_terminal(iso: Isolated, real_report: dict[str, Any]) -> None:
    data = copy.deepcopy(real_report)
    data["launch"]["host"] = "node\x1b[2J\rfake"
    data["processes"][0]["command"] = "python\x1b]0;owned\x07 x.py"
    data["processes"][0]["pools"][0]["name"] = "open\rblas"
    data["processes"][0]["hazards"][0]["what"] = "bad\nverdict: all fine"
    (iso.work / "r.json").write_text(json.dumps(data))
    result = iso.run("report", "r.json", timeout=HANG)
    assert result.returncode == 1, result.stderr
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", result.stdout), result.stdout
    assert "node\\x1b[2J\\rfake" in result.stdout
    assert [line for line in result.stdout.splitlines() if line.startswith("verdict:")] == [
        result.stdout.splitlines()[-1]]


# --- --report-json: checked before the command starts, written atomically -----------------------


MARK = "import pathlib; pathlib.Path('ran').write_text('yes')"


@pytest.mark.parametrize(("destination", "code", "words"), [
    ("nowhere/r.json", EXIT_IO, "No such file or directory"),
    ("fifo.json", 2, "FIFO"),
    ("dir.json", 2, "directory"),
], ids=["missing directory", "fifo", "directory"])
def test_an_unwritable_report_json_stops_the_launch_before_the_command(iso: Isolated, destination: str, code: int,
                                                                       words: str) -> None:
    os.mkfifo(iso.work / "fifo.json")
    (iso.work / "dir.json").mkdir()
    result = iso.run("run", "--report-json", destination, "--", PYTHON, "-c", MARK, timeout=HANG)
    line = iso.error_line(result, code)
    assert "--report-json" in line and destination in line and words in line, line
    assert not (iso.work / "ran").exists()


def test_report_json_placeholders_are_expanded_before_the_check(iso: Isolated) -> None:
    result = iso.run("run", "--report-json", "{host}/r-{rank}.json", "--", PYTHON, "-c", MARK, timeout=HANG)
    line = iso.error_line(result, EXIT_IO)
    assert "{host}" not in line and re.search(r"[^/ ]+/r-0\.json: cannot write --report-json", line), line
    assert not (iso.work / "ran").exists()


def test_report_json_replaces_a_symlink_instead_of_following_it(iso: Isolated) -> None:
    victim = iso.root / "victim.txt"
    victim.write_text("precious\n")
    (iso.work / "r.json").symlink_to(victim)
    result = iso.run("run", "--report-json", "r.json", "--", PYTHON, "-c", MARK, timeout=HANG)
    assert result.returncode == 0, result.stderr
    assert victim.read_text() == "precious\n"
    assert not (iso.work / "r.json").is_symlink()
    assert strict_json((iso.work / "r.json").read_text())["exit_code"] == 0  # type: ignore[index]


def test_report_json_follows_the_umask(iso: Isolated) -> None:
    result = subprocess.run(["sh", "-c", 'umask 077 && exec "$0" "$@"', str(Path(PYTHON).parent / "tcap"), "run",
                             "--report-json", "r.json", "--", PYTHON, "-c", "pass"], env=iso.env, cwd=iso.work,
                            capture_output=True, text=True, timeout=HANG)
    assert result.returncode == 0, result.stderr
    assert (iso.work / "r.json").stat().st_mode & 0o777 == 0o600


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (root only); skipped where it cannot be mounted."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True,
                          text=True, timeout=HANG)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=HANG)


def fill(directory: Path) -> None:
    """Fill the filesystem of ``directory`` up to the last block."""
    with open(directory / "filler", "wb", buffering=0) as f:
        for size in (4096, 512, 1):
            try:
                while True:
                    f.write(b"x" * size)
                    f.flush()
            except OSError:
                pass


def test_a_full_disk_leaves_the_old_report_json_whole(iso: Isolated, tiny_fs: Path) -> None:
    """The destination is checked before the start (a new empty file can be
    made), the run fills nothing, the write fails after the run: exit 74 and
    the previous report as it was."""
    old = tiny_fs / "r.json"
    old.write_text(json.dumps({"old": "report", "pad": "x" * 8000}))
    before = old.read_bytes()
    fill(tiny_fs)
    result = iso.run("run", "--report-json", str(old), "--", PYTHON, "-c", "print('ran')", timeout=HANG)
    assert result.stdout == "ran\n"
    assert "No space left on device" in iso.error_line(result, EXIT_IO)
    assert old.read_bytes() == before
    assert sorted(p.name for p in tiny_fs.iterdir()) == ["filler", "r.json"]  # no temporary left


def test_a_full_disk_leaves_the_old_merged_json_whole(iso: Isolated, small_report: Path, tiny_fs: Path) -> None:
    old = tiny_fs / "m.json"
    old.write_text(json.dumps({"old": "merge", "pad": "x" * 8000}))
    before = old.read_bytes()
    fill(tiny_fs)
    result = iso.run("report", "--json", str(old), "in.json", timeout=HANG)
    assert "No space left on device" in iso.error_line(result, EXIT_IO)
    assert old.read_bytes() == before and result.stdout == ""
    assert sorted(p.name for p in tiny_fs.iterdir()) == ["filler", "m.json"]


# --- shared directories, real users -------------------------------------------------------------


def plant_symlink(user: User, link: Path, target: Path) -> None:
    subprocess.run(user.as_user("ln", "-s", str(target), str(link)), check=True, env=user.env(), timeout=HANG)
    assert os.lstat(link).st_uid == user.uid


def test_a_symlink_planted_in_a_sticky_directory_is_refused_before_the_command(users: tuple[User, ...],
                                                                                shared_tmp: Path) -> None:
    """ben points ``/tmp/…/r.json`` at ana's file; ana's --report-json there:
    in a sticky directory only ben may replace his symlink, so ana's launch
    stops before her command runs (74), and her file is as it was."""
    ana, ben, _ = users
    victim = ana.home / "victim.txt"
    subprocess.run(ana.as_user("sh", "-c", f"echo precious > {victim}"), check=True, env=ana.env(), timeout=HANG)
    link = shared_tmp / "r.json"
    plant_symlink(ben, link, victim)
    marker = shared_tmp / "ran"
    result = ana.tcap("run", "--report-json", str(link), "--", "/usr/bin/python3", "-c",
                      f"open({str(marker)!r}, 'w').write('yes')", timeout=HANG, cwd=str(shared_tmp))
    assert result.returncode == EXIT_IO and result.stderr.count("\n") == 1, result.stderr
    assert "sticky directory" in result.stderr and str(link) in result.stderr, result.stderr
    assert not marker.exists()
    assert victim.read_text() == "precious\n" and os.stat(victim).st_uid == ana.uid
    assert os.readlink(link) == str(victim)


def test_root_replaces_a_planted_symlink_and_leaves_its_target_alone(users: tuple[User, ...],
                                                                      shared_tmp: Path) -> None:
    """Root may replace ben's symlink in the sticky directory: it does, rather
    than follow it into ana's file."""
    ana, ben, _ = users
    victim = ana.home / "victim.txt"
    subprocess.run(ana.as_user("sh", "-c", f"echo precious > {victim}"), check=True, env=ana.env(), timeout=HANG)
    link = shared_tmp / "r.json"
    plant_symlink(ben, link, victim)
    iso = Isolated(shared_tmp / "root")
    result = iso.run("run", "--report-json", str(link), "--", PYTHON, "-c", "pass", timeout=HANG)
    assert result.returncode == 0, result.stderr
    assert victim.read_text() == "precious\n" and os.stat(victim).st_uid == ana.uid
    assert not link.is_symlink() and link.stat().st_uid == 0
    assert strict_json(link.read_text())["exit_code"] == 0  # type: ignore[index]


def test_a_symlink_in_a_shared_directory_without_sticky_bit_is_replaced(users: tuple[User, ...],
                                                                         shared_tmp: Path) -> None:
    """In a directory everyone may write without the sticky bit, ana's
    report replaces ben's symlink: her report is hers, his target unchanged."""
    ana, ben, _ = users
    shared = shared_tmp / "open"
    shared.mkdir()
    shared.chmod(0o777)
    victim = ben.home / "victim.txt"
    subprocess.run(ben.as_user("sh", "-c", f"echo precious > {victim}"), check=True, env=ben.env(), timeout=HANG)
    link = shared / "r.json"
    plant_symlink(ben, link, victim)
    result = ana.tcap("run", "--report-json", str(link), "--", "/usr/bin/python3", "-c", "pass", timeout=HANG,
                      cwd=str(shared))
    assert result.returncode == 0, result.stderr
    assert victim.read_text() == "precious\n" and os.stat(victim).st_uid == ben.uid
    assert not link.is_symlink() and link.stat().st_uid == ana.uid
    assert strict_json(link.read_text())["exit_code"] == 0  # type: ignore[index]


def test_merged_json_into_a_directory_the_user_cannot_write_leaves_the_old_file(users: tuple[User, ...],
                                                                                 shared_tmp: Path) -> None:
    """ana may write m.json but not its directory (root's, 0755): an atomic
    write cannot happen there, so nothing is written (74 before a report is
    read), where an in-place write would have overwritten the file."""
    ana, _, _ = users
    directory = shared_tmp / "ro"
    directory.mkdir()
    directory.chmod(0o755)
    old = directory / "m.json"
    old.write_text('{"old": "merge"}\n')
    os.chown(old, ana.uid, ana.gid)
    report = shared_tmp / "in.json"
    report.write_text('{"processes": [], "verdict": "v", "launch": {"host": "h", "rank": null, "node_cpus": 2, '
                      '"budget_samples": [[1.0, 0, 0]]}}')
    report.chmod(0o644)
    result = ana.tcap("report", "--json", str(old), str(report), timeout=HANG)
    assert result.returncode == EXIT_IO and result.stderr.count("\n") == 1, result.stderr
    assert "Permission denied" in result.stderr and result.stdout == ""
    assert old.read_text() == '{"old": "merge"}\n' and list(directory.iterdir()) == [old]


# --- probe records a child garbles --------------------------------------------------------------

GARBLE = r"""
import json, os, sys, time
d = os.environ["TCAP_REPORT_DIR"]
me = os.getpid()
def put(name, text):
    with open(os.path.join(d, name), "w") as f:
        f.write(text)
put(f"{me}.json", json.dumps({"pid": me, "pools": "many", "violations": [{"threads": 1e999}]}))
put(f"{me + 1}.json", "[" * 100000)
put("\u00b2\u00b3.json", json.dumps({"pid": 23}))
put(f"{me + 2}.json", json.dumps({"pid": me + 2, "argv": [1, 2], "hazards": [None]}))
put(f"{me + 3}.json", json.dumps({"pid": me + 3, "enforced": [{"at": 1e999}]}))
os.mkfifo(os.path.join(d, f"{me + 4}.json"))
os.symlink("/etc/passwd", os.path.join(d, f"{me + 5}.json"))
with open(os.path.join(d, f"{me + 6}.json"), "wb") as f:
    f.truncate(1 << 30)
x = 0
for _ in range(3_000_000):  # busy for a while: the sampler reads this process's record
    x += 1
sys.exit(3)
"""


def test_garbled_probe_records_cannot_crash_or_hang_the_supervisor(iso: Isolated) -> None:
    """The child (isolated Python: no probe of its own) writes a record of
    the wrong shape under its pid, deep JSON, a non-ASCII digit name, a FIFO,
    a symlink and a 1 GiB sparse file into the report directory: tcap exits
    with the child's code, lists the child as unverified, writes its report."""
    (iso.work / "garble.py").write_text(GARBLE)
    result = iso.run("run", "--report", "--report-json", "r.json", "--", PYTHON, "-I", "garble.py", timeout=60)
    assert result.returncode == 3, result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    data = strict_json((iso.work / "r.json").read_text())
    assert isinstance(data, dict)
    assert [p["status"] for p in data["processes"]] == ["unverified"], data["processes"]


def test_every_field_of_a_real_probe_record_damaged_is_taken_or_skipped(iso: Isolated) -> None:
    """A real probe record (copied by its own process), each field damaged
    as above: read_records takes it, checked, or skips it; merge, summarize
    and the table then work on what it took."""
    copy_out = ("import numpy, os, shutil, time; a = numpy.ones((100, 100)); a @ a; time.sleep(1); "
                "shutil.copy(os.path.join(os.environ['TCAP_REPORT_DIR'], f'{os.getpid()}.json'), 'record.json')")
    result = iso.run("run", "--threads", "1", "--report", "--", PYTHON, "-c", copy_out, timeout=120)
    assert result.returncode == 0, result.stderr
    record = json.loads((iso.work / "record.json").read_text())
    assert record["pools"] and record["pid"] and record["share"]["samples"], record
    record["hazards"].append(dict(HAZARD))
    record["violations"].append({"internal_api": "openblas", "user_api": "blas", "filepath": None, "threads": 2,
                                 "cap": 1, "at": 1.5, "reason": "check"})
    record["enforced"].append({"internal_api": "openblas", "filepath": None, "from": 2, "to": 1, "at": 1.5})
    directory = iso.work / "records"
    directory.mkdir()
    pid = record["pid"]
    taken = skipped = 0
    for path in fields(record):
        for value, delete in [(None, True), *((value, False) for value in DAMAGE)]:
            (directory / f"{pid}.json").write_text(damaged(record, path, value, delete))
            records = supervise.read_records(str(directory))
            if records:
                taken += 1
                processes = supervise.merge(records, {}, first=pid)
                summary = supervise.summarize(processes, None, 0)
                supervise.table(processes)
                supervise.findings(summary)
                strict_json(supervise.report_text({"processes": processes, **summary}))
            else:
                skipped += 1
    assert taken and skipped, (taken, skipped)


# --- the merged budget is its definition ----------------------------------------------------------


def budget_by_definition(cpus: int | None, series: list[list[list[int]]]) -> dict[str, Any]:
    """At each sample time of any launch, each launch counts with its latest
    sample from its first to its last (a launch's samples in time order, the
    last of equal times); Budget.add at each (in milliseconds)."""
    launches = []
    for rows in series:
        kept: dict[float, list[float]] = {}
        for row in sorted(rows, key=lambda row: row[0]):
            kept[row[0]] = row
        launches.append(list(kept.values()))
    budget = supervise.Budget(cpus)
    for when in sorted({row[0] for rows in launches for row in rows}):
        threads = processes = 0
        for rows in launches:
            if rows and rows[0][0] <= when <= rows[-1][0]:
                latest = [row for row in rows if row[0] <= when][-1]
                threads += int(latest[1])
                processes += int(latest[2])
        budget.add(when, threads, processes)
    budget.longest /= 1000
    return budget.result()


@pytest.mark.parametrize("window", [(1 << 18, 1 << 16, 64), (8, 8, 2), (1, 1, 1), (4, 1, 1), (1, 4, 2)],
                         ids=["default", "small windows", "one by one", "changes a few", "times a few"])
def test_the_merged_budget_is_its_definition(monkeypatch: pytest.MonkeyPatch, window: tuple[int, int, int]) -> None:
    """Random launches (ties across and within launches, samples out of
    order, launches ending where others sample, over and under the CPUs)
    merged by the sweep and by the definition: the same budget."""
    monkeypatch.setattr(reports, "CHANGES", window[0])
    monkeypatch.setattr(reports, "WINDOW", window[1])
    monkeypatch.setattr(reports, "STRIDE", window[2])
    rng = random.Random(17)
    for _ in range(1500):
        series = []
        for _ in range(rng.randint(0, 6)):
            base = rng.choice([0, 10_000, rng.randint(0, 5000)])
            series.append([[base + rng.choice([0, 500, 1000, 1500, 2000, 2500, rng.randint(0, 6000)]),
                            rng.randint(0, 5), rng.randint(0, 3)] for _ in range(rng.randint(0, 12))])
        cpus = rng.choice([None, 0, 1, 2, 4])
        merged = reports.merged_budget(cpus, [reports.Samples.rows(*zip(*rows)) if rows else
                                             reports.Samples.rows((), (), ()) for rows in series])
        assert merged.result() == budget_by_definition(cpus, series), (cpus, series)

"""``tcap sweep`` end to end: the installed ``tcap`` measuring real programs.

The programs make their own speed depend on the configuration they run
under (they sleep ``k * OMP_NUM_THREADS`` seconds), so which configuration
wins is known in advance and does not depend on how loaded the machine is:
the gap between two configurations is always larger than the noise of a
Python start-up. The measured columns are checked against what the program
is known to do (CPU it burns, threads it starts, memory it touches).
"""

from __future__ import annotations

import collections
import json
import os
import re
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest

import tcap
from conftest import PYTHON, Isolated

PROGRESS = re.compile(
    r"^tcap sweep: \[(\d+)/(\d+)\] round (\d+): (.+?): (?:(\d+\.\d{3}) s|FAILED \(exit (\d+)\)(?:: .*)?)$"
)
HEADER = ["CONFIGURATION", "WALL s median (min-max)", "CPU s", "PEAK RSS MB", "PEAK THREADS", "RUNS"]

# Sleeps 0.4 s per OpenMP thread: the fewer threads, the faster.
SLEEPY = """
import os, time
time.sleep(0.4 * int(os.environ["OMP_NUM_THREADS"]))
"""

# A program whose every measured column is known: 0.2 s of CPU in itself and
# 0.2 s in a child process it waits for (the tree's CPU time is >= 0.4 s),
# 200 MB touched, 6 threads alive for 0.4 s.
SHAPED = """
import os, subprocess, sys, threading, time

BURN = "import time\\nend = time.process_time() + 0.2\\nwhile time.process_time() < end: pass\\n"
child = subprocess.Popen([sys.executable, "-c", BURN])
exec(BURN)
child.wait()
ballast = b"\\1" * (200 << 20)
threads = [threading.Thread(target=time.sleep, args=(0.4,)) for _ in range(5)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
"""


def sweep(iso: Isolated, *args: str, program: str, name: str = "prog.py", timeout: float = 60):  # type: ignore[no-untyped-def]
    """``tcap sweep ARGS -- python NAME`` with ``program`` written to NAME."""
    (iso.work / name).write_text(program)
    return iso.run("sweep", *args, "--", PYTHON, name, timeout=timeout)


def progress(stderr: str) -> list[tuple[int, int, int, str, float | None, int | None]]:
    """The progress lines: (done, total, round, label, wall or None, exit code or None)."""
    found = []
    for line in stderr.splitlines():
        match = PROGRESS.match(line)
        if match:
            done, total, round_number, label, wall, code = match.groups()
            found.append((
                int(done), int(total), int(round_number), label,
                None if wall is None else float(wall), None if code is None else int(code),
            ))
    return found


def table_rows(stdout: str) -> tuple[list[dict[str, str]], str]:
    """The rows of the ranked table (mark, label and the columns) and the verdict line."""
    lines = stdout.rstrip("\n").split("\n")
    header, *rows, verdict = lines
    assert re.split(r"\s{2,}", header.strip()) == HEADER, header
    parsed = []
    for line in rows:
        mark, rest = line[0], line[1:]
        assert rest.startswith("  "), line
        cells = re.split(r"\s{2,}", rest.strip())
        assert len(cells) == len(HEADER), line
        parsed.append({"mark": mark.strip(), **dict(zip(HEADER, cells))})
    return parsed, verdict


def wall_of(row: dict[str, str]) -> tuple[float, float, float]:
    """(median, min, max) from a WALL cell such as ``0.412 (0.401-0.420)``."""
    match = re.fullmatch(r"(\d+\.\d{3}) \((\d+\.\d{3})-(\d+\.\d{3})\)", row["WALL s median (min-max)"])
    assert match, row
    median, low, high = (float(x) for x in match.groups())
    assert low <= median <= high
    return median, low, high


# -- the table ---------------------------------------------------------------


def test_table_ranks_the_faster_configuration_first(iso: Isolated) -> None:
    result = sweep(iso, "--threads", "2,1", "--repeat", "2", program=SLEEPY)
    assert result.returncode == 0, result.stderr
    lines = progress(result.stderr)
    assert len(lines) == 2 * 2 == len(result.stderr.splitlines()), result.stderr
    assert [line[:3] for line in lines] == [(1, 4, 1), (2, 4, 1), (3, 4, 2), (4, 4, 2)]
    # Interleaved: every round runs each configuration once.
    assert sorted(line[3] for line in lines[:2]) == sorted(line[3] for line in lines[2:]) == ["threads=1", "threads=2"]
    assert all(code is None for *_, code in lines)

    rows, verdict = table_rows(result.stdout)
    assert [(row["mark"], row["CONFIGURATION"]) for row in rows] == [("*", "threads=1"), ("", "threads=2")]
    one, two = (wall_of(row) for row in rows)
    assert one[1] >= 0.4 and two[1] >= 0.8  # at least the sleeps
    assert two[0] - one[0] >= 0.2
    walls: dict[str, list[float]] = {"threads=1": [], "threads=2": []}
    for *_, label, wall, _code in lines:
        assert wall is not None
        walls[label].append(wall)
    for (median, low, high), label in ((one, "threads=1"), (two, "threads=2")):
        assert (low, high) == (min(walls[label]), max(walls[label]))
        assert median == pytest.approx(sum(walls[label]) / 2, abs=0.0015)
    for row in rows:
        assert row["RUNS"] == "2/2 ok"
        assert 0 < float(row["CPU s"]) < 0.4  # it sleeps
    assert verdict.startswith("best: threads=1, clearly better than the runner-up (threads=2): ")
    assert verdict.endswith("% faster, ranges do not overlap")


def test_cpu_rss_and_threads_columns(iso: Isolated) -> None:
    result = sweep(iso, "--threads", "1", "--repeat", "1", program=SHAPED)
    assert result.returncode == 0, result.stderr
    (row,), verdict = table_rows(result.stdout)
    assert (row["mark"], row["CONFIGURATION"], row["RUNS"]) == ("*", "threads=1", "1/1 ok")
    assert wall_of(row)[0] >= 0.6  # 0.2 s of CPU, then 0.4 s of sleeping threads
    assert 0.4 <= float(row["CPU s"]) < 5  # the program and the child it waited for
    assert 200 <= float(row["PEAK RSS MB"]) < 400
    assert int(row["PEAK THREADS"]) >= 6  # the main thread and 5 others
    assert verdict == "best: threads=1 (the only configuration that completed)"


def test_overlapping_ranges_are_not_clearly_better(iso: Isolated) -> None:
    # Each configuration's first run is slow and its second fast: whichever
    # wins, its range overlaps the runner-up's.
    program = """
import os, time
mark = "runs-" + os.environ["OMP_NUM_THREADS"]
first = not os.path.exists(mark)
open(mark, "a").close()
time.sleep(0.6 if first else 0.05)
"""
    result = sweep(iso, "--threads", "1,2", "--repeat", "2", program=program)
    assert result.returncode == 0, result.stderr
    rows, verdict = table_rows(result.stdout)
    assert [row["mark"] for row in rows] == ["*", ""]
    assert re.fullmatch(
        r"best: threads=(1|2), not clearly better than the runner-up \(threads=(1|2), \d+\.\d % slower by median\): "
        r"their ranges overlap; more --repeat would tell",
        verdict,
    ), verdict
    best, second = (wall_of(row) for row in rows)
    assert best[0] <= second[0] and best[2] >= second[1]


# -- JSON ----------------------------------------------------------------------


def test_json(iso: Isolated) -> None:
    result = sweep(iso, "--threads", "1,2", "--repeat", "2", "--json", program=SLEEPY)
    assert result.returncode == 0, result.stderr
    assert len(progress(result.stderr)) == 4
    data = json.loads(result.stdout)
    assert data["command"] == [PYTHON, "prog.py"]
    assert data["profile"] == "default"
    assert data["repeat"] == 2
    assert data["interrupted"] is False
    assert data["best"] == {"threads": "1"}
    assert data["failed"] == []
    assert data["verdict"].startswith("best: threads=1, ")
    ranking = data["ranking"]
    assert [entry["config"] for entry in ranking] == [{"threads": "1"}, {"threads": "2"}]
    assert [e["wall_median"] for e in ranking] == sorted(e["wall_median"] for e in ranking)
    for entry, sleep in zip(ranking, (0.4, 0.8)):
        assert entry["runs"] == 2 and entry["failed"] == []
        samples = entry["samples"]
        assert len(samples) == 2
        assert set(samples[0]) == {"wall", "cpu", "peak_rss_mb", "peak_threads", "code", "error"}
        assert [s["code"] for s in samples] == [0, 0]
        walls = sorted(s["wall"] for s in samples)
        assert entry["wall_min"] == walls[0] and entry["wall_max"] == walls[1]
        assert entry["wall_median"] == pytest.approx(sum(walls) / 2)
        assert walls[0] >= sleep
        assert 0 < entry["cpu_median"] < sleep  # it sleeps: far less CPU than wall time
        assert entry["peak_rss_mb"] > 1
        assert entry["peak_threads"] >= 1
    assert ranking[1]["wall_median"] - ranking[0]["wall_median"] >= 0.2


# -- --save --------------------------------------------------------------------


def saved_median(text: str) -> float:
    pattern = r"^# median wall (\d+\.\d{3}) s \(min \d+\.\d{3}, max \d+\.\d{3}\) over 1 run; best: "
    match = re.search(pattern, text, re.M)
    assert match, text
    return float(match.group(1))


def test_save_writes_a_profile_that_extends_the_base(iso: Isolated) -> None:
    iso.write_profile("base", 'description = "the base"\n[env]\nSWEEP_TEST_BASE = "yes"\n')
    result = sweep(iso, "-p", "base", "--threads", "1,2", "--repeat", "1", "--save", "fit", "--json", program=SLEEPY)
    assert result.returncode == 0, result.stderr
    path = iso.user_profiles / "fit.toml"
    assert result.stderr.splitlines()[-1] == f"tcap sweep: saved the winner as profile fit ({path})"
    data = json.loads(result.stdout)
    assert data["best"] == {"threads": "1"}

    text = path.read_text()
    first, command = text.splitlines()[:2]
    assert first.startswith("# Written by tcap sweep on ")
    assert first.endswith(": the fastest of 2 configurations for")
    assert command == f"#   {PYTHON} prog.py"
    assert saved_median(text) == pytest.approx(data["ranking"][0]["wall_median"], abs=0.0006)
    assert "# median wall" in text and "clearly better than the runner-up (threads=2)" in text
    assert re.search(r"^#   then threads=2: median \d+\.\d{3} s$", text, re.M), text
    assert 'extends = "base"' in text.splitlines()

    shown = iso.show_json("-p", "fit")
    assert shown["profile"] == "fit"
    assert shown["caps"]["threads"] == shown["caps"]["openmp"] == shown["caps"]["blas"] == 1
    env = {name: value for name, value, _why in shown["env"]}
    assert env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "1"
    assert env["SWEEP_TEST_BASE"] == "yes"  # from the base profile

    # Saving again under the same name replaces what sweep wrote.
    again = sweep(iso, "-p", "base", "--threads", "3,2", "--repeat", "1", "--save", "fit", program=SLEEPY)
    assert again.returncode == 0, again.stderr
    assert "threads = 2" in path.read_text().splitlines()
    assert iso.show_json("-p", "fit")["caps"]["threads"] == 2
    assert not list(iso.user_profiles.glob("*.tmp"))


def test_save_refuses_a_hand_written_profile_before_any_run(iso: Isolated) -> None:
    hand = "# my own\nthreads = 4\n"
    path = iso.write_profile("mine", hand)
    (iso.work / "prog.py").write_text("open('ran', 'a').close()\n")
    result = iso.run("sweep", "--threads", "1,2", "--save", "mine", "--", PYTHON, "prog.py")
    line = iso.error_line(result, 2)  # the only stderr line: no progress
    assert f"--save mine: {path} exists and was not written by tcap sweep" in line
    assert result.stdout == ""
    assert path.read_text() == hand
    assert not (iso.work / "ran").exists()


@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink to a FIFO"])
def test_save_onto_something_not_a_profile_exits_2_before_any_run(iso: Isolated, kind: str) -> None:
    path = iso.user_profiles / "fit.toml"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        os.mkfifo(iso.work / "fifo")
        path.symlink_to(iso.work / "fifo")
    (iso.work / "prog.py").write_text("open('ran', 'a').close()\n")
    result = iso.run("sweep", "--threads", "1", "--save", "fit", "--", PYTHON, "prog.py", timeout=30)
    assert str(path) in iso.error_line(result, 2)
    assert not (iso.work / "ran").exists()


@pytest.mark.parametrize("name", ["bad/name", "../up", ".hidden", "white space"])
def test_save_invalid_name_exits_2_before_any_run(iso: Isolated, name: str) -> None:
    (iso.work / "prog.py").write_text("open('ran', 'a').close()\n")
    result = iso.run("sweep", "--threads", "1", "--save", name, "--", PYTHON, "prog.py")
    assert f"--save {name!r}: invalid profile name" in iso.error_line(result, 2)
    assert not (iso.work / "ran").exists()


# -- failing runs --------------------------------------------------------------

FAILS_UNDER_2 = """
import os, sys, time
time.sleep(0.05)
sys.exit(3 if os.environ["OMP_NUM_THREADS"] == "2" else 0)
"""


def test_failing_configuration_is_shown_and_excluded(iso: Isolated) -> None:
    result = sweep(iso, "--threads", "1,2", "--repeat", "2", program=FAILS_UNDER_2)
    assert result.returncode == 0, result.stderr
    lines = progress(result.stderr)
    assert len(lines) == 4
    assert sorted((label, code) for *_, label, _wall, code in lines) == [
        ("threads=1", None), ("threads=1", None), ("threads=2", 3), ("threads=2", 3)
    ]
    rows, verdict = table_rows(result.stdout)
    assert [(row["mark"], row["CONFIGURATION"]) for row in rows] == [("*", "threads=1"), ("x", "threads=2")]
    failed = rows[1]
    assert failed["RUNS"] == "0/2 ok, exit [3]"
    assert [failed[column] for column in HEADER[1:5]] == ["-"] * 4
    assert verdict == "best: threads=1 (the only configuration that completed)"

    as_json = json.loads(sweep(iso, "--threads", "1,2", "--repeat", "1", "--json", program=FAILS_UNDER_2).stdout)
    assert [entry["config"] for entry in as_json["ranking"]] == [{"threads": "1"}]
    (failed_entry,) = as_json["failed"]
    assert failed_entry["config"] == {"threads": "2"}
    assert failed_entry["failed"] == [3]
    assert [sample["code"] for sample in failed_entry["samples"]] == [3]


def test_a_configuration_that_fails_once_is_excluded(iso: Isolated) -> None:
    # threads=2 fails on its second run only; threads=1 is slower but never fails.
    program = """
import os, sys, time
n = os.environ["OMP_NUM_THREADS"]
count = "count-" + n
runs = os.path.getsize(count) if os.path.exists(count) else 0
open(count, "a").write("x")
time.sleep(0.3 if n == "1" else 0.01)
sys.exit(4 if n == "2" and runs == 1 else 0)
"""
    result = sweep(iso, "--threads", "1,2", "--repeat", "2", program=program)
    assert result.returncode == 0, result.stderr
    rows, verdict = table_rows(result.stdout)
    assert [(row["mark"], row["CONFIGURATION"], row["RUNS"]) for row in rows] == [
        ("*", "threads=1", "2/2 ok"), ("x", "threads=2", "1/2 ok, exit [4]")
    ]
    wall_of(rows[1])  # the successful run is still shown
    assert verdict == "best: threads=1 (the only configuration that completed)"


def test_all_failing_exits_1(iso: Isolated) -> None:
    result = sweep(iso, "--threads", "1,2", "--repeat", "1", "--save", "never", program="raise SystemExit(3)\n")
    assert result.returncode == 1, result.stderr
    assert sorted(code for *_, code in progress(result.stderr)) == [3, 3]
    rows, verdict = table_rows(result.stdout)
    assert [row["mark"] for row in rows] == ["x", "x"]
    assert all(row["RUNS"] == "0/1 ok, exit [3]" for row in rows)
    assert verdict == "no configuration completed without failing"
    assert not (iso.user_profiles / "never.toml").exists()

    as_json = iso.run("sweep", "--threads", "1", "--repeat", "1", "--json", "--", PYTHON, "prog.py")
    assert as_json.returncode == 1
    data = json.loads(as_json.stdout)
    assert data["best"] is None and data["ranking"] == []
    assert data["verdict"] == "no configuration completed without failing"


def test_command_not_found_fails_every_run_with_127(iso: Isolated) -> None:
    result = iso.run("sweep", "--threads", "1,2", "--repeat", "1", "--", "no-such-command-tcap-sweep")
    assert result.returncode == 1, result.stderr
    assert sorted(code for *_, code in progress(result.stderr)) == [127, 127]
    rows, _ = table_rows(result.stdout)
    assert {row["RUNS"] for row in rows} == {"0/1 ok, exit [127]"}


# -- Ctrl-C ----------------------------------------------------------------------


def read_line(stream, deadline: float) -> str:  # type: ignore[no-untyped-def]
    """One line from a pipe, failing the test at ``deadline``."""
    data = b""
    while not data.endswith(b"\n"):
        ready, _, _ = select.select([stream], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"no line in time (so far {data!r})"
        chunk = os.read(stream.fileno(), 1)
        assert chunk, f"end of stream (so far {data!r})"
        data += chunk
    return data.decode()


def session_processes(sid: int) -> list[tuple[int, str]]:
    """(pid, state) of every process of session ``sid``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == sid:
            found.append((int(name), fields[0]))
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_ctrl_c_prints_what_was_measured_and_leaves_nothing_running(iso: Isolated) -> None:
    # The program ignores SIGINT, as a program busy in native code would not
    # react to it: sweep has to end the run itself. Its first run is short,
    # every later one would take 60 s.
    (iso.work / "prog.py").write_text("""
import os, signal, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
first = not os.path.exists("pids")
with open("pids", "a") as f:
    f.write(f"{os.getpid()}\\n")
time.sleep(0.2 if first else 60)
""")
    pids_file = iso.work / "pids"
    start = time.monotonic()
    deadline = start + 30
    proc = iso.popen(
        "sweep", "--threads", "1,2", "--repeat", "2", "--", PYTHON, "prog.py",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        first = read_line(proc.stderr, deadline)
        assert PROGRESS.match(first.rstrip("\n")), first
        assert first.startswith("tcap sweep: [1/4] round 1: ")
        while len(pids_file.read_text().split()) < 2:  # the second run has started
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    stdout, stderr = out.decode(), first + err.decode()
    assert proc.returncode == 130, (stdout, stderr)
    assert time.monotonic() - start < 20  # not after the 60 s run
    assert "tcap sweep: interrupted after 1 of 4 runs; results so far:" in stderr.splitlines()
    assert len(progress(stderr)) == 1
    measured = progress(stderr)[0][3]
    rows, verdict = table_rows(stdout)
    assert [(row["mark"], row["CONFIGURATION"], row["RUNS"]) for row in rows][0] == ("*", measured, "1/1 ok")
    assert len(rows) == 2 and rows[1]["mark"] == "" and rows[1]["RUNS"] == "not run"
    assert verdict == f"best so far: {measured} (the only configuration measured before the stop)"

    pids = [int(pid) for pid in pids_file.read_text().split()]
    assert len(pids) == 2
    assert not alive(pids[1]), "the interrupted run is still running"
    assert [p for p, state in session_processes(proc.pid) if state != "Z"] == []


def test_ctrl_c_with_json_marks_the_output_interrupted(iso: Isolated) -> None:
    (iso.work / "prog.py").write_text("import time\nopen('started', 'a').close()\ntime.sleep(60)\n")
    proc = iso.popen(
        "sweep", "--threads", "1", "--json", "--", PYTHON, "prog.py",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (iso.work / "started").exists():  # the run's program is up
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    data = json.loads(out)
    assert data["interrupted"] is True and data["best"] is None
    assert err.decode().splitlines() == ["tcap sweep: interrupted after 0 of 3 runs; results so far:"]


# -- bad input -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give at least one of --threads, --blas, --openmp, --workers"),
        (("--repeat", "2"), "give at least one of --threads"),
        (("--threads", "0"), "--threads 0: expected an integer >= 1, not 0"),
        (("--threads", "1,0"), "--threads 1,0: expected an integer >= 1, not 0"),
        (("--threads", "x!"), "--threads x!: "),
        (("--blas", "1,,2"), "--blas 1,,2: "),
        (("--threads", "1", "--repeat", "0"), "--repeat expects a count >= 1, not '0'"),
        (("--threads", "1", "--repeat", "two"), "--repeat expects a count >= 1, not 'two'"),
        (("-p", "no-such-profile", "--threads", "1"), "no profile named 'no-such-profile'"),
        (("--threads", "1", "--bogus"), "unknown option --bogus"),
    ],
)
def test_bad_input_exits_2_before_any_run(iso: Isolated, args: tuple[str, ...], message: str) -> None:
    (iso.work / "prog.py").write_text("open('ran', 'a').close()\n")
    result = iso.run("sweep", *args, "--", PYTHON, "prog.py")
    assert message in iso.error_line(result, 2)
    assert result.stdout == ""
    assert not (iso.work / "ran").exists()


@pytest.mark.parametrize("args", [("--threads", "1,2"), ("--threads", "1,2", "--")])
def test_missing_command(iso: Isolated, args: tuple[str, ...]) -> None:
    line = iso.error_line(iso.run("sweep", *args), 2)
    assert "missing the command to measure" in line


def test_broken_base_profile_exits_2_before_any_run(iso: Isolated) -> None:
    iso.write_profile("broken", "threads = 0\n")
    (iso.work / "prog.py").write_text("open('ran', 'a').close()\n")
    result = iso.run("sweep", "-p", "broken", "--blas", "1,2", "--", PYTHON, "prog.py")
    assert "broken.toml" in iso.error_line(result, 2)
    assert not (iso.work / "ran").exists()


def test_plot_without_matplotlib_exits_2_before_any_run(iso: Isolated) -> None:
    (iso.work / "prog.py").write_text("open('ran', 'a').close()\n")
    args = ("sweep", "--threads", "1,2", "--plot", "out.png", "--", PYTHON, "prog.py")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        result = iso.run(*args)
    else:
        # matplotlib is installed here: run tcap without site-packages
        # (python -S), where it cannot be imported; tcap itself comes from
        # PYTHONPATH, and the runs (none expected) would use the console script.
        env = {**iso.env, "PYTHONPATH": str(Path(tcap.__file__).resolve().parent.parent)}
        result = subprocess.run(
            [PYTHON, "-S", "-m", "tcap", *args], env=env, cwd=iso.work, capture_output=True, text=True, timeout=60
        )
    line = iso.error_line(result, 2)
    assert line == "tcap: error: tcap sweep --plot needs matplotlib: pip install 'tcap[plot]'"
    assert not (iso.work / "ran").exists() and not (iso.work / "out.png").exists()


def test_plot_writes_an_image(iso: Isolated) -> None:
    pytest.importorskip("matplotlib")
    result = sweep(iso, "--threads", "1,2", "--repeat", "1", "--plot", "out.png", program=SLEEPY)
    assert result.returncode == 0, result.stderr
    image = (iso.work / "out.png").read_bytes()
    assert image.startswith(b"\x89PNG\r\n\x1a\n") and image[12:16] == b"IHDR"
    # 8 x (1 + 0.4 per configuration) inches at matplotlib's 100 dpi: 800 x 180 pixels for 2 configurations.
    width, height = int.from_bytes(image[16:20], "big"), int.from_bytes(image[20:24], "big")
    assert (width, height) == (800, 180), (width, height)


def test_plot_replaces_a_planted_symlink_instead_of_following_it(iso: Isolated) -> None:
    pytest.importorskip("matplotlib")
    victim = iso.root / "victim.txt"
    victim.write_text("someone's file\n")
    (iso.work / "out.png").symlink_to(victim)
    result = sweep(iso, "--threads", "1", "--repeat", "1", "--plot", "out.png", program=SLEEPY)
    assert result.returncode == 0, result.stderr
    assert victim.read_text() == "someone's file\n"
    assert not (iso.work / "out.png").is_symlink()
    assert (iso.work / "out.png").read_bytes().startswith(b"\x89PNG")


def test_plot_into_a_missing_directory_exits_74_before_any_run(iso: Isolated) -> None:
    pytest.importorskip("matplotlib")
    (iso.work / "prog.py").write_text("open('ran', 'a').close()\n")
    result = iso.run("sweep", "--threads", "1", "--plot", "nowhere/out.png", "--", PYTHON, "prog.py", timeout=60)
    assert "--plot" in iso.error_line(result, 74)
    assert not (iso.work / "ran").exists()


# -- several dimensions -------------------------------------------------------------


def test_every_combination_runs_with_its_variables(iso: Isolated) -> None:
    program = """
import os
with open("seen.log", "a") as f:
    f.write(os.environ["OPENBLAS_NUM_THREADS"] + " " + os.environ["OMP_NUM_THREADS"] + "\\n")
"""
    result = sweep(iso, "--blas", "1,2", "--openmp", "1,2", "--repeat", "2", program=program)
    assert result.returncode == 0, result.stderr
    combos = ["blas=1 openmp=1", "blas=1 openmp=2", "blas=2 openmp=1", "blas=2 openmp=2"]
    lines = progress(result.stderr)
    assert len(lines) == 8 and {total for _, total, *_ in lines} == {8}
    for round_number in (1, 2):  # each round runs each configuration once
        assert sorted(label for _, _, r, label, *_ in lines if r == round_number) == combos
    rows, _ = table_rows(result.stdout)
    assert sorted(row["CONFIGURATION"] for row in rows) == combos
    assert all(row["RUNS"] == "2/2 ok" for row in rows)
    assert [row["mark"] for row in rows].count("*") == 1
    seen = collections.Counter((iso.work / "seen.log").read_text().splitlines())
    assert seen == {"1 1": 2, "1 2": 2, "2 1": 2, "2 2": 2}


def test_workers_dimension_reaches_the_program(iso: Isolated) -> None:
    # --workers 2 on this machine's CPUs: each worker's pools get cpus / 2.
    program = """
import os
with open("seen.log", "a") as f:
    f.write(os.environ["LOKY_MAX_CPU_COUNT"] + "\\n")
"""
    result = sweep(iso, "--workers", "1,2", "--repeat", "1", program=program)
    assert result.returncode == 0, result.stderr
    rows, _ = table_rows(result.stdout)
    assert sorted(row["CONFIGURATION"] for row in rows) == ["workers=1", "workers=2"]
    assert sorted((iso.work / "seen.log").read_text().split()) == ["1", "2"]


def test_the_runs_are_tcap_run_with_the_base_profile(iso: Isolated) -> None:
    # The base profile's own settings reach every run; the swept key overrides it.
    iso.write_profile("base", 'blas = 1\n[env]\nSWEEP_TEST_BASE = "from base"\n')
    program = """
import os
with open("seen.log", "a") as f:
    f.write(os.environ["SWEEP_TEST_BASE"] + "|" + os.environ["OPENBLAS_NUM_THREADS"] + "|"
            + os.environ["OMP_NUM_THREADS"] + "\\n")
"""
    result = sweep(iso, "-p", "base", "--openmp", "1,2", "--repeat", "1", program=program)
    assert result.returncode == 0, result.stderr
    assert sorted((iso.work / "seen.log").read_text().splitlines()) == ["from base|1|1", "from base|1|2"]


# -- measurement details ---------------------------------------------------------


def test_wall_time_is_not_rounded_up_to_the_sampling_interval(iso: Isolated) -> None:
    result = iso.run("sweep", "--threads", "1", "--repeat", "3", "--json", "--",
                     PYTHON, "-c", "import time; time.sleep(0.16)")
    assert result.returncode == 0, result.stderr
    walls = [sample["wall"] for sample in json.loads(result.stdout)["ranking"][0]["samples"]]
    assert all(0.16 <= wall < 1.0 for wall in walls), walls
    # Measured when the command ends, not when a polling step notices: a
    # 0.1 s step (what it once was) gave 0.3 s, every time a few ms past a
    # multiple of 0.1 s. tcap run + interpreter start + 0.16 s is well under
    # 0.3 s on a quick machine; on a slow one, the times at least are not
    # all on a 0.1 s step.
    on_step = all(abs(wall * 10 - round(wall * 10)) < 0.03 for wall in walls)
    assert sorted(walls)[1] < 0.29 or not on_step, walls


def test_a_chatty_failing_command_does_not_block_and_its_last_line_is_shown(iso: Isolated) -> None:
    code = "import sys; sys.stderr.write('x' * 200000 + '\\nthe real error\\n'); sys.exit(4)"
    result = iso.run("sweep", "--threads", "1", "--repeat", "1", "--", PYTHON, "-c", code, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "FAILED (exit 4): the real error" in result.stderr


def test_saved_profile_stays_valid_toml_whatever_the_command_and_base(iso: Isolated) -> None:
    base = iso.work / "base.toml"
    base.write_text("blas = 1\n")
    result = iso.run("sweep", "-p", "./base.toml", "--threads", "1", "--repeat", "1", "--save", "odd", "--",
                     PYTHON, "-c", 'print("x")\nprint(1)', '"', "back\\slash", cwd=iso.work)
    assert result.returncode == 0, result.stderr
    data = iso.show_json("-p", "odd")
    assert data["caps"]["threads"] == 1 and data["caps"]["blas"] == 1

"""``tcap run --plot FILE`` and ``tcap report --plot FILE``: a picture of the
run (tcap.plot). Real runs of real programs, real matplotlib, real PNG
files read back (their signature, their size in pixels from the IHDR
chunk, their pixels through matplotlib.image.imread); the paths without
matplotlib in a real process where it cannot be imported."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from conftest import PYTHON, Isolated
from tcap.errors import EXIT_IO

pytest.importorskip("matplotlib")

#: A program that keeps N threads busy for S seconds, phase after phase
#: (``busy.py 1x1.5 2x1.5 CODE``: one thread, then two; exits CODE). sha256
#: of a large buffer releases the GIL: the threads really run at once.
BUSY = """
import hashlib, sys, threading, time
DATA = b"x" * (1 << 20)
def hash_for(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        hashlib.sha256(DATA).digest()
def phase(threads, seconds):
    workers = [threading.Thread(target=hash_for, args=(seconds,)) for _ in range(threads - 1)]
    for worker in workers:
        worker.start()
    hash_for(seconds)
    for worker in workers:
        worker.join()
for spec in sys.argv[1:-1]:
    count, seconds = spec.split("x")
    phase(int(count), float(seconds))
sys.exit(int(sys.argv[-1]))
"""
#: A target that leaves a mark when it runs at all.
MARK = "open('ran', 'w').close()"
#: 12 x (1.2 + 3.6 per node) inches at 100 dpi (tcap.plot.WIDTH, HEADER, PANEL, DPI).
ONE_PANEL = (1200, 480)
HANG = 60
PNG = b"\x89PNG\r\n\x1a\n"
#: Colours as drawn over white: the first two processes' bands (C0, C1 at
#: alpha 0.75), the CPU line (tab:red), a violation's mark (darkred).
BAND_0 = (87, 153, 199)
BAND_1 = (255, 159, 75)
CPU_LINE = (214, 39, 40)
VIOLATION = (139, 0, 0)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data.startswith(PNG) and data[12:16] == b"IHDR", data[:32]
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def pixels(path: Path) -> object:
    """The image as an array of 0-255 RGB values."""
    import matplotlib.image
    import numpy

    return numpy.rint(matplotlib.image.imread(str(path))[:, :, :3] * 255).astype(int)


def count(image: object, colour: tuple[int, int, int], slack: int = 6) -> int:
    """Pixels of ``image`` within ``slack`` of ``colour`` in each channel."""
    import numpy

    return int((numpy.abs(image - numpy.array(colour)) <= slack).all(axis=2).sum())  # type: ignore[operator]


def run_busy(iso: Isolated, *args: str, phases: tuple[str, ...], code: int = 0, name: str = "run.png") -> object:
    (iso.work / "busy.py").write_text(BUSY)
    return iso.run("run", *args, "--plot", name, "--", PYTHON, "busy.py", *phases, str(code), timeout=HANG)


# -- tcap run --plot -------------------------------------------------------------------------


def test_run_plot_draws_the_run_and_keeps_the_childs_exit_code(iso: Isolated) -> None:
    result = run_busy(iso, "--report-json", "r.json", phases=("1x1.5", "2x1.5"), code=3)
    assert result.returncode == 3, result.stderr
    assert result.stderr == "", result.stderr  # no report asked for: nothing on stderr
    image = iso.work / "run.png"
    assert png_size(image) == ONE_PANEL
    assert image.stat().st_size > 20_000  # axes, legend, title: far more than an empty figure
    drawn = pixels(image)
    assert count(drawn, CPU_LINE, slack=24) > 200  # the CPU line across the panel
    report = json.loads((iso.work / "r.json").read_text())
    assert report["child_exit_code"] == 3 and report["budget"]["cpus"]
    samples = report["processes"][0].get("busy_samples")
    if samples is None:
        pytest.skip("the report has no busy_samples yet (issue 19: the sampler's per-thread counts)")
    assert max(busy for _, busy in samples) >= 1, samples
    assert count(drawn, BAND_0) > 500, "the process's busy threads are not drawn"


def test_a_different_run_draws_a_different_picture(iso: Isolated) -> None:
    first = run_busy(iso, phases=("1x1.5", "2x1.5"), name="a.png")
    second = run_busy(iso, phases=("2x0.5", "1x3"), name="b.png")
    assert first.returncode == second.returncode == 0, (first.stderr, second.stderr)
    a, b = iso.work / "a.png", iso.work / "b.png"
    assert png_size(a) == png_size(b) == ONE_PANEL
    differing = int((pixels(a) != pixels(b)).any(axis=2).sum())  # type: ignore[operator]
    assert differing > 1000, differing  # not a pixel here and there: the lines and the axis moved


def test_run_plot_fills_in_rank_host_and_pid(iso: Isolated) -> None:
    result = iso.run("run", "--plot", "p-{pid}-{rank}.png", "--", PYTHON, "-c", MARK, timeout=HANG)
    assert result.returncode == 0, result.stderr
    made = [path.name for path in iso.work.glob("p-*.png")]
    assert len(made) == 1 and made[0].endswith("-0.png") and "{" not in made[0], made
    assert png_size(iso.work / made[0]) == ONE_PANEL


def test_run_plot_replaces_a_symlink_instead_of_following_it(iso: Isolated) -> None:
    victim = iso.root / "victim.txt"
    victim.write_text("someone's file\n")
    (iso.work / "run.png").symlink_to(victim)
    result = iso.run("run", "--plot", "run.png", "--", PYTHON, "-c", MARK, timeout=HANG)
    assert result.returncode == 0, result.stderr
    assert victim.read_text() == "someone's file\n"
    assert not (iso.work / "run.png").is_symlink() and png_size(iso.work / "run.png") == ONE_PANEL


@pytest.mark.parametrize(("destination", "code", "words"), [
    ("nowhere/run.png", EXIT_IO, "No such file or directory"),
    ("fifo.png", 2, "FIFO"),
    ("dir.png", 2, "directory"),
    ("run.gif", 2, "cannot draw a .gif file"),
    ("r.png", 2, "--plot and --report-json name the same file"),
    ("", 2, "--plot needs a file name"),
], ids=["missing directory", "fifo", "directory", "format", "same as report-json", "empty"])
def test_a_bad_plot_destination_stops_the_launch_before_the_command(iso: Isolated, destination: str, code: int,
                                                                    words: str) -> None:
    os.mkfifo(iso.work / "fifo.png")
    (iso.work / "dir.png").mkdir()
    result = iso.run("run", "--report-json", "r.png", "--plot", destination, "--", PYTHON, "-c", MARK,
                     timeout=HANG)
    line = iso.error_line(result, code)
    assert words in line and destination in line, line
    assert not (iso.work / "ran").exists() and not (iso.work / "r.png").exists()


def test_a_plot_that_cannot_be_written_after_the_run_is_74_or_the_childs_code(iso: Isolated) -> None:
    """The program removes the picture's directory while it runs: the
    picture cannot be written at the end; one line; 74 when the child
    exited 0, its own code otherwise."""
    for code in (0, 5):
        (iso.work / "out").mkdir()
        program = f"import os, sys; os.rmdir('out'); sys.exit({code})"
        result = iso.run("run", "--plot", "out/run.png", "--", PYTHON, "-c", program, timeout=HANG)
        line = iso.error_line(result, code or EXIT_IO)
        assert "out/run.png: cannot write --plot: No such file or directory" in line, line


def test_an_unwritable_directory_is_74_before_the_command(users, shared_tmp: Path) -> None:  # noqa: F811
    """A real user, a directory of root's they cannot write; tcap with
    this venv's matplotlib on PYTHONPATH (the same Python)."""
    ana = users[0]
    closed = shared_tmp / "closed"
    closed.mkdir(mode=0o755)
    site = next(path for path in sys.path if path.endswith("site-packages") and Path(path, "matplotlib").is_dir())
    env = ana.env(PYTHONPATH=f"{ana.env()['PYTHONPATH']}:{site}", MPLCONFIGDIR=str(shared_tmp / "mpl-ana"))
    mark = shared_tmp / "ran"
    result = ana.tcap("run", "--plot", str(closed / "run.png"), "--", "/usr/bin/python3", "-c",
                      f"open({str(mark)!r}, 'w').close()", env=env, timeout=HANG)
    assert result.returncode == EXIT_IO, result.stderr
    assert result.stderr == f"tcap: error: {closed / 'run.png'}: cannot write --plot: Permission denied\n"
    assert not mark.exists() and os.listdir(closed) == []


def test_another_users_symlink_in_a_sticky_directory_is_refused_before_the_command(
        users, shared_tmp: Path) -> None:  # noqa: F811
    ana, ben = users[0], users[1]
    victim = ana.home / "victim.png"
    ben_link = shared_tmp / "run.png"
    assert ben.tcap("--version").returncode == 0
    import subprocess

    subprocess.run(ben.as_user("ln", "-s", str(victim), str(ben_link)), check=True, timeout=HANG)
    site = next(path for path in sys.path if path.endswith("site-packages") and Path(path, "matplotlib").is_dir())
    env = ana.env(PYTHONPATH=f"{ana.env()['PYTHONPATH']}:{site}", MPLCONFIGDIR=str(shared_tmp / "mpl-ana"))
    mark = shared_tmp / "ran"
    result = ana.tcap("run", "--plot", str(ben_link), "--", "/usr/bin/python3", "-c",
                      f"open({str(mark)!r}, 'w').close()", env=env, timeout=HANG)
    assert result.returncode == EXIT_IO, result.stderr
    assert "cannot write --plot: a symlink of uid" in result.stderr and result.stderr.count("\n") == 1
    assert not mark.exists() and not victim.exists() and ben_link.is_symlink()


# -- without matplotlib ----------------------------------------------------------------------


@pytest.fixture
def no_matplotlib(iso: Isolated) -> dict[str, str]:
    """tcap's environment with a matplotlib that cannot be imported first on PYTHONPATH."""
    fake = iso.root / "fake" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no matplotlib here')\n")
    return {"PYTHONPATH": str(fake.parent)}


def test_run_plot_without_matplotlib_is_2_and_the_command_never_starts(iso: Isolated,
                                                                       no_matplotlib: dict[str, str]) -> None:
    result = iso.run("run", "--report-json", "r.json", "--plot", "run.png", "--", PYTHON, "-c", MARK,
                     extra_env=no_matplotlib, timeout=HANG)
    line = iso.error_line(result, 2)
    assert line == "tcap: error: --plot needs matplotlib: pip install 'tcap[plot]'"
    assert not (iso.work / "ran").exists()
    assert not (iso.work / "run.png").exists() and not (iso.work / "r.json").exists()


def test_report_plot_without_matplotlib_is_2_and_writes_nothing(iso: Isolated, no_matplotlib: dict[str, str]) -> None:
    made = iso.run("run", "--report-json", "r.json", "--", PYTHON, "-c", MARK, timeout=HANG)
    assert made.returncode == 0, made.stderr
    result = iso.run("report", "--json", "m.json", "--plot", "rep.png", "r.json", extra_env=no_matplotlib,
                     timeout=HANG)
    line = iso.error_line(result, 2)
    assert line == "tcap: error: --plot needs matplotlib: pip install 'tcap[plot]'"
    assert result.stdout == "" and not (iso.work / "rep.png").exists() and not (iso.work / "m.json").exists()


# -- tcap report --plot ----------------------------------------------------------------------


def test_report_plot_draws_a_real_report(iso: Isolated) -> None:
    made = run_busy(iso, "--report-json", "r.json", phases=("2x1.5",), name="run.png")
    assert made.returncode == 0, made.stderr
    result = iso.run("report", "r.json", "--plot", "rep.png", timeout=HANG)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("node ") and "verdict: 1 report from 1 node" in result.stdout
    assert png_size(iso.work / "rep.png") == ONE_PANEL
    assert (iso.work / "rep.png").stat().st_size > 20_000


def test_report_plot_of_two_nodes_has_a_panel_each(iso: Isolated) -> None:
    made = iso.run("run", "--report-json", "r.json", "--", PYTHON, "-c", MARK, timeout=HANG)
    assert made.returncode == 0, made.stderr
    other = json.loads((iso.work / "r.json").read_text())
    other["launch"]["host"] = "elsewhere"
    (iso.work / "s.json").write_text(json.dumps(other))
    result = iso.run("report", "r.json", "s.json", "--plot", "rep.png", timeout=HANG)
    assert result.returncode == 0, result.stderr
    assert png_size(iso.work / "rep.png") == (1200, 120 + 2 * 360)


def test_report_plot_onto_a_report_or_the_json_is_refused_before_reading(iso: Isolated) -> None:
    made = iso.run("run", "--report-json", "r.json", "--", PYTHON, "-c", MARK, timeout=HANG)
    assert made.returncode == 0, made.stderr
    before = (iso.work / "r.json").read_bytes()
    (iso.work / "r.png").write_bytes(before)  # a report, whatever its name
    line = iso.error_line(iso.run("report", "--plot", "r.png", "r.json", "r.png", timeout=HANG), 2)
    assert "--plot is one of the reports it merges" in line, line
    os.link(iso.work / "r.png", iso.work / "s.png")
    line = iso.error_line(iso.run("report", "--plot", "s.png", "r.png", timeout=HANG), 2)
    assert "--plot is r.png, a report it merges" in line, line
    line = iso.error_line(iso.run("report", "--json", "m.png", "--plot", "m.png", "r.json", timeout=HANG), 2)
    assert "--plot and --json name the same file" in line, line
    assert (iso.work / "r.png").read_bytes() == before and not (iso.work / "m.png").exists()


@pytest.mark.parametrize("what", ["fifo", "directory"])
def test_report_plot_onto_a_fifo_or_directory_is_2_without_blocking(iso: Isolated, what: str) -> None:
    made = iso.run("run", "--report-json", "r.json", "--", PYTHON, "-c", MARK, timeout=HANG)
    assert made.returncode == 0, made.stderr
    target = iso.work / "p.png"
    os.mkfifo(target) if what == "fifo" else target.mkdir()
    result = iso.run("report", "--plot", "p.png", "r.json", timeout=HANG)
    line = iso.error_line(result, 2)
    assert "p.png" in line and "--plot" in line and result.stdout == "", line


# -- what is drawn, from a report as the contract writes it ----------------------------------


def contract_report(busy: bool) -> dict[str, object]:
    """A --report-json report (issue 19's contract): a launch on 2 CPUs,
    two processes whose busy threads change (1, then 2; 1 then 0), one
    sharing, one with an observed violation."""
    from tcap.supervise import pack_samples

    t0 = 1_700_000_000_000
    processes = []
    for index, (rows, violations) in enumerate([
        ([[t0, 1], [t0 + 1000, 2], [t0 + 3000, 0]],
         [{"name": "busy threads", "threads": 2, "cap": 1, "at": (t0 + 1500) / 1000, "seconds": 1.0,
           "names": ["python", "worker"], "libraries": ["libgomp"]}]),
        ([[t0 + 500, 1], [t0 + 2500, 0]], []),
    ]):
        process: dict[str, object] = {
            "pid": 4200 + index, "ppid": None, "command": f"python fit.py --part {index} $HOME", "argv": [],
            "status": "VIOLATION" if violations else "ok", "pools": [], "violations": violations, "enforced": [],
            "peak_os_threads": 3, "unexplained_threads": 0, "hazards": [], "cpu_seconds": 2.0,
            "share": {"cpus": 2, "now": 1, "low": 1, "high": 2, "changes": 1, "busy_peak": 2, "threads_peak": 1,
                      "samples": [[t0 / 1000, 2, 1], [(t0 + 1000) / 1000, 1, 2]]} if index == 0 else None,
        }
        if busy:
            process["busy_samples"] = rows
            process["busy_threads"] = {"peak": max(n for _, n in rows), "mean": 1.0}
        processes.append(process)
    budget = [[t0 + 500 * step, min(step, 3), 1] for step in range(7)]
    return {"processes": processes, "verdict": "1 process, 1 violation (busy threads 2 > 1 in pid 4200)",
            "violations": [], "budget": {"cpus": 2}, "hazards": [], "totals": {},
            "launch": {"host": "node1", "rank": None, "cpus": 2, "node_cpus": 2,
                       "budget_samples": pack_samples(budget), "share": None}}


def test_the_bands_lines_and_marks_are_drawn(tmp_path: Path) -> None:
    from tcap import plot

    for busy in (True, False):
        path = tmp_path / f"busy-{busy}.png"
        data = contract_report(busy)
        path.write_bytes(plot.render([plot.run_panel(data)], str(data["verdict"])))
        assert png_size(path) == ONE_PANEL
        drawn = pixels(path)
        assert count(drawn, CPU_LINE, slack=24) > 200
        assert count(drawn, VIOLATION) > 100
        if busy:  # each process its band
            assert count(drawn, BAND_0) > 2000 and count(drawn, BAND_1) > 1000
        else:  # an earlier tcap's report: the total, the CPUs, the share and the marks only
            assert count(drawn, BAND_0) < 50 and count(drawn, BAND_1) < 50


def test_beyond_eight_processes_the_small_ones_are_others(tmp_path: Path) -> None:
    from tcap import plot

    data = contract_report(True)
    processes = data["processes"]
    assert isinstance(processes, list)
    t0 = 1_700_000_000_000
    for index in range(12):
        processes.append({**processes[1], "pid": 5000 + index, "share": None,
                          "busy_samples": [[t0 + 100 * index, 1], [t0 + 100 * index + 300 + 50 * index, 0]]})
    panel = plot.run_panel(data)
    assert len(panel.bands) == 14
    path = tmp_path / "many.png"
    path.write_bytes(plot.render([panel], "many"))
    grey = round(0.75 * 0.6 * 255 + 0.25 * 255)
    assert count(pixels(path), (grey, grey, grey), slack=3) > 200  # the "others" band


def test_report_plot_of_a_contract_report(iso: Isolated) -> None:
    """tcap report reads a hand-written report of the contract's shape and draws it."""
    (iso.work / "r.json").write_text(json.dumps(contract_report(True)))
    result = iso.run("report", "r.json", "--plot", "rep.png", timeout=HANG)
    assert result.returncode == 1, result.stderr  # the violation
    assert png_size(iso.work / "rep.png") == ONE_PANEL
    drawn = pixels(iso.work / "rep.png")
    assert count(drawn, VIOLATION) > 100 and count(drawn, CPU_LINE, slack=24) > 200
    svg = iso.run("report", "r.json", "--plot", "rep.svg", timeout=HANG)
    assert svg.returncode == 1 and (iso.work / "rep.svg").read_text().startswith("<?xml"), svg.stderr
    from tcap import reports

    if "busy_samples" not in reports.read_report(str(iso.work / "r.json")).processes[0]:
        pytest.skip("tcap report does not keep busy_samples yet (issue 19)")
    assert count(drawn, BAND_0) > 2000 and count(drawn, BAND_1) > 1000


# -- the command line ------------------------------------------------------------------------


def test_help_and_completion_know_the_flag(iso: Isolated) -> None:
    usage = iso.run("run", "--help").stdout
    assert "[--plot FILE]" in usage and "--plot FILE        a picture of the run" in usage
    assert "usage: tcap report [--json FILE] [--plot FILE] REPORT.json..." in iso.run("report", "--help").stdout
    bash = iso.run("shell-init", "bash").stdout
    assert "--report-json|--plot|" in bash
    run_words = next(line for line in bash.splitlines() if line.strip().startswith("'run')"))
    report_words = next(line for line in bash.splitlines() if line.strip().startswith("'report')"))
    assert "--plot" in run_words and "--plot" in report_words

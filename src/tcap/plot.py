"""A picture of a run: ``tcap run --plot FILE`` and ``tcap report --plot FILE``.

One panel per node, time in seconds since the first sample: each process's
busy threads (its ``busy_samples``), stacked, one colour per process (the
smallest grouped as "others" beyond MAX_BANDS); the launch's total as the
budget counts it (``launch.budget_samples``, the sum of a node's launches);
its CPUs (dashed); the per-thread share each process's probe applied where
sharing ran (``share.samples``, thin); and the violations marked at their
``at`` (a span where they say how long they lasted). The verdict is the
title. A report without busy samples (an earlier tcap) still shows the
total, the CPUs, the shares and the violations.

matplotlib is the optional ``plot`` extra, imported here only, with the
Agg backend and never pyplot: :func:`require` is called before anything
runs (the launch, the reading of reports), so a ``--plot`` without it is one
line and exit 2 with nothing started or written.
"""

from __future__ import annotations

import os
import sys

from tcap.errors import EXIT_INTERNAL, EXIT_IO, TcapError, one_line, printable
from tcap.plural import counted

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any

    from tcap.reports import Report, Samples

#: Processes drawn each in its own colour; beyond, the rest are "others".
MAX_BANDS = 8
#: Nodes drawn (one panel each) of a merged report.
MAX_PANELS = 8
#: Violations labelled per panel (the rest are marked, unlabelled); the
#: same finding within TOGETHER seconds has one label, naming its pids.
MAX_LABELS = 12
TOGETHER = 0.5
#: Characters of a command in the legend.
COMMAND_WIDTH = 40
#: Inches (at DPI) of the picture: WIDTH wide, HEADER plus PANEL per node high.
WIDTH, HEADER, PANEL, DPI = 12.0, 1.2, 3.6, 100
#: The file formats, by extension (no extension: png).
FORMATS = ("png", "svg", "pdf")
#: The largest wall-clock millisecond and count a sample may hold (tcap.supervise's bounds).
_MAX_MS = 10 ** 14
_MAX_COUNT = (1 << 30) - 1


def image_format(path: str, flag: str = "--plot") -> str:
    """The format ``path`` is drawn in, from its extension (png when it has
    none); another extension, or no path, is a usage error."""
    if not path:
        raise TcapError(f"{flag} needs a file name")
    extension = os.path.splitext(path)[1][1:].lower()
    if not extension:
        return "png"
    if extension not in FORMATS:
        raise TcapError(f"{flag}: cannot draw a .{printable(extension)[:16]} file (the formats: "
                        f"{', '.join(FORMATS)})", path=path)
    return extension


def require(flag: str = "--plot") -> None:
    """matplotlib can be imported (with the Agg backend), or a TcapError
    (exit 2) saying how to install it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.backends.backend_agg  # noqa: F401
        import matplotlib.figure  # noqa: F401
    except ImportError:
        raise TcapError(f"{flag} needs matplotlib: pip install 'tcap[plot]'") from None
    except Exception as failure:  # a broken installation: still one line, still before anything runs
        raise TcapError(f"{flag} needs matplotlib, which fails to load: {type(failure).__name__}: {failure}") \
            from None


def for_run(options: Mapping[str, Any], environ: Mapping[str, str]) -> Callable[[dict[str, Any], int], int]:
    """``tcap run --plot FILE``, before anything starts: FILE with {rank},
    {host} and {pid} filled in as for --report-json, its format, matplotlib
    and the destination checked (one line, exit 2 or 74). Returns what
    supervise calls with the report (its JSON data) and its exit code once
    the child has exited: it draws the picture and returns the exit code,
    the child's kept (74 for a picture that cannot be written, when it was
    0)."""
    from tcap import supervise
    from tcap.machine import hostname
    from tcap.ranks import read_ranks

    given = str(options["plot"])
    host = hostname()
    ranks = read_ranks(environ, host)
    path = supervise.expand(given, ranks, host)
    image_format(path)
    require()
    if options.get("report_json"):
        other = supervise.expand(str(options["report_json"]), ranks, host)
        if _same_file(path, other):
            raise TcapError("--plot and --report-json name the same file", path=path)
    supervise.check_destination(path, "--plot")

    def after(data: dict[str, Any], code: int) -> int:
        try:
            write(path, [run_panel(data)], str(data.get("verdict") or ""))
        except OSError as failure:
            sys.stderr.write(f"tcap: error: {one_line(path)}: cannot write --plot: "
                             f"{one_line(failure.strerror or str(failure))}\n")
            return EXIT_IO if code == 0 else code
        except Exception as failure:  # a bug here must not take the child's exit code
            if environ.get("TCAP_DEBUG"):
                raise
            sys.stderr.write(f"tcap: error: internal error drawing --plot: {type(failure).__name__}: "
                             f"{one_line(str(failure))}\n")
            return EXIT_INTERNAL if code == 0 else code
        return code

    return after


def for_report(path: str, inputs: Sequence[str], json: str | None = None) -> None:
    """``tcap report --plot FILE``, before any report is read: its format,
    matplotlib, and a destination that can be written and is none of the
    reports nor the ``--json`` file."""
    from tcap import supervise

    image_format(path)
    require()
    if json and _same_file(path, json):
        raise TcapError("--plot and --json name the same file", path=path)
    supervise.check_destination(path, "--plot", inputs)


def write_reports(path: str, reports: Sequence[Report], verdict: str) -> None:
    """The picture of merged reports (tcap.reports.merge_reports) into ``path``;
    TcapError 74 when it cannot be written."""
    try:
        write(path, report_panels(reports), verdict)
    except OSError as failure:
        raise TcapError(f"cannot write --plot: {failure.strerror or failure}", code=EXIT_IO, path=path) from None


def _same_file(one: str, other: str) -> bool:
    if os.path.abspath(one) == os.path.abspath(other):
        return True
    try:
        return os.path.samefile(one, other)
    except OSError:
        return False


# -- the data of a picture -----------------------------------------------------------------------


class Band:
    """One process's busy threads: ``events`` [(wall seconds, change)], its
    ``area`` (thread-seconds), label and sharing samples."""

    __slots__ = ("label", "events", "area", "share", "pid")

    def __init__(self, label: str, events: list[tuple[float, int]], area: float,
                 share: list[tuple[float, float]], pid: int | None) -> None:
        self.label, self.events, self.area, self.share, self.pid = label, events, area, share, pid


class Panel:
    """One node: its host, CPUs, launches, the total (``total``: [(wall
    seconds, threads)] steps, the last the end), the processes' bands and
    their violations [(wall seconds, how long or None, label)]."""

    def __init__(self, host: str, cpus: int | None, launches: int) -> None:
        self.host, self.cpus, self.launches = host, cpus, launches
        self.processes = 0
        self.total: list[tuple[float, int]] = []
        self.bands: list[Band] = []
        self.violations: list[tuple[float, float | None, str, int | None]] = []

    def times(self) -> list[float]:
        """Every time the panel draws (for the first sample and the x range)."""
        out = [when for when, _ in self.total]
        for band in self.bands:
            out += [when for when, _ in band.events] + [when for when, _ in band.share]
        out += [when for when, _, _, _ in self.violations]
        return out


def run_panel(data: Mapping[str, Any]) -> Panel:
    """The panel of one ``tcap run`` (its ``--report-json`` data)."""
    from tcap import reports

    launch = data.get("launch") or {}
    samples = reports._samples(launch.get("budget_samples") or [], "launch.budget_samples")
    budget = data.get("budget") or {}
    panel = Panel(str(launch.get("host") or "this host"), budget.get("cpus") or launch.get("cpus"), 1)
    _fill(panel, [(samples, list(data.get("processes") or []), None)])
    return panel


def report_panels(items: Sequence[Report]) -> list[Panel]:
    """The panels of merged reports: one per node (by host, as tcap report
    merges them), its CPUs the most any of its launches had."""
    nodes: dict[str, list[Report]] = {}
    for item in items:
        nodes.setdefault(item.host, []).append(item)
    panels = []
    for host in sorted(nodes):
        launches = sorted(nodes[host], key=lambda item: (item.rank or "", item.path))
        cpus = [item.node_cpus for item in launches if item.node_cpus is not None]
        panel = Panel(host, max(cpus) if cpus else None, len(launches))
        several = len(launches) > 1
        _fill(panel, [(item.samples, item.processes, (item.rank or item.path) if several else None)
                      for item in launches])
        panels.append(panel)
    return panels


def _fill(panel: Panel, launches: Sequence[tuple[Samples, Sequence[Mapping[str, Any]], str | None]]) -> None:
    """The total, bands and violations of ``panel`` from its launches: each
    its budget samples, its processes and the label of its rank (None: one
    launch)."""
    events: list[tuple[float, int]] = []
    ends = []
    for samples, processes, rank in launches:
        end = _total_events(samples, events)
        ends.append(end)
        panel.processes += len(processes)
        for process in processes:
            band = _band(process, end, rank)
            if band is not None:
                panel.bands.append(band)
            panel.violations += _violations(process)
    if events:
        panel.total = _steps(events, max(end for end in ends if end is not None))


def _total_events(samples: Samples, events: list[tuple[float, int]]) -> float | None:
    """A launch's budget samples as changes of its total (added to
    ``events``), from its first sample to its last (returned: None when it
    has no samples)."""
    if not len(samples.times):
        return None
    first, end = samples.times[0] / 1000, samples.times[-1] / 1000
    events.append((first, 0))
    level = 0
    for at, change in zip(samples.at, samples.threads):
        events.append((at / 1000, change))
        level += change
    if level:
        events.append((end, -level))
    return end


def _steps(events: list[tuple[float, int]], end: float) -> list[tuple[float, int]]:
    """The sum of ``events`` as steps [(time, value from then on)]; the last
    one at ``end`` keeps the value before it (the line ends flat)."""
    out: list[tuple[float, int]] = []
    level = 0
    for when, change in sorted(events):
        level += change
        if out and out[-1][0] == when:
            out[-1] = (when, level)
        else:
            out.append((when, level))
    while out and out[-1][0] >= end:
        out.pop()
    if out:
        out.append((end, out[-1][1]))
    return out


def _rows(value: Any, low: float, high: float, scale: float) -> list[tuple[float, Any]]:
    """[time, value, ...] rows of a sample list whose time is from 0 to
    ``high`` (in 1/``scale`` seconds) and whose value is a number from
    ``low`` up, in time order, as (seconds, value); what is not is left
    out (a report is checked where it is read: this draws what is sure)."""
    out = []
    for row in value if isinstance(value, list) else ():
        if not (isinstance(row, (list, tuple)) and len(row) >= 2):
            continue
        when, count = row[0], row[1]
        if isinstance(when, bool) or not isinstance(when, (int, float)) or not 0 <= when <= high:
            continue
        if isinstance(count, bool) or not isinstance(count, (int, float)) or not low <= count <= _MAX_COUNT:
            continue
        out.append((when / scale, count))
    out.sort(key=lambda row: row[0])
    return out


def _band(process: Mapping[str, Any], end: float | None, rank: str | None) -> Band | None:
    """A process's busy threads as changes, its last count lasting to the
    end of its launch (a process is sampled until it exits: ``busy_samples``
    ends with 0 then), and its sharing samples; None when it has neither."""
    rows = [(when, int(count)) for when, count in _rows(process.get("busy_samples"), 0, _MAX_MS, 1000)
            if count == int(count)]
    share = process.get("share")
    shares = [(when, float(value)) for when, value in
              _rows(share.get("samples") if isinstance(share, dict) else None, 0, _MAX_MS / 1000, 1)]
    if not rows and not shares:
        return None
    if shares and end is not None and end > shares[-1][0]:
        shares.append((end, shares[-1][1]))  # the share holds to the end of the launch
    events: list[tuple[float, int]] = []
    area = 0.0
    level = 0
    for index, (when, count) in enumerate(rows):
        events.append((when, count - level))
        level = count
        upto = rows[index + 1][0] if index + 1 < len(rows) else max(end or when, when)
        area += count * (upto - when)
    last = max(end or 0.0, rows[-1][0]) if rows else 0.0
    if level and rows:
        events.append((last, -level))  # the end of its launch (or its last sample)
    pid = process.get("pid")
    label = f"pid {pid} " if isinstance(pid, int) and not isinstance(pid, bool) else ""
    command = " ".join(str(process.get("command") or "").split())
    if len(command) > COMMAND_WIDTH:
        command = command[: COMMAND_WIDTH - 3] + "..."
    label += command or "?"
    if rank is not None:
        label = f"{rank[:24]}: {label}"
    return Band(_text(label), events, area, shares, pid if isinstance(pid, int) else None)


def _violations(process: Mapping[str, Any]) -> list[tuple[float, float | None, str, int | None]]:
    """A process's violations with a time: (wall seconds, how long it lasted
    or None, "name threads > cap" and the libraries it names, its pid)."""
    out: list[tuple[float, float | None, str, int | None]] = []
    for violation in process.get("violations") or ():
        if not isinstance(violation, dict):
            continue
        at = violation.get("at")
        if isinstance(at, bool) or not isinstance(at, (int, float)) or not 0 <= at <= _MAX_MS / 1000:
            continue
        seconds = violation.get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= 1e6:
            seconds = None
        name = violation.get("name") or violation.get("internal_api") or "pool"
        text = f"{str(name)[:24]} {_count(violation.get('threads'))} > {_count(violation.get('cap'))}"
        libraries = violation.get("libraries")
        if isinstance(libraries, list) and libraries and all(isinstance(item, str) for item in libraries):
            text += f" ({', '.join(item[:16] for item in libraries[:3])}{', ...' if len(libraries) > 3 else ''})"
        pid = process.get("pid")
        out.append((float(at), None if seconds is None else float(seconds), _text(text),
                    pid if isinstance(pid, int) and not isinstance(pid, bool) else None))
    return out


def _count(value: Any) -> str:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else "?"


def _text(text: str) -> str:
    """``text`` as matplotlib draws it literally: one printable line, ``$``
    (which starts its math text) escaped."""
    return printable(text).replace("$", r"\$")


# -- drawing -------------------------------------------------------------------------------------


def write(path: str, panels: Sequence[Panel], verdict: str) -> None:
    """Draw ``panels`` under the title ``verdict`` into ``path`` (safefile.write_atomic:
    a symlink there is replaced, never followed; OSError)."""
    from tcap import safefile, supervise

    data = render(panels, verdict, image_format(path))
    safefile.write_atomic(path, data, supervise._file_mode())


def render(panels: Sequence[Panel], verdict: str, kind: str = "png") -> bytes:
    """The picture of ``panels`` as the bytes of a ``kind`` file."""
    import io
    import logging
    import textwrap
    import warnings

    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = list(panels[:MAX_PANELS])
    times = [when for panel in shown for when in panel.times()]
    start = min(times) if times else 0.0
    title = "tcap: " + (verdict or "no verdict")
    if len(panels) > len(shown):
        title += f" (the first {len(shown)} of {len(panels)} nodes drawn)"
    logging.getLogger("matplotlib").setLevel(logging.ERROR)  # a missing glyph is not worth a line on stderr
    with warnings.catch_warnings(), matplotlib.rc_context({"text.usetex": False, "svg.hashsalt": "tcap"}):
        warnings.simplefilter("ignore")
        figure = Figure(figsize=(WIDTH, HEADER + PANEL * max(1, len(shown))), dpi=DPI)
        FigureCanvasAgg(figure)
        heading = textwrap.fill(_text(title), 130, max_lines=4, placeholder=" ...")
        figure.suptitle(heading, fontsize=9, x=0.01, y=1 - 0.12 / (HEADER + PANEL * max(1, len(shown))), ha="left",
                        va="top")
        grid = figure.subplots(max(1, len(shown)), 1, squeeze=False, sharex=True)
        for panel, axes in zip(shown or [Panel("no samples", None, 0)], grid[:, 0]):
            _draw(axes, panel, start)
        grid[-1, 0].set_xlabel("seconds since the first sample")
        height = HEADER + PANEL * max(1, len(shown))
        lines = heading.count("\n") + 1  # the panel's own title under the verdict's lines
        figure.subplots_adjust(left=0.06, right=0.70, top=1 - (0.45 + 0.16 * lines) / height, bottom=0.55 / height,
                               hspace=0.35)
        out = io.BytesIO()
        metadata = {"Software": None} if kind == "png" else {"Creator": None} if kind == "svg" else {}
        figure.savefig(out, format=kind, metadata=metadata)
    return out.getvalue()


def _draw(axes: Any, panel: Panel, start: float) -> None:
    """One node: bands, total, CPUs, shares, violations."""
    colours = [f"C{index}" for index in range(10)]
    bands = sorted((band for band in panel.bands if band.events and band.area > 0), key=lambda band: -band.area)
    drawn = bands if len(bands) <= MAX_BANDS else bands[: MAX_BANDS - 1]
    rest = bands[len(drawn):]
    layers: list[tuple[str, list[tuple[float, int]], str]] = [
        (band.label, band.events, colours[index % len(colours)]) for index, band in enumerate(drawn)]
    if rest:
        layers.append((f"{len(rest)} others", [event for band in rest for event in band.events], "0.6"))
    grid = sorted({when for _, events, _ in layers for when, _ in events})
    highest = 0.0
    if grid:
        x = [when - start for when in grid]
        lower = [0] * len(grid)
        for label, events, colour in layers:
            upper = [low + level for low, level in zip(lower, _levels(events, grid))]
            axes.fill_between(x, lower, upper, step="post", color=colour, alpha=0.75, linewidth=0, label=label)
            lower = upper
        highest = max(lower)
    if panel.total:
        axes.step([when - start for when, _ in panel.total], [level for _, level in panel.total], where="post",
                  color="black", linewidth=1.4, label="launch total (the budget's count)", zorder=4)
        highest = max(highest, max(level for _, level in panel.total))
    if panel.cpus:
        axes.axhline(panel.cpus, color="tab:red", linestyle="--", linewidth=1.5, label=counted(panel.cpus, "CPU"),
                     zorder=5)
        highest = max(highest, panel.cpus)
    colour_of = {id(band): colours[index % len(colours)] for index, band in enumerate(drawn)}
    labelled = False
    for band in panel.bands:
        if not band.share:
            continue
        x = [when - start for when, _ in band.share]
        y = [value for _, value in band.share]
        axes.step(x, y, where="post", color=colour_of.get(id(band), "0.4"), linewidth=0.9, linestyle=(0, (4, 2)),
                  label=None if labelled else "per-thread share (each process)", zorder=3)
        labelled = True
        highest = max(highest, max(y))
    top = highest * 1.15 + 0.5
    marks = sorted(panel.violations, key=lambda mark: (mark[0], mark[2], mark[3] or 0))
    groups: list[tuple[float, str, list[int | None]]] = []  # one label for the same finding at about one time
    for index, (at, seconds, text, pid) in enumerate(marks):
        axes.axvline(at - start, color="darkred", linewidth=1, label="violation" if index == 0 else None)
        if seconds is not None:
            axes.axvspan(at - start, at - start + seconds, color="red", alpha=0.12, linewidth=0)
        same = next((group for group in reversed(groups) if group[1] == text and at - group[0] <= TOGETHER), None)
        if same is None:
            groups.append((at, text, [pid]))
        else:
            same[2].append(pid)
    for at, text, pids in groups[:MAX_LABELS]:
        known = [str(pid) for pid in pids if pid is not None]
        if known:
            more = f", +{len(known) - 3}" if len(known) > 3 else ""
            text += f" (pid {', '.join(known[:3])}{more})"
        axes.text(at - start, top * 0.98, text, rotation=90, va="top", ha="right", fontsize=7, color="darkred",
                  bbox={"facecolor": "white", "alpha": 0.75, "edgecolor": "none", "pad": 1})
    if len(groups) > MAX_LABELS:
        axes.text(0.99, 0.02, f"{len(marks)} violations, the first {MAX_LABELS} labelled", transform=axes.transAxes,
                  ha="right", fontsize=7, color="darkred")
    axes.set_ylim(0, top)
    axes.set_ylabel("busy threads")
    launches = f"{panel.launches} launch{'es' if panel.launches != 1 else ''}, " if panel.launches > 1 else ""
    noun = "process" if panel.processes == 1 else "processes"
    cpus = f", {counted(panel.cpus, 'CPU')}" if panel.cpus else ""
    missing = "" if grid else " (no busy-thread samples: a report of an earlier tcap, or no process sampled)"
    axes.set_title(_text(f"{panel.host}: {launches}{panel.processes} {noun}{cpus}{missing}"), fontsize=9, loc="left")
    axes.grid(True, linewidth=0.3, alpha=0.5)
    handles, names = axes.get_legend_handles_labels()
    if handles:
        axes.legend(handles, names, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)


def _levels(events: Sequence[tuple[float, int]], grid: Sequence[float]) -> list[int]:
    """The sum of ``events`` at each time of ``grid`` (increasing), each
    change counting from its time on."""
    ordered = sorted(events)
    out = []
    level = 0
    index = 0
    for when in grid:
        while index < len(ordered) and ordered[index][0] <= when:
            level += ordered[index][1]
            index += 1
        out.append(level)
    return out

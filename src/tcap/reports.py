"""``tcap report``: the ``--report-json`` files of several launches read
(through safefile, every field the merge uses checked: one line naming the
file and the field, exit 2) and merged (one table per node, the launch
budget per node from the launches' budget samples, one verdict).

The reports are what tcap.supervise writes; the checks of their fields,
the budget and the tables are its (imports go this way only).
"""

from __future__ import annotations

import errno
import functools
import math
import sys
from array import array

from tcap import fields, safefile
from tcap.errors import EXIT_USAGE, printable
from tcap.plural import counted
from tcap.supervise import (
    MAX_COUNT,
    MAX_MS,
    MAX_PID,
    MAX_SECONDS,
    SAMPLE_COLUMNS,
    SAMPLES_ENCODING,
    SHARE_MODES,
    SHARE_SAMPLES_REPORTED,
    STATUSES,
    Budget,
    _busy,
    _busy_samples,
    _enforced,
    _hazards,
    _observed,
    _share,
    _violation,
    budget_text,
    findings,
    share_line,
    summarize,
    table,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any


#: ``tcap report`` reads at most this many files, each at most this large.
MAX_REPORTS = 4096
MAX_REPORT_BYTES = 64 << 20
#: What an OS error reading a report says about the file the user named
#: (exit 2); any other is an I/O error (74).
_NAMED_WRONG = (errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.ELOOP, errno.ENAMETOOLONG, errno.EISDIR)


class Report:
    """One ``--report-json`` file as ``tcap report`` merges it: its fields
    checked, its budget samples compact (:class:`Samples`), its sharing
    (``launch.share``; None in a report of an earlier tcap)."""

    __slots__ = ("path", "host", "rank", "node_cpus", "processes", "samples", "share")

    def __init__(self, path: str, host: str, rank: str | None, node_cpus: int | None,
                 processes: list[dict[str, Any]], samples: Samples, share: dict[str, Any] | None = None) -> None:
        self.path, self.host, self.rank, self.node_cpus = path, host, rank, node_cpus
        self.processes, self.samples, self.share = processes, samples, share


def read_report(path: str) -> Report:
    """One ``--report-json`` file, read through safefile (a FIFO or a device
    is refused without blocking, a file over MAX_REPORT_BYTES before it is
    read), parsed within bounded depth, and every field the merge uses
    checked for its type and range; a TcapError names the file and the
    field otherwise."""
    from tcap.errors import EXIT_IO, TcapError

    try:
        raw = safefile.read(path, MAX_REPORT_BYTES)
    except safefile.Refused as failure:
        raise TcapError(f"not a tcap report: {failure.strerror}", path=path) from None
    except OSError as failure:
        code = EXIT_USAGE if failure.errno in _NAMED_WRONG else EXIT_IO
        raise TcapError(f"cannot read report: {failure.strerror or failure}", code=code, path=path) from None
    try:
        data = safefile.load_json(raw)
    except ValueError as failure:
        raise TcapError(f"not a tcap report (JSON: {failure})", path=path) from None
    del raw
    try:
        return _report(path, data)
    except fields.Bad as bad:
        raise TcapError(str(bad), path=path) from None


def _report(path: str, data: Any) -> Report:
    if not isinstance(data, dict):
        raise fields.Bad("not a tcap report (written by tcap run --report-json): not a JSON object")
    for key, kind, noun in (("verdict", str, "a string"), ("processes", list, "a list"), ("launch", dict, "an object")):
        if not isinstance(data.get(key), kind):
            found = "missing" if key not in data else f"expected {noun}"
            raise fields.Bad(f"not a tcap report (written by tcap run --report-json): {key}: {found}")
    processes = [_report_process(item, f"processes[{index}]") for index, item in enumerate(data["processes"])]
    launch = data["launch"]
    return Report(
        path,
        fields.text(fields.get(launch, "host", "launch."), "launch.host") or "unknown host",
        fields.text(fields.get(launch, "rank", "launch."), "launch.rank", null=True),
        fields.integer(fields.get(launch, "node_cpus", "launch."), "launch.node_cpus", 1, MAX_COUNT, null=True),
        processes,
        _samples(fields.get(launch, "budget_samples", "launch."), "launch.budget_samples"),
        _launch_share(launch.get("share"), "launch.share"),
    )


def _launch_share(value: Any, where: str) -> dict[str, Any] | None:
    """``launch.share`` of a report: null or missing (an earlier tcap), or
    the mode, the CPUs shared and the most busy processes at once."""
    if value is None:
        return None
    share = fields.obj(value, where)
    at = f"{where}."
    mode = fields.text(fields.get(share, "mode", at), at + "mode")
    if mode not in SHARE_MODES:
        raise fields.Bad(f"{at}mode: expected one of {', '.join(SHARE_MODES)}")
    return {"mode": mode,
            "cpus": fields.integer(fields.get(share, "cpus", at), at + "cpus", 1, MAX_COUNT, null=True),
            "busy_peak": fields.integer(fields.get(share, "busy_peak", at), at + "busy_peak", null=True)}


def _report_process(value: Any, where: str) -> dict[str, Any]:
    """A process entry of a report, as merge() wrote it."""
    process = fields.obj(value, where)
    at = f"{where}."

    def field(key: str) -> Any:
        return fields.get(process, key, at)

    status = fields.text(field("status"), at + "status")
    if status not in STATUSES:
        raise fields.Bad(f"{at}status: expected one of {', '.join(STATUSES)}")
    return {
        "pid": fields.integer(field("pid"), at + "pid", 1, MAX_PID),
        "ppid": fields.integer(field("ppid"), at + "ppid", 0, MAX_PID, null=True),
        "command": fields.text(field("command"), at + "command"),
        "argv": fields.strings(field("argv"), at + "argv"),
        "status": status,
        "pools": [_report_pool(item, f"{at}pools[{index}]")
                  for index, item in enumerate(fields.items(field("pools"), at + "pools"))],
        "violations": [_violation(item, f"{at}violations[{index}]", "name")
                       for index, item in enumerate(fields.items(field("violations"), at + "violations"))],
        "enforced": _enforced(field("enforced"), at + "enforced"),
        "peak_os_threads": fields.integer(field("peak_os_threads"), at + "peak_os_threads", null=True),
        "unexplained_threads": fields.integer(field("unexplained_threads"), at + "unexplained_threads", null=True),
        "hazards": _hazards(field("hazards"), at + "hazards"),
        "cpu_seconds": fields.number(field("cpu_seconds"), at + "cpu_seconds", 0, MAX_SECONDS, null=True),
        "share": _share(process.get("share"), at + "share", SHARE_SAMPLES_REPORTED),  # missing: an earlier tcap
        "busy_threads": _busy(process.get("busy_threads"), at + "busy_threads"),  # missing: an earlier tcap too
        "busy_samples": _busy_samples(process.get("busy_samples"), at + "busy_samples"),
        "observed": _observed(process.get("observed"), at + "observed"),
    }


def _report_pool(value: Any, where: str) -> dict[str, Any]:
    pool = fields.obj(value, where)
    at = f"{where}."
    return {
        "name": fields.text(fields.get(pool, "name", at), at + "name", null=True),
        "user_api": fields.text(fields.get(pool, "user_api", at), at + "user_api", null=True),
        "threads": fields.integer(fields.get(pool, "threads", at), at + "threads"),
        "cap": fields.integer(fields.get(pool, "cap", at), at + "cap", null=True),
        "filepath": fields.text(fields.get(pool, "filepath", at), at + "filepath", null=True),
    }


def _samples(value: Any, where: str) -> Samples:
    """A report's budget samples: as tcap writes them (:func:`_packed`), or
    as tcap wrote them before (:func:`_rows`)."""
    if isinstance(value, dict):
        return _packed(value, where)
    if isinstance(value, list):
        return _rows(value, where)
    raise fields.Bad(f"{where}: expected an object (or the list of rows of an earlier tcap)")


#: The top bytes (little-endian, the last of each 4) of the integers from 0 to MAX_COUNT.
_COUNT_TOPS = bytes(range((MAX_COUNT + 1) >> 24))


def _packed(value: Mapping[str, Any], where: str) -> Samples:
    """Budget samples as :func:`pack_samples` writes them: at most
    Budget.KEPT, the times in milliseconds from 0 to MAX_MS and increasing,
    the changes increasing sample indices, the counts from 0 to MAX_COUNT.
    Checked on the bytes and on integers of thousands of digits (C code, no
    Python object per sample: thousands of reports of thousands of samples
    are read in seconds); the first bad value is looked for only when there
    is one."""
    if value.get("encoding") != SAMPLES_ENCODING:
        found = "missing" if "encoding" not in value else f"expected {SAMPLES_ENCODING!r}"
        raise fields.Bad(f"{where}.encoding: {found}")
    raw = [_column(value, name, size, where) for name, size, _ in SAMPLE_COLUMNS]
    count, runs = len(raw[0]) // 8, len(raw[1]) // 4
    columns = []
    for (name, _, typecode), data in zip(SAMPLE_COLUMNS, raw):
        if name in ("threads", "processes") and len(data) != 4 * runs:
            raise fields.Bad(f"{where}.{name}: {counted(len(data) // 4, 'value')}, where changes has {runs}")
        column = array(typecode)
        column.frombytes(data)
        if sys.byteorder == "big":
            column.byteswap()
        columns.append(column)
    times, changes, threads, processes = columns
    for (name, _, _), data, column in zip(SAMPLE_COLUMNS[1:], raw[1:], columns[1:]):
        if data[3::4].translate(None, _COUNT_TOPS):  # a value below 0 or above MAX_COUNT
            index, bad = next((index, item) for index, item in enumerate(column) if not 0 <= item <= MAX_COUNT)
            raise fields.Bad(f"{where}.{name}[{index}]: {bad}, expected an integer from 0 to {MAX_COUNT}")
    if count and not (raw[0][6::8].count(0) == raw[0][7::8].count(0) == count and _increasing(raw[0], 8)
                      and times[-1] <= MAX_MS):
        _misplaced(times, "time_ms", MAX_MS, f"expected milliseconds from 0 to {MAX_MS}", where)
    if runs and not (_increasing(raw[1], 4) and changes[-1] < count):
        _misplaced(changes, "changes", count - 1, f"not the index of one of the {count} samples of time_ms", where)
    return Samples(times, changes, threads, processes)


def _misplaced(column: Sequence[int], name: str, high: int, expected: str, where: str) -> None:
    """The first value of ``column`` not from 0 to ``high`` or not above the one before."""
    for index, item in enumerate(column):
        if not 0 <= item <= high:
            raise fields.Bad(f"{where}.{name}[{index}]: {item}, {expected}")
        if index and item <= column[index - 1]:
            raise fields.Bad(f"{where}.{name}[{index}]: {item}, not after the one before ({column[index - 1]}): "
                       "tcap writes them in order, each once")
    raise AssertionError(f"a bad value of {name} not found again")  # pragma: no cover


def _column(value: Mapping[str, Any], name: str, size: int, where: str) -> bytes:
    """The bytes of a column of packed samples: at most Budget.KEPT values
    of ``size`` bytes, from at most the base64 that many take compressed."""
    import binascii
    import zlib

    at = f"{where}.{name}"
    text = fields.get(value, name, f"{where}.")
    if not isinstance(text, str):
        raise fields.Bad(f"{at}: expected a string (base64)")
    most = size * Budget.KEPT
    longest = 4 * -(-(most + most // 1000 + 64) // 3)  # what zlib makes of bytes it cannot compress, in base64
    if len(text) > longest:
        raise fields.Bad(f"{at}: {len(text)} characters, more than the {longest} of the {Budget.KEPT} samples "
                         "tcap writes")
    encoded = text.encode() if text.isascii() else b"?"
    padding = encoded.translate(None, _BASE64)  # what is not of its alphabet: only its padding at the end
    if padding not in (b"", b"=", b"==") or not encoded.endswith(padding) or len(encoded) % 4:
        raise fields.Bad(f"{at}: not base64")
    inflate = zlib.decompressobj()
    try:
        data = inflate.decompress(binascii.a2b_base64(encoded), most + 1)
    except (binascii.Error, zlib.error) as failure:
        raise fields.Bad(f"{at}: not base64 of zlib data ({failure})") from None
    if len(data) > most:
        raise fields.Bad(f"{at}: more than the {most} bytes of the {Budget.KEPT} samples tcap writes")
    if not inflate.eof or inflate.unused_data:
        raise fields.Bad(f"{at}: not base64 of zlib data (" + ("more after its end)" if inflate.eof else "cut short)"))
    if len(data) % size:
        raise fields.Bad(f"{at}: {len(data)} bytes, not a whole number of {size * 8}-bit integers")
    return data


_BASE64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _increasing(data: bytes, size: int) -> bool:
    """Whether the little-endian integers of ``size`` bytes in ``data``,
    each from 0 to 2**(8 * size - 2) - 1, increase: as one integer of a
    field a value, each minus the one before plus 2**(8 * size - 1) - 1
    (no field carries into the next) has its top bit set where the
    difference is 1 or more."""
    count = len(data) // size
    if count < 2:
        return True
    bits = 8 * size
    values = int.from_bytes(data, "little")
    fields = bits * (count - 1)
    differences = (values >> bits) + (_fields(bits) >> (bits * Budget.KEPT - fields)) - (values & ((1 << fields) - 1))
    return not differences.to_bytes(fields // 8, "little")[size - 1::size].translate(None, _TOP_BIT)


#: The bytes with their top bit set.
_TOP_BIT = bytes(range(0x80, 0x100))


@functools.cache
def _fields(bits: int) -> int:
    """2**(bits - 1) - 1 in each of Budget.KEPT fields of ``bits`` bits (made when first needed)."""
    return int.from_bytes(((1 << (bits - 1)) - 1).to_bytes(bits // 8, "little") * Budget.KEPT, "little")


def _rows(value: list[Any], where: str) -> Samples:
    """Budget samples as tcap wrote them before SAMPLES_ENCODING: at most
    Budget.KEPT rows of [wall time in seconds, pool threads, busy
    processes], in any order. Checked a column at a time; the first bad row
    is looked for only when there is one."""
    from itertools import chain, repeat
    from operator import mul

    rows = value
    if len(rows) > Budget.KEPT:
        raise fields.Bad(f"{where}: {len(rows)} samples, more than the {Budget.KEPT} tcap writes")
    if not rows:
        return Samples(array("q"), (), (), ())
    try:
        whole = set(map(len, rows)) == {3}
    except TypeError:  # a row with no length
        whole = False
    if whole:  # three of something in every row: one flat list, a column every third item
        flat = list(chain.from_iterable(rows))
        times, threads, processes = flat[0::3], flat[1::3], flat[2::3]
        if (set(map(type, times)) <= {int, float} and min(times) >= 0 and max(times) <= MAX_SECONDS
                and _counts(threads) and _counts(processes)):
            return Samples.rows(list(map(round, map(mul, times, repeat(1000)))), threads, processes)
    for index, row in enumerate(rows):
        at = f"{where}[{index}]"
        if not isinstance(row, list) or len(row) != 3:
            raise fields.Bad(f"{at}: expected [wall time, pool threads, busy processes]")
        fields.number(row[0], at + "[0]", 0, MAX_SECONDS)
        fields.integer(row[1], at + "[1]")
        fields.integer(row[2], at + "[2]")
    raise AssertionError("a bad sample not found again")  # pragma: no cover


def _counts(column: Sequence[Any]) -> bool:
    """Every value of ``column`` an integer (not a boolean) from 0 to MAX_COUNT."""
    return set(map(type, column)) == {int} and min(column) >= 0 and max(column) <= MAX_COUNT


def merge_reports(reports: Sequence[Report]) -> tuple[str, dict[str, Any]]:
    """Several launches' reports (the ranks of a job, on one node or many):
    one table per node, the launch budget per node, one verdict; the text
    for stdout (no ``tcap:`` prefixes) and the data for ``--json``."""
    nodes: dict[str, list[Report]] = {}
    for item in reports:
        nodes.setdefault(item.host, []).append(item)
    lines: list[str] = []
    everything: list[dict[str, Any]] = []
    out_nodes = []
    budgets = []
    for host in sorted(nodes):
        launches = sorted(nodes[host], key=lambda item: (item.rank or "", item.path))
        processes = [{**process, "rank": item.rank or item.path} for item in launches for process in item.processes]
        cpus = [item.node_cpus for item in launches if item.node_cpus is not None]
        budget = merged_budget(max(cpus) if cpus else None, [item.samples for item in launches]).result()
        budgets.append((host, budget))
        noun = "launch" if len(launches) == 1 else "launches"
        lines.append(f"node {printable(host)}: {len(launches)} {noun}, "
                     f"{counted(len(processes), 'process', 'processes')}\n")
        lines.append(table(processes, prefix=""))
        if budget["cpus"]:
            state = "VIOLATION" if budget["violated"] else "ok"
            lines.append(f"launch budget of {printable(host)}: {budget_text(budget)} ({state})\n")
        share = merged_share(launches)
        if share is not None:
            lines.append(f"sharing of {printable(host)}: {share_line(share).partition(': ')[2]}\n")
        everything += processes
        out_nodes.append({"host": host, "reports": [item.path for item in launches], "processes": processes,
                          "budget": budget, "share": share})
    summary = summarize(everything, None, 0)
    over = [host for host, budget in budgets if budget["violated"]]
    verdict = summary["verdict"]
    if over:
        verdict += f"; over the launch budget on {', '.join(printable(host) for host in over)}"
    plural = "s" if len(nodes) != 1 else ""
    verdict = f"{counted(len(reports), 'report')} from {len(nodes)} node{plural}: {verdict}"
    lines.append(findings({**summary, "budget": {"cpus": None}}, prefix=""))
    lines.append(f"verdict: {verdict}\n")
    data = {"nodes": out_nodes, "verdict": verdict, "violations": summary["violations"],
            "hazards": summary["hazards"], "over_budget": over, "totals": summary["totals"]}
    return "".join(lines), data


def merged_share(launches: Sequence[Report]) -> dict[str, Any] | None:
    """The sharing of the launches of one node: their mode ("mixed" when
    they differ), the most CPUs one shared, the most busy processes one of
    them saw at once, and how many launches had each mode; None when no
    report says (earlier tcaps)."""
    shares = [item.share for item in launches if item.share is not None]
    if not shares:
        return None
    modes: dict[str, int] = {}
    for share in shares:
        modes[share["mode"]] = modes.get(share["mode"], 0) + 1
    counts = [share["cpus"] for share in shares if share["cpus"] is not None]
    peaks = [share["busy_peak"] for share in shares if share["busy_peak"] is not None]
    return {"mode": next(iter(modes)) if len(modes) == 1 else "mixed", "cpus": max(counts, default=None),
            "busy_peak": max(peaks, default=None), "launches": dict(sorted(modes.items()))}


class Samples:
    """One launch's budget samples, compact for a merge of thousands
    (``tcap report``): ``times``, its sample times in wall-clock
    milliseconds, increasing; ``at``, the times where its pool threads or
    busy processes change, and ``threads`` and ``processes``, the change of
    each there; ``last``, both at the last sample.

    Made from ``changes``, the indices of the samples where either changes,
    and ``threads`` and ``processes``, their values from there on (both 0
    before the first)."""

    __slots__ = ("times", "at", "threads", "processes", "last")

    def __init__(self, times: array[int], changes: Sequence[int], threads: Sequence[int],
                 processes: Sequence[int]) -> None:
        from itertools import chain
        from operator import sub

        self.times = times
        self.at = array("q", list(map(times.__getitem__, changes)))  # from a list: in one go
        self.threads = array("i", list(map(sub, threads, chain((0,), threads))))
        self.processes = array("i", list(map(sub, processes, chain((0,), processes))))
        self.last = (threads[-1], processes[-1]) if len(changes) else (0, 0)

    @classmethod
    def rows(cls, times: Sequence[int], threads: Sequence[int], processes: Sequence[int]) -> Samples:
        """From the values at each sample, in any order (an earlier tcap
        wrote a clock set back as it was): sorted, the last sample of each
        time kept."""
        from itertools import chain, compress, islice
        from operator import lt, ne, or_

        if not all(map(lt, times, islice(times, 1, None))):
            kept = {times[index]: index for index in sorted(range(len(times)), key=times.__getitem__)}
            times = list(kept)
            threads = [threads[index] for index in kept.values()]
            processes = [processes[index] for index in kept.values()]
        changes = list(compress(range(len(times)), map(or_, map(ne, threads, chain((0,), threads)),
                                                       map(ne, processes, chain((0,), processes)))))
        return cls(array("q", times), changes, list(map(threads.__getitem__, changes)),
                   list(map(processes.__getitem__, changes)))


#: tcap report's merge takes the changes of all launches in windows of
#: about this many (what it holds at once, as Python objects)...
CHANGES = 1 << 18
#: ...and looks up sample times in windows of about this many samples
#: (every sample time of all launches there, sorted: only where a
#: launch ends or a stretch over the CPUs does)...
WINDOW = 1 << 16
#: ...the bounds of both from every STRIDE-th change or sample of each launch.
STRIDE = 64


def merged_budget(cpus: int | None, series: Sequence[Samples]) -> Budget:
    """The budget of several launches on one node from their samples: at
    each sample time of any of them, each launch counts with its latest
    sample (from its first sample to its last).

    The sum changes only where a launch's threads or busy processes
    change (:class:`Samples` holds those points apart), and at the first
    sample time of any launch after a launch's last (which takes its last
    values away). Those changes are taken in windows of about CHANGES,
    in time order, sorted and summed, the sum at each time the one after
    its last change there (itertools: no Python step per change). Between
    them the sum stands still: the peak is the largest of those sums, and
    a stretch over the CPUs lasts from the point it starts at to the last
    sample time before the point it ends at (looked up in :class:`_Times`).
    Linear in the samples; in milliseconds, exact."""
    from bisect import bisect_left
    from itertools import accumulate, chain, compress, islice, repeat
    from operator import gt, ne

    budget = Budget(cpus)
    series = [samples for samples in series if samples.times]
    if not series:
        return budget
    lookup = _Times(series, WINDOW, STRIDE)
    ends = sorted((samples.times[-1], samples.last) for samples in series)
    gone_at, gone = array("q"), []  # a launch's last values go at the next sample time of any launch
    for when, last in ends:
        after = lookup.after(when)
        if after is not None:
            gone_at.append(after)
            gone.append(last)
    some = sorted(chain.from_iterable(samples.at[::STRIDE] for samples in series))
    step = max(1, CHANGES // STRIDE)
    bounds = list(dict.fromkeys(some[step::step]))  # each window: about CHANGES changes
    taken = [0] * len(series)  # each launch's first change not taken yet
    first_gone = 0
    peak = peak_processes = threads = processes = 0
    longest: float = 0
    over_since: int | None = None
    for bound in chain(bounds, (math.inf,)):
        at, more, busier = array("q"), array("i"), array("i")  # the window's changes
        for index, samples in enumerate(series):
            begin = taken[index]
            if begin < len(samples.at) and samples.at[begin] < bound:
                end = bisect_left(samples.at, bound, begin)
                at += samples.at[begin:end]
                more += samples.threads[begin:end]
                busier += samples.processes[begin:end]
                taken[index] = end
        last_gone = bisect_left(gone_at, bound, first_gone)
        at += gone_at[first_gone:last_gone]
        more.extend(-less for less, _ in gone[first_gone:last_gone])
        busier.extend(-fewer for _, fewer in gone[first_gone:last_gone])
        first_gone = last_gone
        if not at:
            continue
        order = sorted(range(len(at)), key=at.__getitem__)
        ordered = list(map(at.__getitem__, order))
        # The sum at each time: the one after its last change there (1 in ``lasts``).
        lasts = bytes(map(ne, ordered, chain(islice(ordered, 1, None), (None,))))
        sums = list(compress(islice(accumulate(map(more.__getitem__, order), initial=threads), 1, None), lasts))
        busy = list(compress(islice(accumulate(map(busier.__getitem__, order), initial=processes), 1, None),
                             lasts))
        top = max(sums)
        if top > peak:
            peak, peak_processes = top, busy[sums.index(top)]
        if cpus:
            over = list(map(gt, sums, repeat(cpus)))
            flips = list(compress(range(len(over)), map(ne, over, chain((over_since is not None,), over))))
            points = list(compress(ordered, lasts)) if flips else []
            for flip in flips:
                if over[flip]:
                    over_since = points[flip]
                elif over_since is not None:  # over until the sample time before this point
                    longest = max(longest, lookup.before(points[flip]) - over_since)
                    over_since = None
        threads, processes = sums[-1], busy[-1]
    if over_since is not None:  # over until the last sample
        longest = max(longest, ends[-1][0] - over_since)
    budget.peak, budget.peak_processes, budget.longest = peak, peak_processes, longest / 1000
    return budget


class _Times:
    """The sample times of all launches, looked up in windows of about
    ``window`` samples (the bounds from every ``stride``-th sample of each
    launch), one window sorted at a time, in time order."""

    def __init__(self, series: Sequence[Samples], window: int, stride: int) -> None:
        from itertools import chain

        self.series = series
        some = sorted(chain.from_iterable(samples.times[::stride] for samples in series))
        step = max(1, window // stride)
        self.bounds: list[float] = [-math.inf, *dict.fromkeys(some[step::step]), math.inf]
        self.window = -1
        self.times: list[int] = []
        self.next: int | None = None  # the first sample time from the window's end on
        self.previous: float = -math.inf  # the last sample time before the window

    def _load(self, when: int) -> None:
        """The window of ``when``, sorted."""
        from bisect import bisect_left, bisect_right
        from itertools import chain

        window = bisect_right(self.bounds, when) - 1
        if window == self.window:
            return
        start, end = self.bounds[window], self.bounds[window + 1]
        cuts = [(bisect_left(samples.times, start), bisect_left(samples.times, end)) for samples in self.series]
        self.window = window
        self.times = sorted(chain.from_iterable(samples.times[low:high]
                                                for samples, (low, high) in zip(self.series, cuts)))
        self.next = min((samples.times[high] for samples, (_, high) in zip(self.series, cuts)
                         if high < len(samples.times)), default=None)
        self.previous = max((samples.times[low - 1] for samples, (low, _) in zip(self.series, cuts) if low),
                            default=-math.inf)

    def after(self, when: int) -> int | None:
        """The first sample time of any launch after ``when`` (None: none)."""
        from bisect import bisect_right

        self._load(when)
        position = bisect_right(self.times, when)
        return self.times[position] if position < len(self.times) else self.next

    def before(self, when: int) -> float:
        """The last sample time of any launch before ``when`` (-inf: none)."""
        from bisect import bisect_left

        self._load(when)
        position = bisect_left(self.times, when)
        return self.times[position - 1] if position else self.previous

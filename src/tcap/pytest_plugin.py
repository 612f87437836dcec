"""tcap's pytest plugin: ``pytest --tcap PROFILE`` and ``@pytest.mark.tcap``.

Loaded by pytest wherever tcap is installed (the ``pytest11`` entry point
``tcap``), so it must cost nothing unless asked: at load it only declares its
options, its ini keys and the marker. Nothing else is imported (no numpy,
threadpoolctl or tcap.api), no variable is set, nothing is printed until
``--tcap`` (or the ini key ``tcap``) names a profile or a collected test
carries the marker.

``--tcap PROFILE`` applies the profile with :func:`tcap.apply` at configure
time, once conftest files are imported and before any test runs: in a plain
run to the one process, under pytest-xdist first in the controller with
``workers=N`` (N the workers xdist resolved, ``-n auto`` included) before it
starts them, so they inherit the variables and the probe, then again in each
worker (pools its conftest files loaded are set; each gets cpus / N).

``@pytest.mark.tcap("serial")`` or ``@pytest.mark.tcap(threads=1)`` runs a
test (its setup and teardown included) inside :func:`tcap.limits` with those
arguments, and restores the pools after it; under xdist ``workers=N`` is
added unless the marker gives it. It works with or without ``--tcap``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # types only: tcap.api is imported when something is asked
    from collections.abc import Generator

    from tcap.api import Applied, limits

#: The part of pytest's stash where the plugin keeps what it applied, and the
#: ``tcap.limits`` a marked test runs in.
_APPLIED: pytest.StashKey[Applied] = pytest.StashKey()
_LIMITS: pytest.StashKey[limits] = pytest.StashKey()
#: The probe's warnings start so (tcap.probe).
_WARNING = re.compile(r"^tcap: (?:warning|enforced): .*$", re.MULTILINE)
#: At most this many of the probe's warnings are listed in the summary.
_LISTED = 20


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tcap", "thread caps (tcap)")
    group.addoption(
        "--tcap", dest="tcap", metavar="PROFILE", default=None,
        help="apply a tcap profile (a name or a .toml path) to the session and to every xdist worker, "
             "each worker getting cpus / N of the CPUs under -n N (ini: tcap; -o tcap= turns it off)",
    )
    group.addoption(
        "--tcap-verify", dest="tcap_verify", metavar="MODE", default=None,
        help="the profile's verification: off | warn | strict | enforce (default: the profile's; ini: tcap_verify)",
    )
    parser.addini("tcap", "tcap profile applied to the session, as --tcap PROFILE", default="")
    parser.addini("tcap_verify", "verification mode of --tcap, as --tcap-verify MODE", default="")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "tcap(profile=None, **flags): run the test inside tcap.limits(profile, **flags), e.g. "
        "tcap('serial') or tcap(threads=1); the pools are restored after it",
    )
    if config.getoption("help", False) or config.getoption("version", False):
        return
    profile = config.getoption("tcap") or config.getini("tcap")
    if not profile:
        return
    verify = config.getoption("tcap_verify") or config.getini("tcap_verify") or None
    from tcap import TcapError, apply
    from tcap.errors import one_line
    from tcap.profiles import VERIFY_MODES

    if verify is not None and verify not in VERIFY_MODES:
        raise pytest.UsageError(f"--tcap-verify must be one of {', '.join(VERIFY_MODES)}, not {verify!r}")

    try:
        applied = apply(str(profile), workers=xdist_workers(config), verify=verify)
    except TcapError as error:
        raise pytest.UsageError(f"--tcap {profile}: {one_line(str(error))}") from None
    config.stash[_APPLIED] = applied
    if not _in_worker(config):
        config.pluginmanager.register(_WarningsSummary(), "tcap-warnings")


def xdist_workers(config: pytest.Config) -> int | None:
    """The number of xdist workers this session runs (as xdist resolved ``-n``
    and ``--tx``; its ``pytest_cmdline_main`` ran before any configure), or
    None for a run without xdist or with ``-n 0``."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        return int(workerinput["workercount"])
    if config.getoption("dist", "no") == "no":
        return None
    count = 0
    for spec in config.getoption("tx", None) or ():
        times, star, _ = str(spec).partition("*")
        count += int(times) if star and times.isdigit() else 1
    return count or None


def _in_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_report_header(config: pytest.Config) -> list[str]:
    applied = config.stash.get(_APPLIED, None)
    if applied is None or _in_worker(config):
        return []
    return header_lines(applied, xdist_workers(config))


def header_lines(applied: Applied, workers: int | None) -> list[str]:
    """What ``--tcap`` applied, as the session header's lines."""
    from tcap.plural import counted

    shown = {key: applied.caps[key] for key in ("threads", "blas", "openmp") if key in applied.caps}
    caps = ", ".join(f"{key} {value}" for key, value in (shown or applied.caps).items())
    who = f"{counted(workers, 'xdist worker')}, each" if workers else "this process"
    count = len(applied.pinned) if applied.pinned else applied.cpus
    cpus = ("pinned to " if applied.pinned else "") + counted(count, "CPU")
    setting = sum(1 for name in applied.variables if not name.startswith("TCAP_") and name != "PYTHONPATH")
    lines = [
        f"tcap: profile {applied.profile}, {who}: {caps} ({cpus}); "
        f"{counted(setting, 'thread variable')} set; verify {applied.verify}"
    ]
    lines.extend(f"tcap: cannot: {c.library}: {c.what}; {c.instead}" for c in applied.cannot)
    lines.extend(f"tcap: note: {note}" for note in applied.notes)
    return lines


class _WarningsSummary:
    """The probe's warnings found in the tests' captured stderr (from every
    xdist worker too), listed once at the end of the session."""

    def __init__(self) -> None:
        self.found: dict[tuple[str, str], None] = {}

    def _scan(self, nodeid: str, sections: list[tuple[str, str]], when: str | None) -> None:
        for title, text in sections:
            if "stderr" in title and (when is None or title.endswith(f" {when}")) and "tcap: " in text:
                for line in _WARNING.findall(text):
                    self.found.setdefault((nodeid, line), None)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._scan(report.nodeid, report.sections, report.when)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._scan(report.nodeid, report.sections, None)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.found:
            return
        from tcap.plural import counted

        tests = len({nodeid for nodeid, _ in self.found})
        terminalreporter.section("tcap", sep="-")
        count = len(self.found)
        terminalreporter.line(
            f"the probe warned {counted(count, 'time')} in {counted(tests, 'test')} (captured stderr):"
        )
        for nodeid, line in list(self.found)[:_LISTED]:
            terminalreporter.line(f"{nodeid or '(collection)'}: {line}")
        if count > _LISTED:
            terminalreporter.line(f"... and {count - _LISTED} more")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The marker's hooks are registered only when a collected test carries it."""
    if any(item.get_closest_marker("tcap") is not None for item in items) and not config.pluginmanager.has_plugin(
        "tcap-marker"
    ):
        config.pluginmanager.register(_Marker(xdist_workers(config)), "tcap-marker")


class _Marker:
    """``@pytest.mark.tcap(...)``: the test's setup, call and teardown inside
    ``tcap.limits(...)``; a bad argument is that test's setup error."""

    def __init__(self, workers: int | None) -> None:
        self.workers = workers

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        mark = item.get_closest_marker("tcap")
        if mark is None:
            return
        from tcap import TcapError
        from tcap import limits as tcap_limits
        from tcap.errors import one_line

        flags = dict(mark.kwargs)
        if self.workers is not None:
            flags.setdefault("workers", self.workers)
        try:
            block = tcap_limits(*mark.args, **flags)
            block.__enter__()
        except TcapError as error:
            pytest.fail(f"@pytest.mark.tcap: {one_line(str(error))}", pytrace=False)
        item.stash[_LIMITS] = block

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, None, None]:
        yield
        block = item.stash.get(_LIMITS, None)
        if block is not None:
            del item.stash[_LIMITS]
            block.__exit__(None, None, None)

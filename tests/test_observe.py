"""tcap/_observe.py in this process, with real threads: busy threads counted
from their own CPU clocks, Python threads told apart, the rule's grace."""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="observation needs Linux's thread clocks")

OBSERVE = Path(__file__).resolve().parent.parent / "src" / "tcap" / "_observe.py"


def _module():  # type: ignore[no-untyped-def]
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("_observe_under_test", OBSERVE)
    assert spec is not None and spec.loader is not None
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Hashers:
    """Threads that compute without the GIL (hashlib releases it for large
    buffers), so ``count`` of them are busy at once on ``count`` CPUs."""

    def __init__(self, count: int) -> None:
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(count)]
        for thread in self.threads:
            thread.start()

    def run(self) -> None:
        data = os.urandom(1 << 20)
        while not self.stop.is_set():
            hashlib.sha256(data).digest()

    def ids(self) -> set[int]:
        return {t.native_id for t in self.threads if t.native_id is not None}

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


def _samples(observer, python, allowed, seconds):  # type: ignore[no-untyped-def]
    findings = []
    deadline = time.monotonic() + seconds
    me = threading.get_native_id()
    while time.monotonic() < deadline:
        found = observer.sample(python, (me,), allowed)
        if found is not None:
            findings.append(found)
        time.sleep(0.25)
    return findings


def test_busy_threads_that_are_not_python_threads_are_over_after_the_grace() -> None:
    module = _module()
    observer = module.Observer()
    assert observer.available
    hashers = Hashers(2)
    try:
        # The hashing threads passed as not Python's: what a C pool looks like.
        findings = _samples(observer, set(), lambda busy_python: 1, 1.6)
    finally:
        hashers.close()
    assert findings, observer.record()
    first = findings[0]
    assert first["threads"] == 2 and first["cap"] == 1
    assert first["seconds"] >= module.GRACE
    record = observer.record()
    assert record["peak"] == 2 and record["peak_other"] == 2 and record["python_peak"] == 0


def test_busy_python_threads_raise_the_allowance() -> None:
    module = _module()
    observer = module.Observer()
    hashers = Hashers(2)
    seen = []
    try:
        findings = _samples(observer, hashers.ids(), lambda busy_python: seen.append(busy_python) or busy_python, 1.6)
    finally:
        hashers.close()
    assert not findings
    assert max(seen) == 2  # both Python threads were busy, and allowed one thread each
    assert observer.record()["python_peak"] == 2


def test_idle_threads_are_not_busy() -> None:
    module = _module()
    observer = module.Observer()
    stop = threading.Event()
    sleepers = [threading.Thread(target=stop.wait, daemon=True) for _ in range(4)]
    for thread in sleepers:
        thread.start()
    try:
        findings = _samples(observer, set(), lambda busy_python: 0, 1.2)
    finally:
        stop.set()
    assert not findings
    assert observer.record()["peak"] == 0


def test_an_episode_shorter_than_the_grace_is_not_a_violation() -> None:
    module = _module()
    observer = module.Observer()
    me = threading.get_native_id()
    work = threading.Event()
    stop = threading.Event()

    def burst() -> None:
        data = os.urandom(1 << 20)
        while not stop.is_set():
            if work.wait(0.05):
                hashlib.sha256(data).digest()

    threads = [threading.Thread(target=burst, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    findings = []
    try:
        observer.sample(set(), (me,), lambda busy_python: 1)
        for _ in range(3):  # 0.3 s bursts of 2 busy threads, each followed by a quiet sample
            work.set()
            time.sleep(0.3)
            findings.append(observer.sample(set(), (me,), lambda busy_python: 1))
            work.clear()
            time.sleep(0.3)
            findings.append(observer.sample(set(), (me,), lambda busy_python: 1))
    finally:
        stop.set()
        work.set()
    assert findings == [None] * 6
    assert observer.record()["peak"] == 2  # the bursts were seen, just not long enough


def test_a_thread_clock_of_a_thread_that_is_gone_is_no_error() -> None:
    module = _module()
    assert module._run_seconds(1 << 30) is None  # above any pid_max: no such thread
    assert module.thread_name(threading.get_native_id())  # this thread has a name

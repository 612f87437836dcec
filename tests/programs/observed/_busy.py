"""How many native threads of this process are busy at once, measured by
the program itself (so a test can check its escape really ran, whatever
tcap says about it).

A thread is busy over a sample when it ran, or waited to run, for at least
half of it (/proc/self/task/TID/schedstat: time on the CPU, time on the run
queue).  The sampling thread leaves itself out.  Linux only.
"""

from __future__ import annotations

import os
import threading
import time


def _times() -> dict[int, int]:
    out = {}
    for name in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{name}/schedstat") as f:
                ran, waited = f.read().split()[:2]
        except (OSError, ValueError):
            continue
        out[int(name)] = int(ran) + int(waited)
    return out


class Busy:
    """Samples every ``interval`` seconds while running; ``peak`` is the most
    threads busy at once, ``seconds`` the time with at least ``over`` busy."""

    def __init__(self, interval: float = 0.1, over: int = 2) -> None:
        self.interval = interval
        self.over = over
        self.peak = 0
        self.seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="busy-meter", daemon=True)

    def _loop(self) -> None:
        me = threading.get_native_id()
        last, then = _times(), time.monotonic()
        while not self._stop.wait(self.interval):
            now, at = _times(), time.monotonic()
            span = (at - then) * 1e9
            busy = sum(1 for tid, t in now.items() if tid != me and t - last.get(tid, t) >= span / 2)
            self.peak = max(self.peak, busy)
            if busy >= self.over:
                self.seconds += at - then
            last, then = now, at

    def __enter__(self) -> Busy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def result(self) -> dict[str, float]:
        return {"busy_peak": self.peak, "busy_seconds": round(self.seconds, 2)}

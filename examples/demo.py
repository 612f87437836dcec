"""`make demo`: the same KMeans process pool without and with tcap."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
TCAP = str(BIN / "tcap")
WORKLOAD = [sys.executable, str(HERE / "kmeans_pool.py")]
PROFILE = ["-p", "kmeans", "--workers", "2"]


def timed(title: str, argv: list[str]) -> float:
    print(f"\n== {title}\n$ {' '.join(argv)}", flush=True)
    done = subprocess.run(argv, stderr=subprocess.PIPE, text=True, check=False)
    elapsed = None
    for line in done.stderr.splitlines():
        if line.startswith("ELAPSED "):
            elapsed = float(line.split()[1])
        else:
            print(line, file=sys.stderr)
    if done.returncode != 0 or elapsed is None:
        raise SystemExit(f"demo: {argv[0]} failed with exit code {done.returncode}")
    return elapsed


def main() -> int:
    cpus = len(os.sched_getaffinity(0))
    print(f"tcap demo on {cpus} CPUs: KMeans fits in a spawn process pool of 2 workers")
    plain = timed("1. default thread pools (no tcap)", WORKLOAD)
    print(f"\n== 2. what tcap will set\n$ tcap show {' '.join(PROFILE)}", flush=True)
    subprocess.run([TCAP, "show", *PROFILE], check=True)
    capped = timed("3. the same program under tcap", [TCAP, "run", *PROFILE, "--", *WORKLOAD])
    print(f"\ndefault pools {plain:.2f} s, under tcap {capped:.2f} s: {plain / capped:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

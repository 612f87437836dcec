"""Jupyter kernel start: a tcap kernelspec against a plain ipykernel one, start to ready."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import interleave, ratio_row

#: Target for the ratio of medians, tcap kernelspec / plain kernelspec.
TARGET = 1.05
PROFILE = "kmeans"
#: Kernelspec names: (label, name); the plain one is the baseline.
PLAIN = "bench-plain"
CASES = (
    ("plain ipykernel kernelspec", PLAIN),
    (f"tcap kernel install -p {PROFILE}", "bench-tcap"),
    (f"tcap kernel install -p {PROFILE} --freeze", "bench-tcap-frozen"),
)
#: Variables pointed at the benchmark's private directories.
PRIVATE = {
    "JUPYTER_PATH": "share/jupyter",
    "JUPYTER_DATA_DIR": "data",
    "JUPYTER_RUNTIME_DIR": "runtime",
    "JUPYTER_CONFIG_DIR": "jupyter-config",
    "IPYTHONDIR": "ipython",
    "XDG_CACHE_HOME": "cache",
    "XDG_CONFIG_HOME": "config",
}


def _install(root: str, python: str) -> None:
    """The three kernelspecs, into ``root/share/jupyter/kernels``."""
    from jupyter_client.kernelspec import KernelSpecManager

    plain = {
        "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python (plain, benchmark)",
        "language": "python",
        "interrupt_mode": "signal",
    }
    with tempfile.TemporaryDirectory() as source:
        with open(os.path.join(source, "kernel.json"), "w") as f:
            json.dump(plain, f)
        KernelSpecManager().install_kernel_spec(source, PLAIN, prefix=root)
    tcap = str(Path(python).parent / "tcap")
    for _, name in CASES[1:]:
        argv = [tcap, "kernel", "install", "-p", PROFILE, "--prefix", root, "--name", name]
        if name.endswith("frozen"):
            argv.append("--freeze")
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0 or done.stderr:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr[-500:]}")


def start_to_ready(name: str) -> float:
    """Seconds from start_kernel() until wait_for_ready() returns; then the
    kernel is killed (not timed: a graceful shutdown only takes longer)."""
    from jupyter_client.manager import KernelManager

    manager = KernelManager(kernel_name=name)
    with tempfile.TemporaryFile() as log:  # the kernel's output, shown if it fails
        start = time.perf_counter()
        manager.start_kernel(stdout=subprocess.DEVNULL, stderr=log.fileno())
        client = manager.blocking_client()
        client.start_channels()
        try:
            client.wait_for_ready(timeout=60)
            elapsed = time.perf_counter() - start
        except RuntimeError as failure:
            log.seek(0)
            raise RuntimeError(f"kernel {name}: {failure}: {log.read().decode()[-500:]}") from None
        finally:
            client.stop_channels()
            if manager.has_kernel:
                manager.shutdown_kernel(now=True)
    return elapsed


def run(rounds: int) -> str:
    python = sys.executable
    saved = dict(os.environ)
    try:
        with tempfile.TemporaryDirectory() as root:
            for variable, place in PRIVATE.items():
                os.environ[variable] = os.path.join(root, place)
                os.makedirs(os.environ[variable], exist_ok=True)
            for variable in ("PYTHONPATH", "TCAP_DEBUG", "TCAP_NO_CACHE", "TCAP_PROFILE_PATH"):
                os.environ.pop(variable, None)
            _install(root, python)
            cases = {label: lambda name=name: start_to_ready(name) for label, name in CASES}
            samples = interleave(cases, rounds)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    base = samples[CASES[0][0]]
    lines = [
        "## Jupyter kernel start",
        "",
        f"Start-to-ready of a Python kernel through jupyter_client, {rounds} interleaved rounds (cases "
        "shuffled each round, 3 warm-up rounds): the time from `KernelManager.start_kernel()` until the "
        "blocking client's `wait_for_ready()` returns, that is until the kernel has answered a "
        "`kernel_info` request and jupyter_client has drained its IOPub channel (it waits 0.2 s for "
        "silence there, in every case). The kernel is then killed, untimed. Every kernelspec runs the "
        "same interpreter; they are installed into a private prefix, with `JUPYTER_PATH`, the Jupyter "
        "data, runtime and config directories, `IPYTHONDIR`, `XDG_CACHE_HOME` and `XDG_CONFIG_HOME` "
        "pointing at temporary directories. The plain kernelspec is `[python, -m, ipykernel_launcher, -f, "
        f"{{connection_file}}]`; the tcap ones are what `tcap kernel install -p {PROFILE}` writes, with the "
        "default verification (`warn`). The difference is the median of the per-round differences "
        "(tcap minus plain, measured in the same round), with their range; the ratio is that of the "
        f"medians, with a target of at most {TARGET:.2f}. Both include jupyter_client's fixed 0.2 s wait, "
        "so the difference in milliseconds is the better measure of what tcap costs.",
        "",
        "| kernelspec | median ms (min–max) | difference ms (min–max) | ratio | target |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, _ in CASES:
        lines.append(ratio_row(label, samples[label], base, 0, TARGET, ratio_digits=3))
    lines += [
        "",
        "What a tcap kernelspec adds in front of ipykernel: one `python -m tcap run --kernel` that reads "
        "the cached plan (or, with `--freeze`, the plan stored next to `kernel.json`), sets the variables "
        "and execs the kernel in the same process; then, in the kernel, the probe's `sitecustomize` and "
        "`probe.py` (standard library only) and the `_tcap_probe` IPython extension, which registers the "
        "after-cell check and the `%tcap` magic. No numeric package is imported at start, so no check "
        "runs until the notebook imports one.",
        "",
    ]
    return "\n".join(lines)

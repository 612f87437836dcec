"""The probe works in a target interpreter that has numpy but no threadpoolctl
(another venv), and leaves the program's own imports untouched there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy
import pytest

SCRIPT = r"""
import ctypes, glob, os, sys, time
import numpy as np
a = np.ones((200, 200)); a @ a
lib = glob.glob(os.path.join(os.path.dirname(np.__file__), "..", "numpy.libs", "libscipy_openblas*"))
if not lib:
    sys.exit(77)
setter = ctypes.CDLL(lib[0]).scipy_openblas_set_num_threads64_  # raise the pool behind threadpoolctl's back
setter(6)
time.sleep(1.0)
print("threadpoolctl imported:", "threadpoolctl" in sys.modules)
print("pid", os.getpid())
"""


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A venv without pip or threadpoolctl, and a directory exposing only numpy."""
    root = tmp_path_factory.mktemp("foreign")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    only_numpy = root / "only-numpy"
    only_numpy.mkdir()
    site = Path(numpy.__file__).resolve().parent.parent
    for name in ("numpy", "numpy.libs"):
        if (site / name).exists():
            (only_numpy / name).symlink_to(site / name)
    return venv / "bin" / "python", only_numpy


def test_probe_warns_in_an_interpreter_without_threadpoolctl(iso, foreign) -> None:  # type: ignore[no-untyped-def]
    python, only_numpy = foreign
    check = subprocess.run(
        [str(python), "-c", "import threadpoolctl"], env=dict(iso.env, PYTHONPATH=str(only_numpy)),
        capture_output=True,
    )
    assert check.returncode != 0, "the foreign venv must not see threadpoolctl"
    command = [str(python), "-c", SCRIPT]
    result = iso.run("run", "--threads", "1", "--", *command, extra_env={"PYTHONPATH": str(only_numpy)})
    if result.returncode == 77:
        pytest.skip("numpy wheel without a bundled scipy-openblas")
    assert result.returncode == 0, result.stderr
    assert "threadpoolctl imported: False" in result.stdout
    pid = result.stdout.split("pid", 1)[1].split()[0]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("tcap: warning:")]
    assert len(warnings) == 1, result.stderr
    assert f"pid {pid} " in warnings[0]
    assert "openblas (blas) has 6 threads, cap 1" in warnings[0]
    assert os.path.exists(python)

"""tcap away from Linux, simulated by hiding what other systems lack: a
wrapper removes the CPU affinity calls (macOS, the BSDs, Windows), exec and
the signal waits (Windows), selects the psutil backend for process facts,
then runs tcap's real main(). The commands tcap starts are real."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import PYTHON, Isolated

pytest.importorskip("psutil")

AWAY = """
import os, signal, sys
for name in ("sched_getaffinity", "sched_setaffinity", "execv", "execve", "execvp", "execvpe", "pidfd_open"):
    if hasattr(os, name):
        delattr(os, name)
for name in ("pthread_sigmask", "sigtimedwait"):
    if hasattr(signal, name):
        delattr(signal, name)
os.environ["TCAP_PROCESS_FACTS"] = "psutil"
from tcap.cli import main
sys.exit(main(sys.argv[1:]))
"""


def away(iso: Isolated, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    script = iso.work / "away.py"
    script.write_text(AWAY)
    return subprocess.run([PYTHON, str(script), *args], env=iso.env, cwd=iso.work, capture_output=True, text=True,
                          timeout=120, **kwargs)


def test_without_cpu_affinity_tcap_sets_variables_only_and_says_so(iso: Isolated):
    shown = away(iso, "show", "--threads", "2")
    assert shown.returncode == 0, shown.stderr
    assert "note: this system has no CPU affinity (macOS, the BSDs, Windows): tcap sets the thread variables only" \
        in shown.stdout
    assert re.search(r"^VECLIB_MAXIMUM_THREADS\s+2\s", shown.stdout, re.M), shown.stdout
    assert "cpu set" not in shown.stdout
    pinned = away(iso, "run", "--cpus", "0", "--", PYTHON, "-c", "pass")
    assert pinned.returncode == 2 and "no CPU affinity mask to set" in pinned.stderr


def test_without_exec_the_command_is_a_child_and_its_exit_code_passes(iso: Isolated):
    result = away(iso, "run", "--threads", "1", "--", PYTHON, "-c",
                  "import os, sys; print(os.environ['OMP_NUM_THREADS'], os.getppid() != 1); sys.exit(7)")
    assert result.returncode == 7, result.stderr
    assert result.stdout == "1 True\n" and result.stderr == ""


def test_without_exec_ctrl_c_reaches_the_command_and_its_code_passes(iso: Isolated):
    script = iso.work / "away.py"
    script.write_text(AWAY)
    program = ("import sys, time\nprint('ready', flush=True)\ntry:\n    time.sleep(30)\nexcept KeyboardInterrupt:\n"
               "    print('interrupted', flush=True)\n    sys.exit(130)\n")
    # As from a terminal: SIGINT at its default (a shell's background job, as
    # this suite may be, starts with it ignored, and so would the program).
    proc = subprocess.Popen([PYTHON, str(script), "run", "--", PYTHON, "-c", program], env=iso.env, cwd=iso.work,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and out == "interrupted\n", (proc.returncode, out, err)
    assert "Traceback" not in err


def test_without_linux_calls_the_report_still_samples_with_psutil(iso: Isolated):
    result = away(iso, "run", "--report", "--", PYTHON, "-c", "import numpy, time; time.sleep(0.8)")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^tcap: verdict: all pools within caps \(1 process, 1 verified", result.stderr, re.M), \
        result.stderr
    assert sys.platform.startswith("linux")  # simulated: the real non-Linux runs are not tested here


def test_without_sigtimedwait_sigterm_to_tcap_is_forwarded(iso: Isolated):
    """macOS and PyPy have no sigtimedwait: a handler passes SIGTERM on."""
    script = iso.work / "away.py"
    script.write_text(AWAY)
    program = "import time\nprint('ready', flush=True)\ntime.sleep(30)\n"
    proc = subprocess.Popen([PYTHON, str(script), "run", "--", PYTHON, "-c", program], env=iso.env, cwd=iso.work,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)  # to tcap only, as a batch system would
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, (proc.returncode, err)

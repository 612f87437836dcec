"""Sharing's launch side: where the table lives, the first run's build limit
applied in-process, and what the probe changes in the program for it (the
SIGWINCH wake-up), run through the real ``tcap`` and real numpy/scikit-learn."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from conftest import PYTHON, Isolated
from tcap import _share
from tcap.launch import share_dir

pytest.importorskip("numpy")


@pytest.mark.parametrize("environ", [
    {"HOME": "/home/ana"},
    {"HOME": "/home/ana", "XDG_CACHE_HOME": "/var/cache/ana"},
    {"HOME": "/home/ana", "XDG_RUNTIME_DIR": "/run/user/1000"},
    {"HOME": "/home/ana", "XDG_RUNTIME_DIR": "relative/ignored", "XDG_CACHE_HOME": "/c"},
    {"HOME": "/home/ana", "XDG_RUNTIME_DIR": ""},
])
def test_the_launcher_and_the_probe_agree_where_the_table_lives(environ: dict[str, str]) -> None:
    # The probe computes it itself when no launcher started the launch (a static alias).
    assert share_dir(environ) == _share.share_dir(environ)
    assert os.path.isabs(share_dir(environ))


def openblas_limit() -> int | None:
    """numpy's OpenBLAS MAX_THREADS, as its config string says."""
    import numpy  # noqa: F401
    from threadpoolctl import threadpool_info

    from tcap import _inspect

    for pool in threadpool_info():
        if pool.get("internal_api") == "openblas" and "numpy" in pool["filepath"]:
            config = _inspect.openblas_config(pool["filepath"])
            return _inspect.max_threads(config) if config else None
    return None


FIT = """
import json, sys, time
import numpy, sklearn.cluster
from threadpoolctl import threadpool_info
time.sleep(1.0)  # past the probe's first checks
print(json.dumps([p["num_threads"] for p in threadpool_info() if p["user_api"] == "openmp"]))
"""


@pytest.mark.parametrize("share", ["busy", "off"])
def test_a_build_limit_learned_in_the_first_run_is_applied_in_that_process(iso: Isolated, share: str) -> None:
    pytest.importorskip("sklearn")
    limit = openblas_limit()
    if limit is None or limit >= 100:
        pytest.skip(f"numpy's OpenBLAS reports no MAX_THREADS under 100 ({limit})")
    program = iso.work / "fit.py"
    program.write_text(FIT)
    # A fresh cache: tcap has never seen this interpreter's libraries.
    first = iso.run("run", "--openmp", "100", "--share", share, "--", PYTHON, str(program), timeout=120)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == [limit]  # in this very process, not only in the next launches
    assert f"lowered to {limit} in this process" in first.stderr
    assert f"next launches of {PYTHON} cap openmp at {limit}" in first.stderr
    # The next launch plans for the limit from the start, and says nothing.
    second = iso.run("run", "--openmp", "100", "--share", share, "--", PYTHON, str(program), timeout=120)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout) == [limit]
    assert "lowered to" not in second.stderr.replace(f"--openmp 100 lowered to {limit}", "")


SIGNALS = """
import json, signal, sys, time
own = sys.argv[1] == "own"
if own:
    def handler(signum, frame):
        pass
    signal.signal(signal.SIGWINCH, handler)
import numpy
time.sleep(0.5)  # the probe's timer has started and joined the table
handler_now = signal.getsignal(signal.SIGWINCH)
print(json.dumps({"own": own and handler_now is handler, "default": handler_now == signal.SIG_DFL,
                  "name": getattr(handler_now, "__qualname__", str(handler_now))}))
"""


@pytest.mark.parametrize("case", ["own", "none"])
@pytest.mark.parametrize("share", ["busy", "off"])
def test_sharing_installs_no_signal_handler(iso: Isolated, case: str, share: str) -> None:
    program = iso.work / "signals.py"
    program.write_text(SIGNALS)
    result = iso.run("run", "--share", share, "--", PYTHON, str(program), case, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    seen = json.loads(result.stdout)
    if case == "own":
        assert seen["own"], seen  # the program's handler is never replaced
    else:
        assert seen["default"], seen  # nothing installed: the work reaches the main thread as a pending call


def test_a_program_without_numeric_imports_never_joins_the_table(iso: Isolated) -> None:
    runtime = iso.root / "runtime"
    runtime.mkdir(mode=0o700)
    code = "import os, sys, time; time.sleep(0.3); print('_tcap_share' in sys.modules)"
    result = iso.run("run", "--", PYTHON, "-c", code, extra_env={"XDG_RUNTIME_DIR": str(runtime)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"  # the launch's root loads nothing of sharing's before numeric work
    assert not (runtime / "tcap").exists() or not any((runtime / "tcap").iterdir())


def test_the_table_is_private_and_gone_when_the_launch_ends(iso: Isolated) -> None:
    runtime = iso.root / "runtime"
    runtime.mkdir(mode=0o700)
    code = ("import os, numpy, time, sys; time.sleep(0.5); t = sys.modules['_tcap_probe']._state['share_table']; "
            "st = os.stat(t.path); d = os.stat(os.path.dirname(t.path)); "
            "print(t.path, oct(st.st_mode & 0o777), oct(d.st_mode & 0o777))")
    result = iso.run("run", "--", PYTHON, "-c", code, extra_env={"XDG_RUNTIME_DIR": str(runtime)})
    assert result.returncode == 0, result.stderr
    path, mode, directory_mode = result.stdout.split()
    assert Path(path).parent == runtime / "tcap"
    assert mode == "0o600" and directory_mode == "0o700"
    assert not Path(path).exists()  # the launch's root removed it at exit


def test_a_table_left_by_a_killed_launch_is_swept_by_the_next(iso: Isolated) -> None:
    runtime = iso.root / "runtime"
    (runtime / "tcap").mkdir(parents=True, mode=0o700)
    stale = runtime / "tcap" / "share-999999-12345"  # pid 999999 does not run
    stale.write_bytes(bytes(_share.RECORD.size))
    stale.chmod(0o600)
    mine = runtime / "tcap" / f"share-{os.getpid()}-{_share.process_start(os.getpid())[0]}"  # type: ignore[index]
    mine.write_bytes(b"")
    code = "import numpy, time; time.sleep(0.4)"
    result = iso.run("run", "--", PYTHON, "-c", code, extra_env={"XDG_RUNTIME_DIR": str(runtime)})
    assert result.returncode == 0, result.stderr
    assert not stale.exists()
    assert mine.exists()  # a live launch's table stays
    mine.unlink()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


def test_the_launcher_and_the_probe_agree_on_the_division_variables() -> None:
    from tcap.launch import DIVISION_VARIABLES

    assert tuple(name for name, _ in _share.DIVISION_VARIABLES) == DIVISION_VARIABLES


CAPS = {"openmp": 2, "openblas": 2, "mkl": 2, "blis": 2}
BASE = "OMP_NUM_THREADS=,OPENBLAS_NUM_THREADS=2,MKL_NUM_THREADS=,BLIS_NUM_THREADS="


@pytest.mark.parametrize(("environ", "divided"), [
    ({"TCAP_SHARE_BASE": BASE, "OPENBLAS_NUM_THREADS": "2"}, None),  # as the launch gave it
    ({"TCAP_SHARE_BASE": BASE, "OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "1"}, "OMP_NUM_THREADS"),  # loky
    ({"TCAP_SHARE_BASE": BASE, "OPENBLAS_NUM_THREADS": "4"}, "OPENBLAS_NUM_THREADS"),  # inner_max_num_threads=4
    ({"TCAP_SHARE_BASE": BASE}, "OPENBLAS_NUM_THREADS"),  # unset by someone
    # tcap's own lowering at a start (TCAP_SHARED) is not someone else's division.
    ({"TCAP_SHARE_BASE": BASE, "OPENBLAS_NUM_THREADS": "1", "TCAP_SHARED": "OPENBLAS_NUM_THREADS=1/2"}, None),
    ({"OMP_NUM_THREADS": "1"}, "OMP_NUM_THREADS"),  # no base: a count below the cap
    ({"OMP_NUM_THREADS": "2"}, None),
])
def test_a_process_divided_by_someone_else_is_recognised(environ: dict[str, str], divided: str | None) -> None:
    assert _share.divided_by_others(environ, CAPS) == divided


JOBLIB_INNER = """
import json, os
from joblib import Parallel, delayed, parallel_config
from threadpoolctl import threadpool_info

def work(i):
    import numpy as np, time
    a = np.random.default_rng(i).random((300, 300))
    start = time.time()
    while time.time() - start < 1.5:
        a @ a
    return [p["num_threads"] for p in threadpool_info() if p["internal_api"] == "openblas"]

with parallel_config("loky", inner_max_num_threads=2):
    print(json.dumps(Parallel(n_jobs=2)(delayed(work)(i) for i in range(2))))
"""


def test_joblib_keeps_its_own_division_under_sharing(iso: Isolated) -> None:
    """inner_max_num_threads=2 with 2 workers on this machine: more threads
    than CPUs, but joblib's own choice: sharing counts the workers and
    leaves their pools at it."""
    pytest.importorskip("joblib")
    (iso.work / "inner.py").write_text(JOBLIB_INNER)
    result = iso.run("run", "--", PYTHON, "inner.py", timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [[2, 2], [2, 2]] or json.loads(result.stdout) == [[2], [2]]

"""Run-time CPU sharing end to end: the real ``tcap run`` on this 2-CPU
machine, with real pools of real workers that sample their own OpenBLAS pool
(threadpoolctl's ``threadpool_info``) after every matrix product and hand
back the timeline (tests/programs/share/sampler.py).

Every case runs one long task and one short one in two workers started
together.  Sharing (the default, ``share = "busy"``) must lower each
worker's pool to 1 while both are busy (after a settling time), give the
long one its 2 back soon after the short one ends, and never go above the
cap; ``--share off`` must leave the pools at 2 (the check that the timeline
can tell).  The launch's table lives in ``$XDG_RUNTIME_DIR/tcap`` (a private
directory of the test's) and must be gone when the launch ends.

Timings here are noisy (other work shares the 2 CPUs): the windows are
generous, and nothing is asserted about speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import PYTHON, Isolated
from tcap import _share

pytest.importorskip("numpy")
pytest.importorskip("threadpoolctl")

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or not os.path.exists("/proc/self/schedstat"),
                       reason="needs Linux"),
    pytest.mark.skipif(len(os.sched_getaffinity(0)) != 2 if hasattr(os, "sched_getaffinity") else True,
                       reason="the cases of a 2-CPU machine"),
]

PROGRAMS = Path(__file__).parent / "programs" / "share"
#: Seconds of BLAS work of the long and the short task.
LONG, SHORT = 5.5, 2.5
#: Seconds after both tasks started before both pools must be at 1.
SETTLE = 1.0
#: Seconds after the short task ended before the long one's pool must be back at 2.
BACK = 1.5
HANG = 60


@pytest.fixture
def share_iso(iso: Isolated) -> Isolated:
    """``iso`` with a private ``$XDG_RUNTIME_DIR`` (where the tables go) and
    the sharing programs on PYTHONPATH."""
    runtime = iso.root / "runtime"
    runtime.mkdir(mode=0o700)
    iso.env["XDG_RUNTIME_DIR"] = str(runtime)
    iso.env["PYTHONPATH"] = str(PROGRAMS)
    return iso


def tables(iso: Isolated) -> list[str]:
    """The share tables left in the test's runtime directory."""
    directory = Path(iso.env["XDG_RUNTIME_DIR"]) / "tcap"
    return sorted(os.listdir(directory)) if directory.is_dir() else []


def run(iso: Isolated, program: str, *args: str, options: tuple[str, ...] = (),
        timeout: float = HANG) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    """``tcap run OPTIONS -- python PROGRAM ARGS``: the program's JSON line and the result."""
    result = iso.run("run", *options, "--", PYTHON, str(PROGRAMS / program), *args, timeout=timeout)
    assert result.returncode == 0, (result.stdout, result.stderr)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, (result.stdout, result.stderr)
    return json.loads(lines[-1]), result


def sizes(result: dict[str, Any], first: float = 0.0, last: float = float("inf")) -> set[Any]:
    """The pool sizes the worker sampled between ``first`` and ``last``."""
    return {size for begin, end, size in result["timeline"] if end >= first and begin <= last}


def describe(*results: dict[str, Any]) -> str:
    return "\n".join(f"pid {r['pid']} {r['start']:.2f}-{r['end']:.2f} env {r['env']} gap {r.get('gap')}: " + ", ".join(
        f"{size} {begin:.2f}-{end:.2f}" for begin, end, size in r["timeline"]) for r in results)


def assert_shared(long: dict[str, Any], short: dict[str, Any], cap: int = 2, settle: float = SETTLE,
                  back: float | None = BACK, stays: bool = True) -> None:
    """Both pools at 1 while both tasks ran (after ``settle``), the long one
    back at ``cap`` within ``back`` of the short one's end (and staying
    there, with ``stays``), never above ``cap``."""
    story = describe(long, short)
    assert long["pid"] != short["pid"] or long["thread"] != short["thread"], story
    begin, end = max(long["start"], short["start"]) + settle, short["end"] - 0.05
    assert end - begin >= 0.4, f"the tasks did not run together long enough to tell:\n{story}"
    for result in (long, short):
        assert sizes(result) <= set(range(1, cap + 1)), f"a pool outside 1..{cap}:\n{story}"
        assert sizes(result, begin, end) == {1}, f"not lowered to 1 in {begin:.2f}-{end:.2f}:\n{story}"
    if back is None:
        return
    again = short["end"] + back
    assert long["end"] > again + 0.3, f"the long task ended too soon to tell:\n{story}"
    if stays:
        assert sizes(long, again) == {cap}, f"not back at {cap} from {again:.2f}:\n{story}"
    else:
        assert cap in sizes(long, short["end"], again), f"not back at {cap} by {again:.2f}:\n{story}"


def assert_left_alone(results: list[dict[str, Any]], size: int = 2) -> None:
    for result in results:
        assert sizes(result) == {size}, describe(*results)


def assert_no_table_after(iso: Isolated, data: dict[str, Any] | None = None) -> None:
    """The table was there while the program ran (when the program looked) and is gone now."""
    if data is not None and "tables" in data:
        assert len(data["tables"]) == 1 and data["tables"][0].startswith("share-"), data["tables"]
    assert tables(iso) == [], tables(iso)


# --- multiprocessing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("parent", ["numpy", "bare"])
def test_a_fork_pool_shares_the_two_cpus(share_iso: Isolated, parent: str) -> None:
    """Exec mode, warn, no flags; the parent with numpy loaded (its forked
    workers take their share at fork) or without (they join on their import)."""
    data, result = run(share_iso, "fork_pool.py", "fork", str(LONG), str(SHORT), parent)
    assert_shared(*data["results"])
    assert result.stderr == ""


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_spawn_pool_shares_the_two_cpus(share_iso: Isolated, method: str) -> None:
    data, result = run(share_iso, "fork_pool.py", method, str(LONG), str(SHORT), "numpy")
    assert_shared(*data["results"])
    assert result.stderr == ""
    assert_no_table_after(share_iso, data)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_with_share_off_the_pools_stay_at_two(share_iso: Isolated, method: str) -> None:
    data, result = run(share_iso, "fork_pool.py", method, str(SHORT), str(SHORT), "numpy",
                       options=("--share", "off"))
    assert_left_alone(data["results"])
    assert data["tables"] == [] and tables(share_iso) == []
    assert "TCAP_SHARE" not in json.dumps(data["results"])


def test_a_process_pool_executor_shares_the_two_cpus(share_iso: Isolated) -> None:
    data, result = run(share_iso, "executor.py", str(LONG), str(SHORT))
    assert_shared(*data["results"])
    assert result.stderr == ""
    assert_no_table_after(share_iso)


def test_python_threads_share_their_process_pool(share_iso: Isolated) -> None:
    """A ThreadPool(2) of Python threads each calling BLAS in one process:
    the process's BLAS pool is 1 while both threads are busy, 2 again after."""
    data, result = run(share_iso, "threads.py", str(LONG), str(SHORT))
    long, short = data["results"]
    assert long["pid"] == short["pid"] and long["thread"] != short["thread"], describe(long, short)
    assert_shared(long, short)
    assert result.stderr == ""


# --- supervised -----------------------------------------------------------------------------------


def test_a_fork_pool_shares_under_report(share_iso: Isolated) -> None:
    data, result = run(share_iso, "fork_pool.py", "fork", str(LONG), str(SHORT), "numpy", options=("--report",))
    assert_shared(*data["results"])
    assert "tcap: sharing: busy, 2 CPUs; up to 2 busy processes at once" in result.stderr, result.stderr
    assert_no_table_after(share_iso, data)


@pytest.mark.parametrize("parent", ["numpy", "bare"])
def test_a_fork_pool_shares_under_strict_and_stays_silent(share_iso: Isolated, parent: str) -> None:
    data, result = run(share_iso, "fork_pool.py", "fork", str(LONG), str(SHORT), parent,
                       options=("--verify", "strict"))
    assert_shared(*data["results"])
    assert result.stderr == ""
    assert_no_table_after(share_iso, data)


# --- the table ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("parent", ["numpy", "bare"])
def test_the_table_is_gone_after_an_exec_launch(share_iso: Isolated, parent: str) -> None:
    """Exec mode: the launch's root is the program itself; it removes the
    table when it exits, whether or not it loaded a numeric library itself
    (with "bare" only its forked workers did, and they made the table)."""
    data, _ = run(share_iso, "fork_pool.py", "fork", "1.0", "1.0", parent)
    assert_no_table_after(share_iso, data)


def test_the_table_goes_to_the_cache_without_a_runtime_dir(share_iso: Isolated) -> None:
    del share_iso.env["XDG_RUNTIME_DIR"]
    data, _ = run(share_iso, "fork_pool.py", "fork", "1.0", "1.0", "numpy")
    assert len(data["tables"]) == 1 and data["directory"] == str(share_iso.cache / "tcap" / "share"), data
    assert sorted(os.listdir(share_iso.cache / "tcap" / "share")) == []
    assert not (share_iso.root / "runtime" / "tcap").exists()


# --- SIGKILL -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["pool", "reap", "zombie"])
def test_a_killed_sibling_gives_its_share_back(share_iso: Isolated, tmp_path: Path, how: str) -> None:
    """Two forked workers busy; one is killed with SIGKILL: the survivor's
    pool is back at 2 within BACK s once the OS says the victim is gone (a
    Pool reaps its killed worker itself; "reap": the parent does at once).
    A victim left a zombie is recognised by /proc only after GONE s of
    silence (docs/sharing.md), so there the survivor waits that long more."""
    out = tmp_path / "out"
    out.mkdir()
    data, result = run(share_iso, "kill.py", str(LONG + (_share.GONE if how == "zombie" else 0)), "2.5", how,
                       str(out))
    survivor, victim = data["results"]
    assert (survivor["pid"], victim["pid"]) == (data["survivor"], data["victim"])
    killed = data["killed"]
    story = describe(survivor, victim) + f"\nkilled at {killed:.2f}"
    assert victim["end"] < killed + 0.3, story
    begin = max(survivor["start"], victim["start"]) + SETTLE
    assert killed - begin >= 0.4, story
    assert sizes(survivor, begin, killed - 0.05) == {1}, story
    again = killed + BACK + (_share.GONE if how == "zombie" else 0)
    assert sizes(survivor, again) == {2}, story
    assert survivor["end"] > again + 0.3, story
    assert result.stderr == ""


# --- joblib (loky) -----------------------------------------------------------------------------------


def test_joblib_pools_loky_lowered_are_never_raised(share_iso: Isolated) -> None:
    """loky gives each worker OPENBLAS_NUM_THREADS=1 (inner_max_num_threads=1):
    sharing must keep it at 1, also once the sibling has finished."""
    pytest.importorskip("joblib")
    data, result = run(share_iso, "joblib_parallel.py", str(LONG), str(SHORT), "1")
    long, short = data["results"]
    assert long["pid"] != short["pid"], describe(long, short)
    assert long["env"]["OPENBLAS_NUM_THREADS"] == "1", long["env"]
    assert_left_alone(data["results"], 1)
    assert long["end"] > short["end"] + BACK + 0.3, describe(long, short)
    assert result.stderr == ""


def test_joblib_workers_with_two_inner_threads_keep_joblibs_division(share_iso: Isolated) -> None:
    """inner_max_num_threads=2 is joblib's division (loky puts it in its
    workers' variables): sharing counts the workers and resizes none of their
    pools, even with more threads than CPUs (docs/sharing.md)."""
    pytest.importorskip("joblib")
    data, result = run(share_iso, "joblib_parallel.py", str(LONG), str(SHORT), "2")
    assert_left_alone(data["results"])
    assert result.stderr == ""


def test_joblib_with_share_off_keeps_two_inner_threads(share_iso: Isolated) -> None:
    pytest.importorskip("joblib")
    data, _ = run(share_iso, "joblib_parallel.py", str(SHORT), str(SHORT), "2", options=("--share", "off"))
    assert_left_alone(data["results"])


# --- Dask ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("environ", ["clear", "dask"])
def test_a_dask_local_cluster_shares_the_two_cpus(share_iso: Isolated, environ: str) -> None:
    """Two worker processes of one thread.  Dask itself starts its workers
    with OMP/MKL/OPENBLAS_NUM_THREADS=1 ("dask"): sharing must keep that 1
    (never raise a pool the program lowered); with Dask's pre-spawn
    environment emptied ("clear") the pools share the two CPUs."""
    pytest.importorskip("distributed")
    data, _ = run(share_iso, "dask_cluster.py", str(LONG), str(SHORT), environ)
    long, short = data["results"]
    assert long["pid"] != short["pid"] and long["ppid"] == short["ppid"], describe(long, short)
    if environ == "clear":
        # An idle Dask worker is busy now and then (its event loop's
        # periodic work): the long one gets its 2 back, not for good.
        assert_shared(long, short, stays=False)
    else:
        assert long["env"]["OPENBLAS_NUM_THREADS"] == "1", long["env"]
        assert_left_alone([long, short], 1)
        assert long["end"] > short["end"] + BACK + 0.3, describe(long, short)
    assert_no_table_after(share_iso)


# --- pytest-xdist --------------------------------------------------------------------------------------

XDIST_TESTS = """
import os

import pytest

import sampler


@pytest.mark.parametrize("seconds", [{long}, {short}])
def test_work(seconds):
    sampler.write(os.environ["SHARE_OUT"], dict(sampler.busy(seconds), worker=os.environ["PYTEST_XDIST_WORKER"]))
"""


@pytest.mark.parametrize("share", ["busy", "off"])
def test_pytest_xdist_workers_share_the_two_cpus(share_iso: Isolated, tmp_path: Path, share: str) -> None:
    """``pytest -n 2`` over two tests of BLAS work.  Only the lowering is
    asserted: an xdist worker done with its tests keeps its main thread on a
    CPU until the session ends (measured without tcap too), so it rightly
    stays busy and the long test's pool stays at 1."""
    pytest.importorskip("xdist")
    suite = tmp_path / "suite"
    out = tmp_path / "out"
    suite.mkdir()
    out.mkdir()
    (suite / "pytest.ini").write_text("[pytest]\n")
    (suite / "test_work.py").write_text(XDIST_TESTS.format(long=LONG, short=SHORT))
    share_iso.env["SHARE_OUT"] = str(out)
    result = share_iso.run("run", "--share", share, "--", PYTHON, "-m", "pytest", "-q", "-n", "2", "-p",
                           "no:cacheprovider", "--rootdir", str(suite), "-c", str(suite / "pytest.ini"),
                           str(suite / "test_work.py"), timeout=HANG, cwd=suite)
    assert result.returncode == 0, (result.stdout, result.stderr)
    results = sorted((json.loads(path.read_text()) for path in out.glob("*.json")), key=lambda r: -r["end"])
    assert len(results) == 2 and results[0]["worker"] != results[1]["worker"], results
    if share == "busy":
        assert_shared(results[0], results[1], back=None)
    else:
        assert_left_alone(results)
    assert tables(share_iso) == []


# --- a Jupyter kernel ----------------------------------------------------------------------------------

KERNEL_CELL = """
import json, multiprocessing, sys
sys.path.insert(0, {programs!r})
import numpy, sampler
with multiprocessing.get_context("fork").Pool(2) as pool:
    results = pool.map(sampler.task, [{long}, {short}], chunksize=1)
print(json.dumps(results))
"""


@pytest.fixture
def kernel_env(share_iso: Isolated, monkeypatch: pytest.MonkeyPatch) -> Iterator[Isolated]:
    """Private Jupyter directories, and ``os.environ`` the isolated one
    (jupyter_client starts kernels with it)."""
    pytest.importorskip("jupyter_client")
    pytest.importorskip("ipykernel")
    root = share_iso.root
    (root / "jupyter-runtime").mkdir()
    share_iso.env.update(JUPYTER_PATH=str(root / "prefix" / "share" / "jupyter"),
                         JUPYTER_DATA_DIR=str(root / "jupyter-data"),
                         JUPYTER_RUNTIME_DIR=str(root / "jupyter-runtime"),
                         JUPYTER_CONFIG_DIR=str(root / "jupyter-config"), IPYTHONDIR=str(root / "ipython"))
    share_iso.env.pop("JUPYTER_PREFER_ENV_PATH", None)
    share_iso.env.pop("JUPYTER_PLATFORM_DIRS", None)
    for key in list(os.environ):
        if key not in share_iso.env:
            monkeypatch.delenv(key)
    for key, value in share_iso.env.items():
        monkeypatch.setenv(key, value)
    yield share_iso


@pytest.mark.parametrize("share", ["busy", "off"])
def test_a_fork_pool_in_a_jupyter_kernel_shares_the_two_cpus(kernel_env: Isolated, share: str) -> None:
    from jupyter_client.manager import KernelManager

    name = f"tk-share-{share}"
    installed = kernel_env.run("kernel", "install", "--share", share, "--name", name,
                               "--prefix", str(kernel_env.root / "prefix"))
    assert installed.returncode == 0, installed.stderr
    km = KernelManager(kernel_name=name, connection_file=str(kernel_env.root / "jupyter-runtime" / "k.json"))
    km.start_kernel()
    kc = None
    outputs: list[str] = []
    try:
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=HANG)

        def hook(message: dict[str, Any]) -> None:
            if message["msg_type"] == "stream":
                outputs.append(message["content"]["text"])
            elif message["msg_type"] == "error":
                outputs.append("\n".join(message["content"]["traceback"]))

        reply = kc.execute_interactive(KERNEL_CELL.format(programs=str(PROGRAMS), long=LONG, short=SHORT),
                                       timeout=HANG, output_hook=hook)
        assert reply["content"]["status"] == "ok", outputs
        results = json.loads("".join(outputs).strip().splitlines()[-1])
        if share == "busy":
            assert_shared(*results)
        else:
            assert_left_alone(results)
        assert "tcap:" not in "".join(outputs), outputs
    finally:
        if kc is not None:
            kc.stop_channels()
        if km.has_kernel:
            km.shutdown_kernel(now=False)
    deadline = time.monotonic() + 10
    while tables(kernel_env) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert tables(kernel_env) == []


# --- never above the cap --------------------------------------------------------------------------------


def test_a_pool_capped_at_one_stays_at_one_when_alone(share_iso: Isolated) -> None:
    """``--blas 1``: the cap is a ceiling; the long worker alone again stays at 1."""
    data, result = run(share_iso, "fork_pool.py", "fork", str(SHORT + 1.5), "1.0", "numpy",
                       options=("--blas", "1"))
    assert_left_alone(data["results"], 1)
    assert result.stderr == ""


def test_a_single_busy_process_keeps_its_pool(share_iso: Isolated) -> None:
    """Alone in its launch, a process keeps both CPUs all along."""
    data, result = run(share_iso, "sampler.py", "2.0")
    assert_left_alone(data["results"])
    assert result.stderr == ""
    assert tables(share_iso) == []

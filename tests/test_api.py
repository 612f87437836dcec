"""tcap.apply, tcap.limits and %tcap apply, in real processes tcap did not start.

Each test runs a real Python program (or a real notebook on a plain
ipykernel, through nbclient) in an isolated environment: no tcap launcher,
no tcap kernelspec; the program itself calls the API.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from conftest import PYTHON, Isolated

CPUS = len(os.sched_getaffinity(0))
POOLS = "sorted((p['internal_api'], p['num_threads']) for p in threadpoolctl.threadpool_info())"


def run_program(iso: Isolated, code: str, *, env: dict[str, str] | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
    path = iso.work / "program.py"
    path.write_text(textwrap.dedent(code))
    return subprocess.run([PYTHON, str(path)], env={**iso.env, **(env or {})}, cwd=iso.work,
                          capture_output=True, text=True, timeout=timeout)


def lines_of(stdout: str) -> dict[str, Any]:
    """The program's ``NAME=json`` lines."""
    found = {}
    for line in stdout.splitlines():
        name, eq, value = line.partition("=")
        if eq and name.isidentifier():
            found[name] = json.loads(value)
    return found


def test_apply_before_and_after_import_numpy(iso: Isolated) -> None:
    """Pools loaded before apply are set; pools loaded after follow the variables."""
    result = run_program(iso, f"""
        import json, os
        import numpy, threadpoolctl
        print("before=" + json.dumps({POOLS}))
        import tcap
        applied = tcap.apply("serial")
        print("after=" + json.dumps({POOLS}))
        import sklearn.cluster, scipy.linalg  # libgomp and scipy's OpenBLAS load after apply
        print("later=" + json.dumps({POOLS}))
        print("changes=" + json.dumps([[p.library, p.before, p.after, p.cap] for p in applied.pools]))
        print("omp=" + json.dumps(os.environ.get("OMP_NUM_THREADS")))
        print("text=" + json.dumps(str(applied)))
    """)
    assert result.returncode == 0, result.stderr
    seen = lines_of(result.stdout)
    assert {n for _, n in seen["before"]} == {CPUS}
    assert seen["after"] and all(n == 1 for _, n in seen["after"])
    assert len(seen["later"]) > len(seen["after"]) and all(n == 1 for _, n in seen["later"])
    assert ["openblas", CPUS, 1, 1] in seen["changes"]
    assert seen["omp"] == "1"
    assert "applied profile serial" in seen["text"] and "openblas (blas): " in seen["text"]
    assert "tcap: warning" not in result.stderr  # a clean program stays silent


def test_a_later_escape_is_warned_and_workers_inherit(iso: Isolated) -> None:
    """After apply the probe runs in-process (an escape is warned) and in the
    processes started afterwards (their pools are at the caps)."""
    result = run_program(iso, f"""
        import json, multiprocessing, sys, time
        import tcap
        tcap.apply("serial")
        import numpy, threadpoolctl

        def work(_):
            import sys, threadpoolctl
            return {POOLS}, "_tcap_probe" in sys.modules

        if __name__ == "__main__":
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                pools, probed = pool.map(work, [0])[0]
            print("worker=" + json.dumps(pools))
            print("probed=" + json.dumps(probed))
            sys.stdout.flush()
            threadpoolctl.threadpool_limits(2, user_api="blas")
            time.sleep(1.5)
    """)
    assert result.returncode == 0, result.stderr
    seen = lines_of(result.stdout)
    assert seen["worker"] and all(n == 1 for _, n in seen["worker"])
    assert seen["probed"] is True
    assert "openblas (blas) has 2 threads, cap 1 [profile serial]" in result.stderr


def test_a_bad_profile_changes_nothing(iso: Isolated) -> None:
    result = run_program(iso, f"""
        import json, os
        import numpy, threadpoolctl
        import tcap
        before = dict(os.environ)
        try:
            tcap.apply("no-such-profile")
        except tcap.TcapError as error:
            print("error=" + json.dumps(str(error)))
        try:
            tcap.apply(threads=True)
        except tcap.TcapError as error:
            print("typed=" + json.dumps(str(error)))
        print("same=" + json.dumps(dict(os.environ) == before))
        print("pools=" + json.dumps({POOLS}))
        print("probe=" + json.dumps("_tcap_probe" in __import__("sys").modules))
    """)
    assert result.returncode == 0, result.stderr
    seen = lines_of(result.stdout)
    assert "no-such-profile" in seen["error"] and "\n" not in seen["error"]
    assert "threads" in seen["typed"]
    assert seen["same"] is True and seen["probe"] is False
    assert {n for _, n in seen["pools"]} == {CPUS}


def test_the_site_policy_holds(iso: Isolated) -> None:
    (iso.site / "policy.toml").write_text("max_threads = 1\n")
    result = run_program(iso, f"""
        import json
        import numpy, threadpoolctl
        import tcap
        applied = tcap.apply(threads=2)
        print("caps=" + json.dumps(applied.caps["blas"]))
        print("pools=" + json.dumps({POOLS}))
    """)
    assert result.returncode == 0, result.stderr
    seen = lines_of(result.stdout)
    assert seen["caps"] == 1
    assert {n for _, n in seen["pools"]} == {1}


@pytest.mark.skipif(CPUS < 2, reason="needs 2 CPUs to pin to one")
def test_apply_pins_every_thread(iso: Isolated) -> None:
    """The affinity is per thread: pool threads started before apply move too."""
    result = run_program(iso, """
        import json, os
        import numpy
        a = numpy.ones((300, 300)); a @ a  # OpenBLAS starts its threads
        import tcap
        applied = tcap.apply(cpus="first:1")
        masks = sorted({tuple(sorted(os.sched_getaffinity(int(t)))) for t in os.listdir("/proc/self/task")})
        print("masks=" + json.dumps(masks))
        print("pinned=" + json.dumps(applied.pinned))
        print("cpus=" + json.dumps(os.environ.get("TCAP_CPUS")))
    """)
    assert result.returncode == 0, result.stderr
    seen = lines_of(result.stdout)
    first = min(os.sched_getaffinity(0))
    assert seen["masks"] == [[first]]
    assert seen["pinned"] == [first]
    assert seen["cpus"] == str(first)


def test_registry_pools_set_or_said_fixed(iso: Isolated) -> None:
    """numexpr is resized; Numba's pool is fixed since import: said once, with
    what to do, and the probe does not warn about it again."""
    result = run_program(iso, """
        import json, time
        import numexpr, numba
        import tcap
        applied = tcap.apply("serial")
        print("numexpr=" + json.dumps(numexpr.get_num_threads()))
        print("changes=" + json.dumps([[p.library, p.before, p.after] for p in applied.pools]))
        print("cannot=" + json.dumps([[c.library, c.what, c.instead] for c in applied.cannot]))
        time.sleep(1.2)
    """)
    assert result.returncode == 0, result.stderr
    seen = lines_of(result.stdout)
    assert seen["numexpr"] == 1
    assert ["numexpr", CPUS, 1] in seen["changes"]
    numba = [item for item in seen["cannot"] if item[0] == "numba"]
    if CPUS > 1:
        assert numba and f"fixed at {CPUS} since import" in numba[0][1]
        assert "tcap kernel install -p serial" in numba[0][2] and "numba.set_num_threads" in numba[0][2]
    assert "numba (numba) has" not in result.stderr


def test_verify_off_stops_the_probe(iso: Isolated) -> None:
    result = run_program(iso, """
        import json, os, sys, time
        import numpy, threadpoolctl
        import tcap
        tcap.apply("serial")
        tcap.apply("serial", verify="off")
        print("env=" + json.dumps(sorted(k for k in os.environ if k.startswith("TCAP_"))))
        print("path=" + json.dumps("_bootstrap" in os.environ.get("PYTHONPATH", "")))
        threadpoolctl.threadpool_limits(2)
        time.sleep(1.2)
    """)
    assert result.returncode == 0, result.stderr
    seen = lines_of(result.stdout)
    assert seen["env"] == [] and seen["path"] is False
    assert "tcap: warning" not in result.stderr


def test_strict_runs_as_warn_in_process(iso: Isolated) -> None:
    result = run_program(iso, """
        import tcap
        applied = tcap.apply("serial", verify="strict")
        print(applied.verify)
        print(applied.notes[-1])
    """)
    assert result.returncode == 0, result.stderr
    verify, note = result.stdout.splitlines()
    assert verify == "warn" and "supervise" in note


def test_limits_restores_and_decorates(iso: Isolated) -> None:
    result = run_program(iso, f"""
        import json, os
        import numpy, numexpr, threadpoolctl
        import tcap

        block = tcap.limits("serial")
        with block:
            print("inside=" + json.dumps({POOLS} + [["numexpr", numexpr.get_num_threads()]]))
            print("env=" + json.dumps(os.environ.get("OPENBLAS_NUM_THREADS")))
            with tcap.limits(threads=2):
                print("nested=" + json.dumps({POOLS}))
            print("back=" + json.dumps({POOLS}))
        print("after=" + json.dumps({POOLS} + [["numexpr", numexpr.get_num_threads()]]))
        print("env_after=" + json.dumps(os.environ.get("OPENBLAS_NUM_THREADS")))

        @tcap.limits(blas=1)
        def fit():
            return {POOLS}

        print("decorated=" + json.dumps(fit()))
        print("again=" + json.dumps(fit()))
        print("restored=" + json.dumps({POOLS}))
    """)
    assert result.returncode == 0, result.stderr
    seen = lines_of(result.stdout)
    assert {n for _, n in seen["inside"]} == {1}
    assert seen["env"] == "1" and seen["env_after"] is None
    assert {n for _, n in seen["nested"]} == {min(2, CPUS)}
    assert {n for _, n in seen["back"]} == {1}
    assert {n for _, n in seen["after"]} == {CPUS}
    assert seen["decorated"] == seen["again"] and {n for _, n in seen["decorated"]} == {1}
    assert {n for _, n in seen["restored"]} == {CPUS}


def test_limits_raises_at_construction_on_a_bad_profile(iso: Isolated) -> None:
    result = run_program(iso, """
        import tcap
        try:
            tcap.limits("no-such-profile")
        except tcap.TcapError as error:
            print("error")
    """)
    assert result.stdout.strip() == "error", result.stderr


# -- notebooks: a plain ipykernel, %load_ext tcap, %tcap apply -------------

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")


def run_notebook(iso: Isolated, cells: list[str]) -> list[dict[str, str]]:
    """Execute ``cells`` on the plain ``python3`` kernel (this interpreter's
    ipykernel, no tcap kernelspec); each cell's stdout, stderr and result."""
    from nbformat.v4 import new_code_cell, new_notebook

    notebook = new_notebook(cells=[new_code_cell(source) for source in cells])
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(iso.env)  # the kernel inherits the isolated environment
    try:
        nbclient.NotebookClient(notebook, kernel_name="python3", timeout=120,
                                resources={"metadata": {"path": str(iso.work)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    outputs = []
    for cell in notebook.cells:
        texts = {"stdout": "", "stderr": "", "result": ""}
        for out in cell.outputs:
            if out.output_type == "stream":
                texts[out.name] += out.text
            elif out.output_type == "execute_result":
                texts["result"] += out.data.get("text/plain", "")
        outputs.append(texts)
    return outputs


def test_notebook_on_a_plain_kernel(iso: Isolated) -> None:
    """The issue's notebook: pools imported before and after %tcap apply are
    at 1, a later escape is warned in that cell's output, %tcap shows the table."""
    outputs = run_notebook(iso, [
        "import json, os, sys, numpy, threadpoolctl\n"
        f"print(json.dumps({POOLS})); print('_tcap_probe' in sys.modules, os.environ.get('TCAP_PROBE'))",
        "%load_ext tcap\n%tcap apply serial",
        f"import sklearn.cluster\nprint(json.dumps({POOLS}))",
        "threadpoolctl.threadpool_limits(2, user_api='blas'); None",
        "%tcap",
    ])
    before = json.loads(outputs[0]["stdout"].splitlines()[0])
    assert {n for _, n in before} == {CPUS}
    assert outputs[0]["stdout"].splitlines()[1] == "False None"  # a plain kernel: no probe, no tcap variables
    assert "applied profile serial" in outputs[1]["stdout"] and "openblas (blas): " in outputs[1]["stdout"]
    after = json.loads(outputs[2]["stdout"])
    assert len(after) > len(before) and {n for _, n in after} == {1}
    assert outputs[2]["stderr"] == ""
    assert "openblas (blas) has 2 threads, cap 1 [profile serial]" in outputs[3]["stderr"]
    table = outputs[4]["stdout"]
    assert "tcap: profile serial, verify warn" in table
    assert any(line.split()[:1] == ["openblas"] and "OVER" in line for line in table.splitlines())


def test_notebook_tcap_apply_with_flags_and_errors(iso: Isolated) -> None:
    outputs = run_notebook(iso, [
        "%load_ext tcap",
        "%tcap apply kmeans --bogus 2",
        "%tcap apply kmeans --workers",
        "%tcap apply kmeans --workers= --threads 2",
        "import numpy, threadpoolctl, json, os\n%tcap apply kmeans --workers 2\n"
        f"print(json.dumps({POOLS}), os.environ['OPENBLAS_NUM_THREADS'])",
        "import tcap\ntcap.apply('serial', verify='off')",
    ])
    assert outputs[1]["stdout"].startswith("tcap: error: %tcap apply: unknown option --bogus")
    assert outputs[2]["stdout"].strip() == "tcap: error: %tcap apply: --workers needs a value"
    assert outputs[3]["stdout"].strip() == "tcap: error: %tcap apply: --workers needs a value"  # an empty --workers=
    assert "applied profile kmeans" in outputs[4]["stdout"]
    pools, cap = outputs[4]["stdout"].splitlines()[-1].rsplit(" ", 1)
    assert int(cap) == max(1, CPUS // 2) and {n for _, n in json.loads(pools)} == {int(cap)}
    assert "applied profile serial" in outputs[5]["result"]  # the Applied shown as text


def test_a_second_apply_plans_from_before_the_first(iso: Isolated) -> None:
    """The variables and the affinity the first apply set are tcap's, not the
    user's: a second apply plans as if the first had not happened."""
    result = run_program(iso, f"""
        import json, os
        import numpy, threadpoolctl
        import tcap
        tcap.apply("serial", cpus="first:1")
        second = tcap.apply("default")
        print("omp=" + json.dumps(os.environ.get("OMP_NUM_THREADS")))
        print("cpus=" + json.dumps(sorted(os.sched_getaffinity(0))))
        print("caps=" + json.dumps(second.caps["blas"]))
        print("pools=" + json.dumps({POOLS}))
    """)
    assert result.returncode == 0, result.stderr
    seen = lines_of(result.stdout)
    assert seen["omp"] is None
    assert seen["cpus"] == sorted(os.sched_getaffinity(0))
    assert seen["caps"] == CPUS and {n for _, n in seen["pools"]} == {CPUS}


def test_an_inherited_variable_stays_the_users(iso: Isolated) -> None:
    result = run_program(iso, """
        import os
        import tcap
        tcap.apply("default")
        tcap.apply("default")
        print(os.environ.get("OMP_NUM_THREADS"))
    """, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"


MYPY = Path(PYTHON).parent / "mypy"


@pytest.mark.skipif(not MYPY.exists(), reason="mypy (the dev extra) is not installed")
def test_the_api_is_typed_for_mypy_strict(tmp_path: Path) -> None:
    """A user's script type-checks against tcap's API (py.typed), and a
    wrong call is caught."""
    script = tmp_path / "user.py"
    good = textwrap.dedent("""
        import tcap

        applied: tcap.Applied = tcap.apply("serial", workers=2)
        caps: dict[str, int] = applied.caps
        changed = [pool.before - pool.after for pool in applied.pools]
        with tcap.limits(threads=1) as block:
            print(block.caps["blas"], [item.instead for item in applied.cannot])

        @tcap.limits("serial")
        def fit() -> int:
            return 1

        print(fit() + 1, changed, caps)
    """)
    script.write_text(good)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYPY")}
    run = subprocess.run([str(MYPY), "--strict", "--no-incremental", str(script)], capture_output=True,
                         text=True, cwd=tmp_path, env=env, timeout=300)
    assert run.returncode == 0, run.stdout
    script.write_text(good + "tcap.apply(threads=[1])\n")
    run = subprocess.run([str(MYPY), "--strict", "--no-incremental", str(script)], capture_output=True,
                         text=True, cwd=tmp_path, env=env, timeout=300)
    assert run.returncode == 1 and '"threads" to "apply"' in run.stdout


def test_limits_raising_the_caps_on_purpose_is_no_violation(iso: Isolated) -> None:
    """With the probe running, a limits block's caps are the probe's for the
    block: raising them on purpose is silent, the same raise after it is not."""
    result = run_program(iso, """
        import sys, time
        import numpy, threadpoolctl
        import tcap
        tcap.apply("serial")
        with tcap.limits(threads=2):
            time.sleep(1.2)
        print("left", file=sys.stderr, flush=True)
        threadpoolctl.threadpool_limits(2, user_api="blas")
        time.sleep(2.5)
    """)
    assert result.returncode == 0, result.stderr
    inside, _, after = result.stderr.partition("left\n")
    assert "tcap: warning" not in inside
    assert "openblas (blas) has 2 threads, cap 1" in after


def test_notebook_apply_without_load_ext(iso: Isolated) -> None:
    outputs = run_notebook(iso, [
        "import numpy, threadpoolctl, tcap\ntcap.apply('serial'); None",
        "threadpoolctl.threadpool_limits(2, user_api='blas'); None",
        "%tcap",
    ])
    assert "openblas (blas) has 2 threads, cap 1 [profile serial]" in outputs[1]["stderr"]
    assert "tcap: profile serial, verify warn" in outputs[2]["stdout"]


@pytest.mark.parametrize("verify", ["warn", "off"])
def test_auto_placement_books_and_pins(iso: Isolated, verify: str) -> None:
    bookings = iso.root / "bookings"
    result = run_program(iso, f"""
        import json, os, subprocess, sys
        import tcap
        applied = tcap.apply(cpus="auto:1", verify="{verify}")
        print("pinned=" + json.dumps(applied.pinned))
        print("mask=" + json.dumps(sorted(os.sched_getaffinity(0))))
        listed = subprocess.run([os.path.join(os.path.dirname(sys.executable), "tcap"), "bookings", "--json"],
                                capture_output=True, text=True)
        print("booked=" + json.dumps([b["cpus"] for b in json.loads(listed.stdout)["bookings"]
                                      if os.getpid() in b["pids"]]))
    """, env={"TCAP_BOOKINGS_DIR": str(bookings)})
    assert result.returncode == 0, result.stderr
    seen = lines_of(result.stdout)
    assert len(seen["pinned"]) == 1 and seen["mask"] == seen["pinned"]
    assert seen["booked"] == [seen["pinned"]]

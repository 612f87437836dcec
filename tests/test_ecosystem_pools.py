"""The wider ecosystem's pools in the registry, with the real libraries:
Arrow's CPU and I/O pools, OpenCV, faiss and tokenizers (rayon) read
through their own APIs (or, for rayon, the variables rayon reads), capped
where a variable exists, each raise caught in the main process and in spawn
and fork workers, enforce where the library allows; ONNX Runtime, LightGBM,
XGBoost and JAX listed as verified by observation. faiss and JAX are not
test dependencies: their tests skip, with the reason, where they are missing.

Each row's `spare` (is the calling thread one of the pool's threads?) is
measured here too: the new OS threads a parallel call starts are the pool's
size less `spare`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PYTHON, Isolated, in_one_worker
from tcap import _pools

#: How a program raises each pool over a cap of 1, and the pool's name in warnings.
RAISES = {
    "pyarrow": ("import pyarrow as pa; pa.set_cpu_count(2)", r"arrow \(cpu\)"),
    "cv2": ("import cv2; cv2.setNumThreads(2)", "opencv"),
    # OpenMP keeps the setting per thread: read on the main thread when it
    # runs Python, here between the searches that use it.
    "faiss": ("import faiss, numpy, time; faiss.omp_set_num_threads(2)\n"
              "index = faiss.IndexFlatL2(8); index.add(numpy.ones((1000, 8), 'float32')); start = time.time()\n"
              "while time.time() - start < 1.0: index.search(numpy.ones((50, 8), 'float32'), 1)", "faiss"),
    "tokenizers": ("import os; os.environ['RAYON_NUM_THREADS'] = '2'; import tokenizers", r"tokenizers \(rayon\)"),
}
#: Each library used within a cap of 1: must stay silent (warn and strict).
ONNX_MODEL = """
import numpy, onnx, onnx.helper as h, onnxruntime
w = h.make_tensor("W", onnx.TensorProto.FLOAT, [64, 64], numpy.ones(64 * 64, "float32"))
graph = h.make_graph([h.make_node("MatMul", ["X", "W"], ["Y"])], "g",
                     [h.make_tensor_value_info("X", onnx.TensorProto.FLOAT, [64, 64])],
                     [h.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, [64, 64])], [w])
model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]); model.ir_version = 8
"""
CLEAN = {
    "pyarrow": "import pyarrow as pa, pyarrow.compute as pc, numpy\n"
               "t = pa.table({'k': numpy.arange(200000) % 7, 'a': numpy.ones(200000)})\n"
               "t.group_by('k').aggregate([('a', 'sum')])",
    "cv2": "import cv2, numpy; cv2.GaussianBlur(numpy.zeros((500, 500), numpy.uint8), (9, 9), 0)",
    "faiss": "import faiss, numpy\nindex = faiss.IndexFlatL2(8); index.add(numpy.ones((1000, 8), 'float32'))\n"
             "index.search(numpy.ones((100, 8), 'float32'), 3)",
    "tokenizers": "from tokenizers import Tokenizer, models, pre_tokenizers\n"
                  "tok = Tokenizer(models.WordLevel({'a': 0, '[UNK]': 1}, unk_token='[UNK]'))\n"
                  "tok.pre_tokenizer = pre_tokenizers.Whitespace(); tok.encode_batch(['a b c'] * 20000)",
    # ONNX Runtime takes the physical cores unless told: a program within its caps says so.
    "onnxruntime": ONNX_MODEL + "options = onnxruntime.SessionOptions(); options.intra_op_num_threads = 1\n"
                   "session = onnxruntime.InferenceSession(model.SerializeToString(), options,\n"
                   "                                       providers=['CPUExecutionProvider'])\n"
                   "session.run(None, {'X': numpy.ones((64, 64), 'float32')})",
    "lightgbm": "import lightgbm, numpy\nx = numpy.random.rand(2000, 5); y = numpy.random.rand(2000)\n"
                "lightgbm.train({'verbose': -1}, lightgbm.Dataset(x, y), 5)",
    "xgboost": "import xgboost, numpy\nx = numpy.random.rand(2000, 5); y = numpy.random.rand(2000)\n"
               "xgboost.train({}, xgboost.DMatrix(x, y), 5)",
}
STAY = "\nimport time; time.sleep(0.9)\n"
#: The program keeps running Python between short calls, as a loop of library
#: calls does: the main thread answers the probe (a raise kept per thread,
#: faiss's OpenMP setting, is read there), which a single long sleep would not.
WORKING = "\nimport time\nstart = time.time()\nwhile time.time() - start < 1.5: time.sleep(0.01)\n"
#: Not test dependencies (too large, or platform wheels): skipped where missing.
OPTIONAL = {"faiss": "faiss-cpu", "jax": "jax"}


def need(library: str) -> None:
    if library in OPTIONAL:
        pytest.importorskip(library, reason=f"{OPTIONAL[library]} is not installed (not a test dependency)")
    else:
        pytest.importorskip(library)


def warning(pool: str, threads: int = 2, cap: int = 1) -> re.Pattern[str]:
    return re.compile(rf"^tcap: warning: pid (\d+) \(.*\): {pool} \(\w+\) has {threads} threads, cap {cap}", re.M)


def run(iso: Isolated, code: str, *flags: str, threads: str = "1") -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    (iso.work / "prog.py").write_text(code)
    return iso.run("run", "--threads", threads, *flags, "--", PYTHON, "prog.py", timeout=180)


def python(code: str, **env: str) -> str:
    """``code`` run in a fresh interpreter (no tcap) with ``env`` added; its stdout."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("TCAP_", "OMP_", "RAYON_", "TOKENIZERS_"))
               and k not in ("OPENCV_FOR_THREADS_NUM", "ARROW_IO_THREADS", "OPENBLAS_NUM_THREADS")}
    environ.update(env)
    result = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def row(name: str) -> _pools.Pool:
    return next(pool for pool in _pools.POOLS if pool.name == name)


READ = "import sys; sys.path.insert(0, {src!r}); from tcap import _pools\n" \
       "pool = next(p for p in _pools.POOLS if p.name == {name!r}); print(pool.read(sys.modules[pool.module]))\n"
SRC = str(Path(__file__).resolve().parent.parent / "src")


def read_row(name: str, setup: str, **env: str) -> int:
    """The registry's reading of pool ``name`` after ``setup`` in a fresh interpreter."""
    return int(python(setup + "\n" + READ.format(src=SRC, name=name), **env).splitlines()[-1])


# --- each row read as the library says ------------------------------------------------------------


def test_the_rows_have_the_shape_the_probe_reads():
    for pool in _pools.POOLS:
        assert isinstance(pool.module, str) and isinstance(pool.name, str) and callable(pool.read)
        assert pool.limit is None or callable(pool.limit)
        assert pool.spare in (0, 1) and isinstance(pool.per_thread, bool)
    names = [pool.name for pool in _pools.POOLS]
    assert len(names) == len(set(names))
    for observed in _pools.OBSERVED:
        assert observed.module and observed.name and observed.why
        assert observed.module not in {pool.module for pool in _pools.POOLS}
    assert {o.module for o in _pools.OBSERVED} == {"onnxruntime", "lightgbm", "xgboost", "jaxlib"}


@pytest.mark.parametrize(("env", "expected"), [
    ({}, None), ({"OMP_NUM_THREADS": "1"}, 1), ({"OMP_NUM_THREADS": "3"}, 3), ({"OMP_THREAD_LIMIT": "1"}, 1),
])
def test_arrow_cpu_pool_follows_openmp_variables(env: dict[str, str], expected: int | None):
    need("pyarrow")
    got = read_row("arrow (cpu)", "import pyarrow", **env)
    assert got == (expected or len(os.sched_getaffinity(0)))
    assert got == int(python("import pyarrow; print(pyarrow.cpu_count())", **env))


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to narrow the affinity")
def test_arrow_cpu_pool_follows_the_affinity_mask():
    need("pyarrow")
    cpu = min(os.sched_getaffinity(0))
    assert read_row("arrow (cpu)", f"import os; os.sched_setaffinity(0, {{{cpu}}}); import pyarrow") == 1


@pytest.mark.parametrize(("env", "expected"), [({}, 8), ({"ARROW_IO_THREADS": "3"}, 3), ({"OMP_NUM_THREADS": "1"}, 8)])
def test_arrow_io_pool_is_its_own_variable_else_eight(env: dict[str, str], expected: int):
    need("pyarrow")
    assert read_row("arrow (io)", "import pyarrow", **env) == expected


@pytest.mark.parametrize(("env", "expected"), [({"OPENCV_FOR_THREADS_NUM": "1"}, 1),
                                              ({"OPENCV_FOR_THREADS_NUM": "3"}, 3),
                                              ({}, None), ({"OMP_NUM_THREADS": "1"}, None)])
def test_opencv_pool_follows_its_variable_else_the_affinity(env: dict[str, str], expected: int | None):
    need("cv2")
    assert read_row("opencv", "import cv2", **env) == (expected or len(os.sched_getaffinity(0)))


@pytest.mark.parametrize(("env", "expected"), [
    ({}, None), ({"RAYON_NUM_THREADS": "3"}, 3), ({"RAYON_NUM_THREADS": "0"}, None),
    ({"TOKENIZERS_PARALLELISM": "false"}, 1), ({"TOKENIZERS_PARALLELISM": ""}, 1), ({"TOKENIZERS_PARALLELISM": "F"}, 1),
    ({"TOKENIZERS_PARALLELISM": "off", "RAYON_NUM_THREADS": "3"}, 1), ({"TOKENIZERS_PARALLELISM": "true"}, None),
])
def test_tokenizers_pool_is_what_rayon_starts(env: dict[str, str], expected: int | None):
    """The registry's reading equals the threads rayon really starts besides
    the calling thread (spare 0), or 1 (the calling thread alone)."""
    need("tokenizers")
    code = (
        "import os\nfrom tokenizers import Tokenizer, models, pre_tokenizers\n"
        "tok = Tokenizer(models.WordLevel({'a': 0, '[UNK]': 1}, unk_token='[UNK]'))\n"
        "tok.pre_tokenizer = pre_tokenizers.Whitespace()\nbefore = len(os.listdir('/proc/self/task'))\n"
        "tok.encode_batch(['a b c'] * 20000)\nprint(len(os.listdir('/proc/self/task')) - before)\n"
    )
    out = python(code + READ.format(src=SRC, name="tokenizers (rayon)"), **env).splitlines()
    started, read = int(out[-2]), int(out[-1])
    assert read == (expected or _pools._usable_cpus())
    sequential = expected == 1 and "TOKENIZERS_PARALLELISM" in env
    assert started == (0 if sequential else read)


def test_spare_is_what_a_parallel_call_starts():
    """A pool of 3: Arrow starts 3 threads besides the waiting caller (spare
    0); OpenCV starts 2, the caller being the third (spare 1)."""
    need("pyarrow")
    need("cv2")
    code = (
        "import os, numpy, pyarrow as pa, cv2\ndef n(): return len(os.listdir('/proc/self/task'))\n"
        "pa.set_cpu_count(3); t = pa.table({'k': numpy.arange(2000000) % 97, 'a': numpy.ones(2000000)})\n"
        "b = n()\nfor _ in range(3): t.group_by('k').aggregate([('a', 'sum')])\narrow = n() - b\n"
        "cv2.setNumThreads(3); b = n(); cv2.GaussianBlur(numpy.zeros((2000, 2000), numpy.uint8), (15, 15), 0)\n"
        "print(arrow, n() - b)\n"
    )
    arrow, opencv = (int(x) for x in python(code, OPENBLAS_NUM_THREADS="1").split())
    assert arrow == 3 - row("arrow (cpu)").spare
    assert opencv == 3 - row("opencv").spare


def test_opencv_is_one_size_for_the_process_and_faiss_one_per_thread():
    """OpenCV's size set from another thread is the main thread's too
    (per_thread False); faiss's OpenMP setting is not (per_thread True)."""
    need("cv2")
    code = "import cv2, threading\nt = threading.Thread(target=lambda: cv2.setNumThreads(1)); t.start(); t.join()\n" \
           "print(cv2.getNumThreads())"
    assert python(code, OPENCV_FOR_THREADS_NUM="2") == "1"
    assert row("opencv").per_thread is False
    need("faiss")
    code = "import faiss, threading\nfaiss.omp_set_num_threads(1); seen = []\n" \
           "t = threading.Thread(target=lambda: seen.append(faiss.omp_get_max_threads())); t.start(); t.join()\n" \
           "print(faiss.omp_get_max_threads(), seen[0])"
    assert python(code, OMP_NUM_THREADS="2") == "1 2"
    assert row("faiss").per_thread is True and row("faiss").spare == 1


def test_faiss_pool_is_its_openmp_setting():
    need("faiss")
    assert read_row("faiss", "import faiss", OMP_NUM_THREADS="1") == 1
    assert read_row("faiss", "import faiss; faiss.omp_set_num_threads(3)") == 3


# --- capped by tcap run ---------------------------------------------------------------------------


def test_opencv_and_arrow_are_capped_under_threads_1_and_arrow_io_is_not(iso: Isolated):
    need("pyarrow")
    need("cv2")
    result = run(iso, "import cv2, pyarrow as pa\nprint(cv2.getNumThreads(), pa.cpu_count(), pa.io_thread_count())")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "1", "8"]


def test_arrow_io_is_sized_and_judged_only_by_an_explicit_arrow_io(iso: Isolated):
    need("pyarrow")
    profiles = iso.config / "tcap" / "profiles"
    profiles.mkdir(parents=True, exist_ok=True)
    (profiles / "io.toml").write_text('description = "io"\nthreads = 1\narrow_io = 2\n')
    code = "import pyarrow as pa; print(pa.io_thread_count()); pa.set_io_thread_count(4)" + STAY
    (iso.work / "prog.py").write_text(code)
    result = iso.run("run", "-p", "io", "--verify", "strict", "--", PYTHON, "prog.py", timeout=180)
    assert result.returncode == 86, result.stderr
    assert result.stdout.strip() == "2"
    assert len(warning(r"arrow \(io\)", 4, 2).findall(result.stderr)) == 1, result.stderr
    # Without arrow_io the I/O pool has no cap: a raise is no violation, and
    # neither enforce nor sharing lowers it.
    code = "import pyarrow as pa; pa.set_io_thread_count(16)" + STAY + "print(pa.io_thread_count())"
    for mode in ("strict", "enforce"):
        result = run(iso, code, "--verify", mode)
        assert result.returncode == 0, result.stderr
        assert "tcap:" not in result.stderr and result.stdout.strip() == "16", result.stderr


# --- raises caught, in the main process and in workers ---------------------------------------------


@pytest.mark.parametrize("library", sorted(RAISES))
def test_a_raise_is_a_strict_violation_naming_the_pool(iso: Isolated, library: str):
    need(library)
    code, pool = RAISES[library]
    report = iso.work / "report.json"
    result = run(iso, code + STAY, "--verify", "strict", "--report-json", str(report))
    assert result.returncode == 86, result.stderr
    assert len(warning(pool).findall(result.stderr)) == 1, result.stderr
    data = json.loads(report.read_text())
    assert any(re.fullmatch(pool, v["name"]) for v in data["violations"]), data["violations"]
    pools = [p for process in data["processes"] for p in process["pools"]]
    assert any(re.fullmatch(pool, p["name"]) and p["threads"] == 2 and p["cap"] == 1 for p in pools), pools


@pytest.mark.parametrize("method", ["spawn", "fork"])
@pytest.mark.parametrize("library", sorted(RAISES))
def test_a_raise_in_a_worker_is_a_violation_of_that_worker(iso: Isolated, library: str, method: str):
    need(library)
    code, pool = RAISES[library]
    (iso.work / "prog.py").write_text(in_one_worker(method, code))
    report = iso.work / "report.json"
    result = iso.run("run", "--threads", "1", "--verify", "strict", "--report-json", str(report), "--",
                     PYTHON, "prog.py", timeout=180)
    assert result.returncode == 86, result.stderr
    worker = int(result.stdout.strip())
    assert [int(pid) for pid in warning(pool).findall(result.stderr)] == [worker], result.stderr
    data = json.loads(report.read_text())
    named = [v for v in data["violations"] if re.fullmatch(pool, v["name"])]
    assert [v["pid"] for v in named] == [worker], data["violations"]


@pytest.mark.parametrize(("library", "read"), [("pyarrow", "pa.cpu_count()"), ("cv2", "cv2.getNumThreads()"),
                                               ("faiss", "faiss.omp_get_max_threads()")])
def test_enforce_brings_the_pool_back(iso: Isolated, library: str, read: str):
    need(library)
    code, pool = RAISES[library]
    if library == "faiss":
        # threadpoolctl lists faiss's libgomp too: whichever is checked first
        # brings the one setting back (on the main thread), for both.
        pool = r"(faiss|openmp)"
    result = run(iso, code + WORKING + f"print({read})", "--verify", "enforce")
    assert result.returncode == 0, result.stderr
    assert re.search(rf"tcap: enforced: pid \d+ .*{pool} \(\w+\) brought back from 2 to 1 threads", result.stderr), \
        result.stderr
    assert result.stdout.strip() == "1"


def test_enforce_says_the_tokenizers_pool_cannot_shrink(iso: Isolated):
    need("tokenizers")
    code, pool = RAISES["tokenizers"]
    result = run(iso, code + STAY, "--verify", "enforce")
    assert result.returncode == 0, result.stderr
    assert len(warning(pool).findall(result.stderr)) == 1, result.stderr
    assert "enforce cannot shrink the tokenizers (rayon) pool" in result.stderr


# --- within the caps: silent ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["warn", "strict"])
@pytest.mark.parametrize("library", sorted(CLEAN))
def test_the_library_within_its_caps_is_silent(iso: Isolated, library: str, mode: str):
    need(library)
    result = run(iso, CLEAN[library] + STAY, "--verify", mode)
    assert result.returncode == 0, result.stderr
    assert "tcap:" not in result.stderr, result.stderr


def test_jax_is_checked_once_imported(iso: Isolated):
    """JAX has no pool API: its import starts the probe's checks (the
    process is verified) and its threads are judged by observation."""
    need("jax")
    report = iso.work / "report.json"
    result = run(iso, "import jax.numpy as jnp; jnp.ones(3).sum().block_until_ready()" + STAY,
                 "--report-json", str(report))
    assert result.returncode == 0, result.stderr
    data = json.loads(report.read_text())
    assert data["processes"] and all(process["pools"] is not None for process in data["processes"]), data


def test_a_library_the_program_did_not_import_is_never_imported(iso: Isolated):
    names = ("pyarrow", "cv2", "faiss", "tokenizers", "onnxruntime", "lightgbm", "xgboost", "jax", "jaxlib")
    code = f"import numpy, sys, time; time.sleep(0.9); print(sorted(m for m in {names!r} if m in sys.modules))"
    result = run(iso, code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --- tcap show ------------------------------------------------------------------------------------


def test_show_lists_the_libraries_verified_by_observation(iso: Isolated):
    result = iso.run("show", timeout=60)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("observed  ")]
    assert [line.split(":")[0] for line in lines] == [f"observed  {o.name}" for o in _pools.OBSERVED]
    assert all(line.endswith("; verified by observation") for line in lines)
    assert "observed  ONNX Runtime: no variable sizes its pools" in result.stdout
    data = json.loads(iso.run("show", "--json", timeout=60).stdout)
    assert [o["name"] for o in data["observed"]] == ["ONNX Runtime", "LightGBM", "XGBoost", "JAX/XLA"]
    shown = {name: (value, why) for name, value, why in data["left_alone"]}
    assert shown["ARROW_IO_THREADS"][0] == "8" and "only `arrow_io` sizes it" in shown["ARROW_IO_THREADS"][1]
    assert "arrow_io" not in data["caps"] and data["caps"]["opencv"] >= 1

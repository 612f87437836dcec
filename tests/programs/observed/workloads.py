"""What the escape and clean programs run: one function per library, each
``kind(seconds, threads)``.  ``threads`` is the team size the program asks
the library for itself (the escape: over tcap's cap), or None for the
library's default (clean: whatever tcap's variables give it).  Each keeps
the library computing for about ``seconds`` and returns what the program
measured of its own threads (see _busy), so a test can check the escape
really ran two busy threads, whatever tcap said about it.

Everything is built in memory: no downloads, no files left behind.
"""

from __future__ import annotations

import os
import time

from _busy import Busy


def _until(seconds: float):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        yield


def _regression(rows: int, columns: int):  # type: ignore[no-untyped-def]
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, columns))
    return x, x[:, 0] + 0.5 * x[:, 1] * x[:, 2] + rng.standard_normal(rows)


def lightgbm(seconds: float, threads: int | None) -> dict:
    import lightgbm as lgb

    x, y = _regression(50_000, 40)
    params = {"objective": "regression", "verbose": -1, "num_leaves": 63, "min_data_in_bin": 1}
    if threads:
        params["num_threads"] = threads
    deadline = time.monotonic() + seconds

    def stop(env):  # type: ignore[no-untyped-def]
        if time.monotonic() > deadline:
            raise lgb.callback.EarlyStopException(env.iteration, [])

    with Busy() as busy:
        lgb.train(params, lgb.Dataset(x, y), num_boost_round=100_000, callbacks=[stop])
    return busy.result()


def xgboost(seconds: float, threads: int | None) -> dict:
    import xgboost as xgb

    x, y = _regression(50_000, 40)
    params = {"tree_method": "hist", "max_depth": 8}
    if threads:
        params["nthread"] = threads
    deadline = time.monotonic() + seconds

    class Stop(xgb.callback.TrainingCallback):  # type: ignore[misc]
        def after_iteration(self, model, epoch, evals_log):  # type: ignore[no-untyped-def]
            return time.monotonic() > deadline

    with Busy() as busy:
        data = xgb.DMatrix(x, label=y, nthread=threads or 0)
        xgb.train(params, data, num_boost_round=100_000, callbacks=[Stop()])
    return busy.result()


def onnxruntime(seconds: float, threads: int | None) -> dict:
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    n = 768
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.random((n, n), dtype=np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "B"], ["C"])],
        "matmul",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("C", TensorProto.FLOAT, [n, n])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    a = rng.random((n, n), dtype=np.float32)
    with Busy() as busy:
        for _ in _until(seconds):
            session.run(None, {"A": a})
    return busy.result()


def _lines(count: int) -> list[str]:
    import random

    rng = random.Random(0)
    syllables = ["ka", "to", "mi", "ren", "sho", "la", "qu", "ix", "zor", "pe", "ant", "mel", "dri", "ou"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(3000)]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(8, 40))) for _ in range(count)]


def tokenizers(seconds: float, threads: int | None) -> dict:
    if threads:
        os.environ["RAYON_NUM_THREADS"] = str(threads)  # before the import, as rayon reads it once
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    lines = _lines(20_000)
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(iter(lines), trainers.BpeTrainer(vocab_size=1500, special_tokens=["[UNK]"]))
    with Busy() as busy:
        for _ in _until(seconds):
            tokenizer.encode_batch(lines)
    return busy.result()


def pyarrow(seconds: float, threads: int | None) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    if threads:
        pa.set_cpu_count(threads)
    rng = np.random.default_rng(0)
    table = pa.table({f"c{i}": rng.random(100_000) for i in range(32)})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", use_dictionary=False)
    data = sink.getvalue()
    with Busy() as busy:
        for _ in _until(seconds):
            pq.read_table(pa.BufferReader(data))
    return busy.result()


def opencv(seconds: float, threads: int | None) -> dict:
    import cv2
    import numpy as np

    if threads:
        cv2.setNumThreads(threads)
    image = np.random.default_rng(0).random((1500, 1500), dtype=np.float32)
    with Busy() as busy:
        for _ in _until(seconds):
            cv2.GaussianBlur(image, (31, 31), 0)
    return busy.result()


def openmp_main(seconds: float, threads: int | None) -> dict:
    """scikit-learn's KMeans sizes its OpenMP regions from the calling
    thread's OpenMP setting: raised here on this (the main) thread."""
    import threadpoolctl
    from sklearn.cluster import KMeans

    x, _ = _regression(100_000, 10)
    if threads:
        threadpoolctl.threadpool_limits(threads, user_api="openmp")
    with Busy() as busy:
        for _ in _until(seconds):
            KMeans(n_clusters=8, n_init=1, max_iter=30, tol=0, random_state=0).fit(x)
    return busy.result()


def cpool(seconds: float, threads: int | None) -> dict:
    """A native pool no registry knows: OBSERVED_SPIN_LIB (built from spin.c)."""
    import ctypes

    import numpy  # noqa: F401  (a numeric import, as any program of tcap's users has)

    library = ctypes.CDLL(os.environ["OBSERVED_SPIN_LIB"])
    library.spin.argtypes = [ctypes.c_int, ctypes.c_double]
    with Busy() as busy:
        started = library.spin(threads or 1, seconds)
    return dict(busy.result(), started=started)


def faiss(seconds: float, threads: int | None) -> dict:
    import faiss as fs
    import numpy as np

    if threads:
        fs.omp_set_num_threads(threads)
    rng = np.random.default_rng(0)
    d = 64
    index = fs.IndexFlatL2(d)
    index.add(rng.random((100_000, d), dtype=np.float32))
    queries = rng.random((16, d), dtype=np.float32)  # below faiss's BLAS threshold: its OpenMP scan
    with Busy() as busy:
        for _ in _until(seconds):
            index.search(queries, 10)
    return busy.result()


def jax(seconds: float, threads: int | None) -> dict:
    import jax as jx
    import jax.numpy as jnp

    a = jnp.ones((1024, 1024), dtype=jnp.float32)
    f = jx.jit(lambda m: (m @ m).sum())
    f(a).block_until_ready()
    with Busy() as busy:
        for _ in _until(seconds):
            f(a).block_until_ready()
    return busy.result()


def blas(seconds: float, threads: int | None) -> dict:
    """numpy matrix products, with threads BLAS threads if given."""
    import numpy as np
    import threadpoolctl

    a = np.random.default_rng(0).random((400, 400))
    if threads:
        threadpoolctl.threadpool_limits(threads, user_api="blas")
    with Busy() as busy:
        for _ in _until(seconds):
            a @ a
    return busy.result()

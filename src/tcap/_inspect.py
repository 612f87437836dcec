"""Native library facts: what each BLAS and OpenMP runtime of an interpreter
is, and the build limits it reports about itself.

Runs inside other interpreters: loaded by path by the probe (which has
threadpoolctl's pool list anyway) and run as a script by ``tcap doctor`` in a
child of the interpreter it inspects.  Standard library only; never imported
at a program's start.

Facts are recorded per interpreter in ``DIR/<prefix with / as %>.json``,
one entry per library file with its size and mtime, so a reinstalled wheel
is noticed.  The OpenBLAS config string (``openblas_get_config``) is the one
place the build's ``MAX_THREADS`` is written: "OpenBLAS 0.3.31 DYNAMIC_ARCH
NO_AFFINITY Haswell MAX_THREADS=64".
"""

import json
import os
import re
import sys

FORMAT = 1
KEPT = ("internal_api", "user_api", "prefix", "filepath", "version", "threading_layer", "architecture")


def interpreter_prefix(executable):
    """The directory an interpreter's packages hang from: a venv's root, or
    /usr for /usr/bin/python3.  ``python`` and ``python3`` of one venv share it."""
    return os.path.dirname(os.path.dirname(os.path.abspath(executable)))


def store_file(directory, executable):
    name = interpreter_prefix(executable).replace("%", "%25").replace(os.sep, "%")
    return os.path.join(directory, (name or "%") + ".json")


def owner(filepath):
    """The package a vendored library came with: numpy for numpy.libs/..."""
    parts = os.path.normpath(filepath or "").split(os.sep)
    for index, part in enumerate(parts):
        if part in ("site-packages", "dist-packages") and index + 1 < len(parts) - 1:
            name = parts[index + 1]
            name = name[: -len(".libs")] if name.endswith(".libs") else name
            return name.replace("scikit_learn", "scikit-learn")
    return None


def openblas_config(filepath):
    """The OpenBLAS config string of the library at ``filepath`` (already
    loaded by the program), or None."""
    import ctypes

    library = ctypes.CDLL(filepath)
    for prefix in ("", "scipy_"):
        for suffix in ("", "64_"):
            function = getattr(library, f"{prefix}openblas_get_config{suffix}", None)
            if function is not None:
                function.restype = ctypes.c_char_p
                text = function()
                return text.decode("ascii", "replace").strip() if text else None
    return None


def what(fact):
    """"numpy's OpenBLAS 0.3.31" for a fact."""
    api = fact.get("internal_api")
    kind = {"openblas": "OpenBLAS", "mkl": "MKL", "blis": "BLIS"}.get(api) or fact.get("prefix") or str(api)
    version = fact.get("version")
    if isinstance(version, str) and version.count(".") > 2:
        version = ".".join(version.split(".")[:3])  # 0.3.31.188.0 -> 0.3.31
    text = f"{fact['owner']}'s {kind}" if fact.get("owner") else kind
    return f"{text} {version}" if version else text


def max_threads(config):
    match = re.search(r"\bMAX_THREADS=(\d+)", config or "")
    return int(match.group(1)) if match else None


def describe(pools):
    """threadpoolctl's pool dicts -> one fact dict per library file."""
    facts = {}
    for pool in pools:
        path = pool.get("filepath")
        if not path or path in facts:
            continue
        try:
            st = os.stat(path)
        except OSError:
            continue
        fact = {key: pool.get(key) for key in KEPT}
        fact.update(size=st.st_size, mtime_ns=st.st_mtime_ns, owner=owner(path), config=None, max_threads=None)
        if pool.get("internal_api") == "openblas":
            try:
                fact["config"] = openblas_config(path)
            except Exception:
                pass
            fact["max_threads"] = max_threads(fact["config"])
        facts[path] = fact
    return list(facts.values())


#: A facts file holds a few libraries per interpreter: far below this.
MAX_FILE = 256 << 10
MAX_LIBRARIES = 256
#: fact key -> the types it may have (validated on every read: the store is
#: input, and a wrong-typed entry must never break a launch).
FIELDS = {
    "filepath": (str,), "internal_api": (str, type(None)), "user_api": (str, type(None)),
    "prefix": (str, type(None)), "version": (str, type(None)), "threading_layer": (str, type(None)),
    "architecture": (str, type(None)), "owner": (str, type(None)), "config": (str, type(None)),
}


def _safefile():
    """tcap's safe file layer: tcap's own module, or loaded by path beside
    this file (inside another interpreter, where tcap may not be importable)."""
    module = sys.modules.get("tcap.safefile") or sys.modules.get("_tcap_safefile")
    if module is None:
        from _frozen_importlib import module_from_spec
        from _frozen_importlib_external import spec_from_file_location

        spec = spec_from_file_location("_tcap_safefile", os.path.join(os.path.dirname(__file__), "safefile.py"))
        module = module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["_tcap_safefile"] = module
    return module


def valid_fact(fact):
    """Whether ``fact`` has the shape tcap relies on (types and ranges)."""
    if not isinstance(fact, dict):
        return False
    for key, types in FIELDS.items():
        if key in fact and not isinstance(fact[key], types):
            return False
    if not isinstance(fact.get("filepath"), str) or len(fact["filepath"]) > 4096:
        return False
    number = _safefile().number
    for key in ("size", "mtime_ns"):
        if number(fact.get(key), 0, 1 << 63) is None:
            return False
    limit = fact.get("max_threads")
    return limit is None or number(limit, 1, 1 << 13) is not None


def read(path):
    """The interpreter's facts file, or None: only a regular file of this
    user's that nobody else can write (a store under a shared cache
    directory cannot be planted by another user), no larger than MAX_FILE,
    never through a symlink; facts of the wrong shape are dropped."""
    safefile = _safefile()
    try:
        data = safefile.read_json(path, MAX_FILE, owners=safefile.mine(), private=True, follow=False)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("libraries"), list):
        return None
    data["libraries"] = [fact for fact in data["libraries"][:MAX_LIBRARIES] if valid_fact(fact)]
    return data


def current(fact):
    """Whether the library file is still the one the fact was taken from."""
    try:
        st = os.stat(fact["filepath"])
    except (OSError, KeyError, TypeError):
        return False
    return st.st_size == fact.get("size") and st.st_mtime_ns == fact.get("mtime_ns")


def known(directory, executable):
    """filepath -> fact recorded for the interpreter and still current."""
    data = read(store_file(directory, executable)) or {}
    facts = {f.get("filepath"): f for f in data.get("libraries", []) if isinstance(f, dict)}
    return {path: fact for path, fact in facts.items() if current(fact)}


def unknown(directory, executable, pools):
    """Pools whose library file has no current fact recorded yet."""
    facts = known(directory, executable)
    return [p for p in pools if p.get("filepath") and p["filepath"] not in facts]


def hazards(pools, facts, caps, python_threads):
    """What the native libraries loaded in one process risk together, as
    dicts: key (stable, to say it once), kind ("hazard": warned; "note":
    shown in a report only) and what.  ``pools``: threadpoolctl's dicts;
    ``facts``: filepath -> fact; ``caps``: the plan's caps."""
    found = []
    openmp = [p for p in pools if p.get("user_api") == "openmp"]
    for pool in pools:
        fact = facts.get(pool.get("filepath")) or {}
        limit = fact.get("max_threads")
        if pool.get("internal_api") != "openblas" or not isinstance(limit, int) or isinstance(limit, bool):
            continue
        name = what(fact)
        omp = max([caps.get("openmp", 0)] + [p.get("num_threads") or 0 for p in openmp])
        if omp > limit:
            source = f"the openmp cap is {caps['openmp']}" if caps.get("openmp", 0) == omp else \
                f"the OpenMP runtime runs {omp} threads"
            found.append({"key": f"limit:{pool['filepath']}:openmp", "kind": "hazard", "filepath": pool["filepath"],
                          "cap": "openmp", "what": (
                f"{name} is built for at most {limit} threads, but {source}: more OpenMP threads calling it at "
                f"once crash it (\"precompiled NUM_THREADS exceeded\"); lower the openmp cap to {limit} "
                f"(tcap run --openmp {limit})")})
        if python_threads > limit:
            found.append({"key": f"limit:{pool['filepath']}:threads", "kind": "hazard", "what": (
                f"{name} is built for at most {limit} threads, but this process runs {python_threads} threads "
                f"that may call it at once: keep at most {limit} of them in BLAS calls (a smaller thread pool)")})
    runtimes = sorted({str(p.get("prefix")) for p in openmp})
    if len(runtimes) > 1:
        found.append({"key": "openmp:" + ",".join(runtimes), "kind": "hazard", "what": (
            f"several OpenMP runtimes in one process ({', '.join(runtimes)}): each starts its own team, and mixing "
            "them is known to oversubscribe or crash; install the packages from one source")})
    for label, group in (("OpenBLAS", [p for p in pools if p.get("internal_api") == "openblas"]),
                         ("OpenMP runtime", openmp)):
        by_path = {p["filepath"]: p for p in group if p.get("filepath")}
        if len(by_path) > 1:
            paths = sorted(by_path)
            names = ", ".join(what({**by_path[path], "owner": owner(path)}) for path in paths)
            found.append({"key": f"copies:{label}", "kind": "note", "what": (
                f"{len(paths)} copies of {label} loaded ({names}): each has a pool of its own, sized by the "
                "same caps")})
    return found


def record(directory, executable, facts):
    """Merge ``facts`` into the interpreter's file (atomic); returns its path."""
    path = store_file(directory, executable)
    data = read(path) or {}
    merged = {f["filepath"]: f for f in data.get("libraries", []) if isinstance(f, dict) and current(f)}
    for fact in facts:
        merged[fact["filepath"]] = fact
    out = {"format": FORMAT, "prefix": interpreter_prefix(executable), "executable": executable,
           "libraries": sorted(merged.values(), key=lambda f: f["filepath"])}
    safefile = _safefile()
    safefile.private_dir(directory)  # never into a directory another user owns or can write
    safefile.write_atomic(path, json.dumps(out, indent=1).encode(), 0o600)
    return path


def _load_threadpoolctl(path):
    if path:
        from _frozen_importlib import module_from_spec
        from _frozen_importlib_external import spec_from_file_location

        spec = spec_from_file_location("_tcap_threadpoolctl", path)
        module = module_from_spec(spec)
        sys.modules["_tcap_threadpoolctl"] = module
        spec.loader.exec_module(module)
        return module
    import threadpoolctl

    return threadpoolctl


def main(argv):
    """``python _inspect.py [THREADPOOLCTL_PATH]``: import the numeric stack
    that is installed, print this interpreter's native libraries as JSON."""
    imported, missing = [], []
    for name in ("numpy", "scipy.linalg", "sklearn.utils._openmp_helpers", "numexpr", "torch"):
        try:
            __import__(name)
            imported.append(name.partition(".")[0])
        except Exception:
            missing.append(name.partition(".")[0])
    try:
        import threadpoolctl  # noqa: F401  the interpreter's own
        tpc = _load_threadpoolctl(None)
    except ImportError:
        tpc = _load_threadpoolctl(argv[1] if len(argv) > 1 else None)
    pools = tpc.threadpool_info()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    out = {
        "executable": sys.executable,
        "prefix": interpreter_prefix(sys.executable),
        "python": sys.version.split()[0],
        "imported": imported,
        "missing": missing,
        "threads": {p.get("filepath"): p.get("num_threads") for p in pools},
        "affinity": affinity,
        "libraries": describe(pools),
    }
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

# tcap's probe bootstrap. `tcap run` puts this directory first on PYTHONPATH
# so every Python process it launches (and their workers) loads the probe;
# the logic lives in tcap/probe.py, loaded from $TCAP_PROBE by path under a
# private name. Then the sitecustomize this file shadows, if any, is
# imported as if this one were not here. No exception may reach the program.
import os
import sys


def _tcap_probe():
    path = os.environ.get("TCAP_PROBE")
    if not path:
        return
    try:
        # importlib's frozen halves are already loaded; importlib.util would
        # import contextlib, functools and collections (~4 ms at start).
        from _frozen_importlib import module_from_spec
        from _frozen_importlib_external import spec_from_file_location

        spec = spec_from_file_location("_tcap_probe", path)
        module = module_from_spec(spec)
        sys.modules["_tcap_probe"] = module
        spec.loader.exec_module(module)
        module.start()
    except Exception:
        if os.environ.get("TCAP_DEBUG"):
            import traceback

            traceback.print_exc()


def _tcap_chain():
    here = os.path.dirname(os.path.abspath(__file__))
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    ours = sys.modules.pop("sitecustomize", None)
    try:
        import sitecustomize  # noqa: F401  (the one we shadow)
    except ImportError as error:
        if error.name != "sitecustomize":
            raise
        if ours is not None:
            sys.modules["sitecustomize"] = ours
    finally:
        sys.path[:] = saved


_tcap_probe()
# Errors of the shadowed sitecustomize propagate to site.py, which reports
# them exactly as it would without tcap.
_tcap_chain()

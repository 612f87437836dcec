"""tcap: cap the thread pools of numeric Python before they start."""

__version__ = "0.1.0"


def _entry() -> int:
    """The ``tcap`` command. Ctrl-C while tcap is still importing ends it as
    the signal would (no KeyboardInterrupt traceback); once ``main`` runs,
    Ctrl-C is its exit code 130."""
    try:  # signal's C core: the signal module itself imports enum, 6 ms on the launch path
        import _signal  # type: ignore[import-not-found]
    except ImportError:  # pragma: no cover (an interpreter without it)
        import signal as _signal

    previous = _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
    from tcap.cli import main

    try:
        _signal.signal(_signal.SIGINT, previous)
        return main()
    except KeyboardInterrupt:
        return 130


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext tcap``: the ``%tcap`` magic (pools against their caps;
    ``%tcap apply PROFILE`` applies one to the kernel) and, once
    verification is on (a tcap kernel, or after ``%tcap apply``), the check
    after each cell."""
    from tcap.api import probe_module

    probe_module().load_ipython_extension(ipython)


# The Python API (tcap/api.py), imported on first use: `import tcap` stays
# what the launcher's hot path pays for.
_API = ("apply", "limits", "Applied", "PoolChange", "Cannot")
TYPE_CHECKING = False
if TYPE_CHECKING:
    from tcap.api import Applied, Cannot, PoolChange, apply, limits
    from tcap.errors import TcapError

__all__ = ["apply", "limits", "Applied", "PoolChange", "Cannot", "TcapError", "load_ipython_extension"]


def __getattr__(name: str) -> object:
    if name in _API:
        from tcap import api

        return getattr(api, name)
    if name == "TcapError":
        from tcap.errors import TcapError

        return TcapError
    raise AttributeError(f"module 'tcap' has no attribute {name!r}")

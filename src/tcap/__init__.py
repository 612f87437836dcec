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
    """``%load_ext tcap``: the ``%tcap`` magic (pools against their caps) and,
    in a kernel started by tcap with verification on, the check after each
    cell (a tcap kernelspec loads that already)."""
    import sys

    probe = sys.modules.get("_tcap_probe")  # the probe tcap's bootstrap loaded
    if probe is None:
        from tcap import probe
    probe.load_ipython_extension(ipython)  # type: ignore[union-attr]

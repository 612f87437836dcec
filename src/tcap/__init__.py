"""tcap: cap the thread pools of numeric Python before they start."""

__version__ = "0.1.0"


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext tcap``: the ``%tcap`` magic (pools against their caps) and,
    in a kernel started by tcap with verification on, the check after each
    cell (a tcap kernelspec loads that already)."""
    import sys

    probe = sys.modules.get("_tcap_probe")  # the probe tcap's bootstrap loaded
    if probe is None:
        from tcap import probe
    probe.load_ipython_extension(ipython)  # type: ignore[union-attr]

"""tcap: cap the thread pools of numeric Python before they start."""

__version__ = "0.1.0"

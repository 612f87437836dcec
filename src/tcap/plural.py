"""Counts that read right for one and for many: "1 CPU", "2 CPUs"."""

from __future__ import annotations


def counted(count: float, word: str, many: str | None = None) -> str:
    """``count`` and ``word``, or its plural ``many`` (default: word + "s")
    unless the count is exactly one; a fraction shows as ``:g`` does."""
    shown = f"{count:g}" if isinstance(count, float) else str(count)
    return f"{shown} {word if count == 1 else many or word + 's'}"

"""Like many a project's conftest: numpy and scikit-learn imported before any
test (so their pools are loaded when pytest configures its plugins)."""

import os

import numpy  # noqa: F401
import sklearn  # noqa: F401

#: PLUGIN_SCALE (1 by default) scales every test's work; the smoke test runs a sliver.
SCALE = float(os.environ.get("PLUGIN_SCALE", "1"))


def size(n: int, least: int = 8) -> int:
    return max(least, int(n * min(SCALE, 1.0)))


def count(n: int) -> int:
    return max(1, round(n * min(SCALE, 1.0)))


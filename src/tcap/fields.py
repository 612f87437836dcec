"""Checks of the fields of a JSON file tcap reads (a report, a probe
record): each takes the value and where it is (``processes[3].pid``) and
returns the value, or raises :class:`Bad` with ``where: what was expected``,
the one line the user sees. Pure; below the modules that read the files."""

from __future__ import annotations

from tcap import safefile

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

#: The largest count a field may hold (threads, processes, samples).
MAX_COUNT = (1 << 30) - 1


class Bad(ValueError):
    """A field that is not what tcap writes there: ``where: what was expected``."""


def obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Bad(f"{where}: expected an object")
    return value


def items(value: Any, where: str, null: bool = False) -> list[Any]:
    if value is None and null:
        return []
    if not isinstance(value, list):
        raise Bad(f"{where}: expected a list")
    return value


def integer(value: Any, where: str, low: int = 0, high: int = MAX_COUNT, null: bool = False) -> Any:
    if value is None and null:
        return None
    if safefile.number(value, low, high) is None:
        raise Bad(f"{where}: expected an integer from {low} to {high}" + (" or null" if null else ""))
    return value


def number(value: Any, where: str, low: float, high: float, null: bool = False) -> Any:
    if value is None and null:
        return None
    if safefile.number(value, low, high, integer=False) is None:
        raise Bad(f"{where}: expected a number from {low:g} to {high:g}" + (" or null" if null else ""))
    return value


def text(value: Any, where: str, null: bool = False) -> Any:
    if value is None and null:
        return None
    if not isinstance(value, str):
        raise Bad(f"{where}: expected a string" + (" or null" if null else ""))
    return value


def strings(value: Any, where: str, null: bool = False) -> list[str]:
    found = items(value, where, null)
    for index, item in enumerate(found):
        text(item, f"{where}[{index}]")
    return list(found)


def get(data: Mapping[str, Any], key: str, where: str) -> Any:
    """``data[key]``, which a report must have."""
    if key not in data:
        raise Bad(f"{where}{key}: missing")
    return data[key]


def texts(value: Any, where: str, most: int, longest: int, null: bool = False) -> list[str]:
    """A list of at most ``most`` strings of at most ``longest`` characters each."""
    found = items(value, where, null)
    if len(found) > most:
        raise Bad(f"{where}: {len(found)} items, more than the {most} tcap writes")
    for index, item in enumerate(found):
        if not isinstance(item, str) or len(item) > longest:
            raise Bad(f"{where}[{index}]: expected a string of at most {longest} characters")
    return list(found)

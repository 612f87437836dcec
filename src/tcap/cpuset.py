"""Linux CPU lists ("0-3,8,10-11") to sets of CPU numbers and back."""

from __future__ import annotations

from tcap.bounds import MAX_CPU

# On the launch path (machine facts): no collections.abc at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable


def parse_cpu_list(text: str) -> frozenset[int]:
    """Parse a Linux CPU list such as ``"0-3,8,10-11"``.

    Raises ``ValueError`` with a short reason on malformed input.  Ranges may
    carry a stride (``"0-10:2"``), as in the kernel's cpuset syntax.
    """
    cpus: set[int] = set()
    if not text.strip():
        raise ValueError("empty CPU list")
    for part in text.split(","):
        part = part.strip()
        stride = 1
        if ":" in part:
            part, _, step = part.partition(":")
            stride = _number(step, "stride")
            if stride < 1:
                raise ValueError(f"stride must be at least 1, not {stride}")
        low_text, dash, high_text = part.partition("-")
        low = _number(low_text, "CPU")
        high = _number(high_text, "CPU") if dash else low
        if high < low:
            raise ValueError(f"range {low}-{high} runs backwards")
        if high > MAX_CPU:  # checked before the range is expanded
            raise ValueError(f"CPU {high} is above the largest CPU number Linux supports ({MAX_CPU})")
        cpus.update(range(low, high + 1, stride))
    return frozenset(cpus)


def _number(text: str, what: str) -> int:
    text = text.strip()
    if not text.isdigit() or not text.isascii():
        raise ValueError(f"{what} {text[:20]!r} is not a number")
    if len(text) > 6:  # no CPU number, count or stride has more digits
        shown = text[:20] + ("..." if len(text) > 20 else "")
        raise ValueError(f"{what} {shown} is above the largest CPU number Linux supports ({MAX_CPU})")
    return int(text)


def format_cpu_list(cpus: Iterable[int]) -> str:
    """The shortest Linux CPU list for ``cpus`` (``""`` when empty)."""
    parts: list[str] = []
    ordered = sorted(set(cpus))
    start = 0
    while start < len(ordered):
        end = start
        while end + 1 < len(ordered) and ordered[end + 1] == ordered[end] + 1:
            end += 1
        low, high = ordered[start], ordered[end]
        parts.append(str(low) if low == high else f"{low}-{high}")
        start = end + 1
    return ",".join(parts)


#: The forms a profile's ``cpus`` may take, for messages.
CPU_SPEC_FORMS = '"all", a CPU list like "0-3,8", "first:N", "auto:N", "physical" or "rank"'


def parse_cpu_spec(text: str) -> tuple[str, frozenset[int] | int | None]:
    """Parse a ``cpus`` value into (kind, argument).

    ``("all", None)``, ``("list", cpus)``, ``("first", n)``, ``("auto", n)``
    (n CPUs booked at launch, see tcap.placement), ``("physical", None)`` or
    ``("rank", None)`` (this rank's block of the CPUs the local ranks share);
    ``ValueError`` otherwise.
    """
    spec = text.strip()
    if spec in ("all", "physical", "rank"):
        return spec, None
    for kind in ("first", "auto"):
        if spec.startswith(kind + ":"):
            count = _number(spec[len(kind) + 1 :], "count")
            if count < 1:
                raise ValueError(f"{kind}:N needs N of at least 1")
            if count > MAX_CPU + 1:
                raise ValueError(f"{kind}:{count} asks for more CPUs than Linux supports ({MAX_CPU + 1})")
            return kind, count
    try:
        return "list", parse_cpu_list(spec)
    except ValueError as error:
        raise ValueError(f"{error}; expected {CPU_SPEC_FORMS}") from None


class Keyed:
    """Equality and hashing by ``key()``, for the small value classes of the
    launch path (Machine, Ranks), where dataclasses cost an import."""

    __slots__ = ()

    def key(self) -> tuple[object, ...]:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.key() == other.key()

    def __hash__(self) -> int:
        return hash(self.key())

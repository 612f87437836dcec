"""CPU lists: tcap.cpuset."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcap.cpuset import format_cpu_list, parse_cpu_list, parse_cpu_spec

cpu_sets = st.frozensets(st.integers(min_value=0, max_value=300), max_size=80)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", {0}),
        ("0-3", {0, 1, 2, 3}),
        ("0-3,8,10-11", {0, 1, 2, 3, 8, 10, 11}),
        (" 1 , 3 ", {1, 3}),
        ("5-5", {5}),
        ("3,1,2", {1, 2, 3}),
        ("0-2,1-4", {0, 1, 2, 3, 4}),
        ("0-10:2", {0, 2, 4, 6, 8, 10}),
        ("1-9:4", {1, 5, 9}),
        ("0-3:1", {0, 1, 2, 3}),
        ("127", {127}),
        ("0-3\n", {0, 1, 2, 3}),
    ],
)
def test_parse_examples(text, expected):
    assert parse_cpu_list(text) == frozenset(expected)


@pytest.mark.parametrize(
    "text",
    ["", "   ", ",", "0,", ",0", "a", "0-", "-1", "3-1", "1-2-3", "0-10:0", "0-4:x",
     "0:2:3", "1.5", "0x1", "１", "0 1", "+1", "0--1", "0-3,,4"],
)
def test_parse_malformed_raises(text):
    with pytest.raises(ValueError):
        parse_cpu_list(text)


@pytest.mark.parametrize(
    ("cpus", "expected"),
    [
        (set(), ""),
        ({0}, "0"),
        ({0, 1}, "0-1"),
        ({0, 1, 2, 3, 8, 10, 11}, "0-3,8,10-11"),
        ([3, 2, 1, 1, 0], "0-3"),
        ({0, 2, 4}, "0,2,4"),
        (range(128), "0-127"),
    ],
)
def test_format_examples(cpus, expected):
    assert format_cpu_list(cpus) == expected


@given(cpu_sets.filter(bool))
def test_format_then_parse_round_trips(cpus):
    assert parse_cpu_list(format_cpu_list(cpus)) == cpus


@given(cpu_sets)
def test_format_is_canonical(cpus):
    text = format_cpu_list(cpus)
    if not cpus:
        assert text == ""
        return
    ranges = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        low_n = int(low)
        high_n = int(high) if high else low_n
        assert low_n < high_n or not high, "single CPUs are written without a range"
        ranges.append((low_n, high_n))
    # Sorted, and no two ranges touch or overlap: the shortest form.
    for (_, high_a), (low_b, _) in zip(ranges, ranges[1:]):
        assert low_b > high_a + 1
    assert sum(h - lo + 1 for lo, h in ranges) == len(cpus)


@given(cpu_sets.filter(bool))
def test_parse_of_any_listing_then_format_is_canonical(cpus):
    # Any comma-joined listing (one CPU per item, reversed) normalises.
    text = ",".join(str(c) for c in sorted(cpus, reverse=True))
    assert format_cpu_list(parse_cpu_list(text)) == format_cpu_list(cpus)


@given(st.integers(0, 200), st.integers(0, 200), st.integers(1, 20))
def test_strided_range(low, span, stride):
    high = low + span
    assert parse_cpu_list(f"{low}-{high}:{stride}") == frozenset(range(low, high + 1, stride))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("all", ("all", None)),
        (" all ", ("all", None)),
        ("physical", ("physical", None)),
        ("first:1", ("first", 1)),
        ("first:16", ("first", 16)),
        ("0-3,8", ("list", frozenset({0, 1, 2, 3, 8}))),
        ("5", ("list", frozenset({5}))),
    ],
)
def test_parse_cpu_spec_forms(text, expected):
    assert parse_cpu_spec(text) == expected


@pytest.mark.parametrize(
    "text", ["", "first:", "first:0", "first:-1", "first:x", "ALL", "phys", "first", "0-", "3-1", "all,0"]
)
def test_parse_cpu_spec_rejects(text):
    with pytest.raises(ValueError):
        parse_cpu_spec(text)


def test_parse_cpu_spec_message_lists_the_forms():
    with pytest.raises(ValueError, match="first:N"):
        parse_cpu_spec("bogus")

"""The expression language: tcap.expr."""

from __future__ import annotations

import math
from fractions import Fraction
from unittest import mock

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tcap.expr import Expr, ExprError

FACTS = {"cpus": 8, "physical": 4}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", 1),
        ("cpus", 8),
        ("physical", 4),
        ("cpus / 2", 4),
        ("cpus / 3", 2),  # 8/3 floored
        ("cpus - 2", 6),
        ("cpus - 100", 1),  # at least 1
        ("0", 1),
        ("-5", 1),
        ("2 + 3 * 4", 14),  # precedence
        ("(2 + 3) * 4", 20),
        ("cpus - 2 - 3", 3),  # left associative
        ("cpus / 2 / 2", 2),
        ("cpus / 3 * 3", 8),  # exact arithmetic, not 2*3
        ("min(cpus, 3)", 3),
        ("max(1, physical - 2)", 2),
        ("max(cpus, physical, 100)", 100),
        ("min(cpus)", 8),
        ("--3", 3),
        ("cpus*physical", 32),
        ("  cpus  /  physical  ", 2),
        ("7 / 2", 3),
    ],
)
def test_examples(text, expected):
    assert Expr(text).evaluate(FACTS) == expected


def test_names_recorded():
    assert Expr("max(1, physical - 2)").names == {"physical"}
    assert Expr("cpus / physical").names == {"cpus", "physical"}
    assert Expr("3").names == set()


def test_division_by_zero_raises():
    with pytest.raises(ExprError, match="zero"):
        Expr("cpus / (physical - 4)").evaluate(FACTS)


def test_unknown_fact_raises():
    with pytest.raises(ExprError):
        Expr("physical").evaluate({"cpus": 4})


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os')",
        "__import__('os').system('true')",
        "cpus.real",
        "1 if 1 else 2",
        "lambda: 1",
        "lambda",
        "eval",
        "eval('1')",
        "exec('1')",
        "open('/etc/passwd')",
        "cpus ** 2",
        "cpus // 2",
        "cpus % 2",
        "[1]",
        "'1'",
        "abs(1)",
        "min",
        "min()",
        "min(1,)",
        "max(1 2)",
        "(cpus",
        "cpus)",
        "cpus +",
        "",
        "   ",
        "1.5",
        "cpus physical",
        "foo",
        "CPUS",
        "cpus[0]",
        "globals()",
    ],
)
def test_rejected(text):
    with mock.patch("builtins.eval", side_effect=AssertionError("eval called")), \
         mock.patch("builtins.exec", side_effect=AssertionError("exec called")), \
         mock.patch("builtins.__import__", wraps=__import__) as imported, pytest.raises(ExprError):
        Expr(text).evaluate(FACTS)
    assert not any(call.args and call.args[0] == "os" for call in imported.call_args_list)


def test_expr_error_is_value_error():
    assert issubclass(ExprError, ValueError)


# --- property: compare with a reference evaluator -------------------------

class DivisionByZero(Exception):
    pass


def _tree():
    leaves = st.one_of(st.integers(0, 50), st.sampled_from(["cpus", "physical"]))

    def extend(children):
        binary = st.tuples(st.sampled_from(["+", "-", "*", "/"]), children, children)
        functions = st.tuples(
            st.sampled_from(["min", "max"]), st.lists(children, min_size=1, max_size=3)
        ).map(lambda t: (t[0], *t[1]))
        negation = st.tuples(st.just("neg"), children)
        return st.one_of(binary, functions, negation)

    return st.recursive(leaves, extend, max_leaves=12)


def render(node) -> str:
    if isinstance(node, int):
        return str(node)
    if isinstance(node, str):
        return node
    op, *args = node
    if op in ("min", "max"):
        return f"{op}({', '.join(render(a) for a in args)})"
    if op == "neg":
        return f"-({render(args[0])})"
    return f"({render(args[0])} {op} {render(args[1])})"


def reference(node, facts) -> Fraction:
    if isinstance(node, int):
        return Fraction(node)
    if isinstance(node, str):
        return Fraction(facts[node])
    op, *args = node
    values = [reference(a, facts) for a in args]
    if op == "min":
        return min(values)
    if op == "max":
        return max(values)
    if op == "neg":
        return -values[0]
    a, b = values
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0:
        raise DivisionByZero
    return a / b


@settings(max_examples=300)
@given(_tree(), st.integers(1, 256), st.integers(1, 128))
def test_matches_reference(tree, cpus, physical):
    facts = {"cpus": cpus, "physical": physical}
    text = render(tree)
    try:
        expected = reference(tree, facts)
    except DivisionByZero:
        with pytest.raises(ExprError):
            Expr(text).evaluate(facts)
        return
    assert Expr(text).evaluate(facts) == max(1, math.floor(expected))


@given(_tree())
def test_unparenthesised_rendering_follows_precedence(tree):
    # Render binary operators without parentheses when a child is a leaf or
    # a function call: the parser must still apply * / before + -.
    facts = {"cpus": 12, "physical": 6}
    assume(isinstance(tree, tuple) and tree[0] in "+-*/")
    op, left, right = tree
    if not all(isinstance(x, (int, str)) for x in (left, right)):
        return
    text = f"{render(left)} {op} {render(right)} * 2 + 1"
    try:
        tree = (op, left, ("*", right, 2)) if op in "+-" else ("*", (op, left, right), 2)
        expected = reference(("+", tree, 1), facts)
    except DivisionByZero:
        with pytest.raises(ExprError):
            Expr(text).evaluate(facts)
        return
    assert Expr(text).evaluate(facts) == max(1, math.floor(expected))

"""Small arithmetic over machine facts: ``"cpus / 2"``, ``"max(1, physical - 2)"``.

Profiles may give a thread count as an expression over named facts with
``+ - * /``, parentheses, ``min()`` and ``max()``.  The text is parsed by
this recursive-descent parser, never handed to ``eval``.  Arithmetic is
exact (fractions); the result is floored and at least 1.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from fractions import Fraction
from typing import Any, Union

from tcap.bounds import MAX_DEPTH, MAX_DIGITS, MAX_EXPRESSION

#: Names an expression may use.
NAMES = ("cpus", "physical")
FUNCTIONS = ("min", "max")

# A parsed expression: an int, a name, or (operator, operand, ...).
Node = Union[int, str, tuple[Any, ...]]

_TOKEN = re.compile(r"\s*(?:(\d+)|([A-Za-z_]\w*)|(\S))")


class ExprError(ValueError):
    """A malformed expression, or one that cannot be evaluated."""


class Expr:
    """A parsed expression; ``names`` are the facts it reads."""

    def __init__(self, text: str) -> None:
        self.text = text.strip()
        if len(text) > MAX_EXPRESSION:
            raise ExprError(f"expression of {len(text)} characters, above tcap's limit of {MAX_EXPRESSION}")
        self._tokens = _tokenize(text)
        self._pos = 0
        self._depth = 0
        self.names: set[str] = set()
        self.tree = self._sum()
        if self._pos != len(self._tokens):
            raise ExprError(f"unexpected {self._tokens[self._pos]!r} in {self.text!r}")
        del self._tokens

    def evaluate(self, facts: Mapping[str, int]) -> int:
        """The value for ``facts``, floored and at least 1."""
        value = _evaluate(self.tree, facts)
        return max(1, int(value // 1))

    # expression := term (("+" | "-") term)*
    def _sum(self) -> Node:
        node = self._product()
        while self._peek() in ("+", "-"):
            node = (self._next(), node, self._product())
        return node

    # term := factor (("*" | "/") factor)*
    def _product(self) -> Node:
        node = self._factor()
        while self._peek() in ("*", "/"):
            node = (self._next(), node, self._factor())
        return node

    # factor := NUMBER | NAME | FUNC "(" expression ("," expression)* ")"
    #         | "(" expression ")" | "-" factor
    def _factor(self) -> Node:
        self._depth += 1
        try:
            return self._bounded_factor()
        finally:
            self._depth -= 1

    def _bounded_factor(self) -> Node:
        if self._depth > MAX_DEPTH:
            raise ExprError(f"{self.text[:40]!r} nests deeper than tcap's limit of {MAX_DEPTH}")
        token = self._next()
        if token is None:
            raise ExprError(f"{self.text!r} ends too early")
        if token.isdigit():
            if len(token) > MAX_DIGITS or not token.isascii():
                raise ExprError(f"{token[:20]}{'...' if len(token) > 20 else ''} is not a thread count "
                                f"(at most {MAX_DIGITS} digits)")
            return int(token)
        if token == "-":
            return ("neg", self._factor())
        if token == "(":
            node = self._sum()
            self._expect(")")
            return node
        if token in FUNCTIONS:
            self._expect("(")
            args = [self._sum()]
            while self._peek() == ",":
                self._next()
                args.append(self._sum())
            self._expect(")")
            return (token, *args)
        if token in NAMES:
            self.names.add(token)
            return token
        if token[0].isalpha() or token[0] == "_":
            known = ", ".join(NAMES + tuple(f + "()" for f in FUNCTIONS))
            raise ExprError(f"unknown name {token!r} in {self.text!r} (known: {known})")
        raise ExprError(f"unexpected {token!r} in {self.text!r}")

    def _peek(self) -> str | None:
        return self._tokens[self._pos] if self._pos < len(self._tokens) else None

    def _next(self) -> str | None:
        token = self._peek()
        self._pos += 1
        return token

    def _expect(self, wanted: str) -> None:
        token = self._next()
        if token != wanted:
            found = "the end" if token is None else repr(token)
            raise ExprError(f"expected {wanted!r} but found {found} in {self.text!r}")


def _tokenize(text: str) -> list[str]:
    tokens = []
    for match in _TOKEN.finditer(text):
        token = next((g for g in match.groups() if g is not None), None)
        if token is not None:
            tokens.append(token)
    if not tokens:
        raise ExprError("empty expression")
    return tokens


def _evaluate(node: Node, facts: Mapping[str, int]) -> Fraction:
    if isinstance(node, int):
        return Fraction(node)
    if isinstance(node, str):
        value = facts.get(node)
        if value is None:
            raise ExprError(f"{node} is not known on this machine")
        return Fraction(value)
    op, *args = node
    values = [_evaluate(arg, facts) for arg in args]
    if op == "neg":
        return -values[0]
    if op == "min":
        return min(values)
    if op == "max":
        return max(values)
    left, right = values
    if op == "+":
        return left + right
    if op == "-":
        return left - right
    if op == "*":
        return left * right
    if right == 0:
        raise ExprError("division by zero")
    return left / right

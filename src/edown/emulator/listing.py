"""``listAssets``' AIP-160 filter: parse it, bound the catalogue query, and test each asset.

``ee.data.listImages`` turns ``startTime``, ``endTime``, ``region`` and ``properties`` into one filter
string such as ``startTime >= "2024-06-01T00:00:00Z" AND endTime < "2024-06-08T00:00:00Z" AND
intersects("{'type': 'Polygon', ...}") AND properties.CLOUDY_PIXEL_PERCENTAGE<20``. We accept the AIP-160
subset Earth Engine documents: comparisons on ``startTime``, ``endTime``, ``updateTime`` and
``properties.NAME``; ``intersects(...)``; ``AND``, ``OR``, ``NOT`` and parentheses. Anything else is a
400 that names what was not understood.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from edown.emulator.model import ImageAsset, parse_rfc3339


class FilterSyntaxError(ValueError):
    """An AIP-160 filter the emulator cannot parse (HTTP 400)."""


_TOKEN = re.compile(
    r"\s*(?:(?P<str>\"(?:[^\"\\]|\\.)*\")|(?P<op><=|>=|!=|=|<|>|:|\(|\)|,)"
    r"|(?P<num>-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)|(?P<word>[A-Za-z_][\w.:]*))"
)

TIME_FIELDS = ("startTime", "endTime", "updateTime")


@dataclass(frozen=True)
class Predicate:
    """A parsed filter: an exact test plus the start-time/region bounds implied by its top-level ANDs."""

    test: Callable[[ImageAsset], bool]
    start: int | None = None
    end: int | None = None
    region: BaseGeometry | None = None


def parse_filter(text: str | None) -> Predicate:
    if text is None or not text.strip():
        return Predicate(lambda _asset: True)
    parser = _Parser(_tokenize(text), text)
    node = parser.expression()
    if parser.peek() is not None:
        raise FilterSyntaxError(f"Invalid filter {text!r}: unexpected {parser.peek()[1]!r}.")  # type: ignore[index]
    start, end, region = _bounds(node)
    return Predicate(lambda asset: _evaluate(node, asset), start, end, region)


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(text):
        if not text[pos:].strip():
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise FilterSyntaxError(f"Invalid filter {text!r}: cannot parse at position {pos}.")
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    return tokens


# Nodes: ("and", [n...]) ("or", [n...]) ("not", n) ("cmp", field, op, value) ("intersects", geom)
Node = tuple[Any, ...]


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], text: str) -> None:
        self.tokens = tokens
        self.text = text
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise FilterSyntaxError(f"Invalid filter {self.text!r}: unexpected end.")
        self.i += 1
        return tok

    def expression(self) -> Node:
        terms = [self.conjunction()]
        while self.peek() == ("word", "OR"):
            self.take()
            terms.append(self.conjunction())
        return terms[0] if len(terms) == 1 else ("or", terms)

    def conjunction(self) -> Node:
        terms = [self.negation()]
        while True:
            tok = self.peek()
            if tok == ("word", "AND"):
                self.take()
                terms.append(self.negation())
            elif tok is not None and tok not in (("op", ")"), ("word", "OR")):
                terms.append(self.negation())  # AIP-160: juxtaposition means AND
            else:
                break
        return terms[0] if len(terms) == 1 else ("and", terms)

    def negation(self) -> Node:
        if self.peek() == ("word", "NOT"):
            self.take()
            return ("not", self.negation())
        return self.term()

    def term(self) -> Node:
        tok = self.take()
        if tok == ("op", "("):
            node = self.expression()
            if self.take() != ("op", ")"):
                raise FilterSyntaxError(f"Invalid filter {self.text!r}: missing ')'.")
            return node
        if tok[0] != "word":
            raise FilterSyntaxError(f"Invalid filter {self.text!r}: unexpected {tok[1]!r}.")
        name = tok[1]
        if self.peek() == ("op", "("):
            return self.function(name)
        op = self.take()
        if op[0] != "op" or op[1] not in ("=", "!=", "<", "<=", ">", ">=", ":"):
            raise FilterSyntaxError(f"Invalid filter {self.text!r}: expected a comparison after {name!r}.")
        value = self.value()
        if name not in TIME_FIELDS and not name.startswith("properties."):
            raise FilterSyntaxError(
                f"Invalid filter {self.text!r}: unsupported field {name!r} (use startTime, endTime, updateTime "
                "or properties.NAME)."
            )
        if name in TIME_FIELDS:
            if not isinstance(value, str):
                raise FilterSyntaxError(f"Invalid filter {self.text!r}: {name} needs a quoted timestamp.")
            try:
                value = parse_rfc3339(value)
            except ValueError:
                raise FilterSyntaxError(f"Invalid filter {self.text!r}: bad timestamp {value!r}.") from None
        return ("cmp", name, op[1], value)

    def function(self, name: str) -> Node:
        self.take()
        arg = self.take()
        if self.take() != ("op", ")"):
            raise FilterSyntaxError(f"Invalid filter {self.text!r}: {name}() takes one argument.")
        if name != "intersects" or arg[0] != "str":
            raise FilterSyntaxError(f"Invalid filter {self.text!r}: unsupported function {name!r}.")
        raw = _unquote(arg[1])
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError:
            try:
                obj = json.loads(raw.replace("'", '"'))
            except json.JSONDecodeError:
                raise FilterSyntaxError(
                    f"Invalid filter {self.text!r}: intersects() needs GeoJSON."
                ) from None
        try:
            geom = shape(obj)
        except Exception as exc:
            raise FilterSyntaxError(
                f"Invalid filter {self.text!r}: bad geometry in intersects(): {exc}"
            ) from None
        return ("intersects", geom)

    def value(self) -> Any:
        kind, text = self.take()
        if kind == "str":
            return _unquote(text)
        if kind == "num":
            number = float(text)
            return (
                int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number
            )
        if kind == "word":
            return {"true": True, "false": False, "null": None}.get(text, text)
        raise FilterSyntaxError(f"Invalid filter {self.text!r}: unexpected {text!r}.")


def _unquote(text: str) -> str:
    return str(json.loads(text))


def _bounds(node: Node) -> tuple[int | None, int | None, BaseGeometry | None]:
    start: int | None = None
    end: int | None = None
    region: BaseGeometry | None = None
    conjuncts = node[1] if node[0] == "and" else [node]
    for term in conjuncts:
        if term[0] == "intersects":
            region = term[1] if region is None else region.intersection(term[1])
        elif term[0] == "cmp" and term[1] in ("startTime", "endTime"):
            _, field, op, value = term
            if field == "startTime" and op in (">=", ">", "="):
                start = value if start is None else max(start, value)
            # start <= end for every asset, so an upper bound on either time bounds the start.
            if op in ("<", "=") or op == "<=":
                bound = value + (1 if op in ("<=", "=") else 0)
                end = bound if end is None else min(end, bound)
    return start, end, region


def _field_value(asset: ImageAsset, name: str) -> Any:
    if name == "startTime":
        return asset.start_ms
    if name == "endTime":
        return asset.end_ms
    if name == "updateTime":
        return asset.version // 1000
    return asset.properties.get(name[len("properties.") :])


def _evaluate(node: Node, asset: ImageAsset) -> bool:
    kind = node[0]
    if kind == "and":
        return all(_evaluate(n, asset) for n in node[1])
    if kind == "or":
        return any(_evaluate(n, asset) for n in node[1])
    if kind == "not":
        return not _evaluate(node[1], asset)
    if kind == "intersects":
        return bool(asset.footprint.lonlat.intersects(node[1]))
    _, field, op, value = node
    actual = _field_value(asset, field)
    if actual is None:
        return False
    if isinstance(actual, str) != isinstance(value, str):
        if isinstance(value, str) and isinstance(actual, int | float):
            try:
                value = float(value)
            except ValueError:
                return False
        else:
            value = str(value)
    try:
        return {
            "=": actual == value,
            ":": actual == value,
            "!=": actual != value,
            "<": actual < value,
            "<=": actual <= value,
            ">": actual > value,
            ">=": actual >= value,
        }[op]
    except TypeError:
        return False

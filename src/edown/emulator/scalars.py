# ruff: noqa: N803 (arguments are named as Earth Engine names them: the client sends them by name)
"""Earth Engine's server-side numbers, strings, lists, dictionaries and date formatting.

Plain values map to Python's (``ee.Number`` is a Python number, ``ee.List`` a list...). Where EE's rules
differ from Python's they are EE's: truthiness (``If``) treats 0, NaN, null and empty strings, lists and
dictionaries as false; ``List.sequence`` includes its end, and given both an end and a count spaces
the count values evenly from start to end; ``Date.format`` speaks Joda-Time patterns
(``yyyy-MM-dd'T'HH:mm:ss`` by default, in UTC).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable
from typing import Any

from edown.emulator.budget import charge
from edown.emulator.images import EvaluationError
from edown.emulator.values import EEDate, EEFunction, to_millis

Function = Callable[..., Any]

#: ``List.sequence`` refuses to build longer lists (EE's own limit on list sizes is of this order).
MAX_SEQUENCE = 1_000_000


def truthy(value: Any) -> bool:
    """EE's boolean reading of any value (``If``, ``Filter`` on computed values)."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return not (value == 0 or math.isnan(value))
    if isinstance(value, str | list | dict):
        return len(value) > 0
    return True


def _number(value: Any, function: str) -> float | int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return value
    raise EvaluationError(f"{function}: Expected a number, got {type(value).__name__}.")


def sequence(start: Any, end: Any = None, step: Any = None, count: Any = None) -> list[Any]:
    first = _number(start, "List.sequence")
    stride = 1 if step is None else _number(step, "List.sequence")
    if stride == 0:
        raise EvaluationError("List.sequence: step must not be 0.")
    if count is not None and end is not None:
        return _spaced(first, _number(end, "List.sequence"), int(count))
    if count is not None:
        n = int(count)
    elif end is not None:
        n = math.floor((_number(end, "List.sequence") - first) / stride + 1e-9) + 1
    else:
        raise EvaluationError("List.sequence: Either 'end' or 'count' must be specified.")
    if n > MAX_SEQUENCE:
        raise EvaluationError(f"List.sequence: A list of {n} elements is longer than {MAX_SEQUENCE}.")
    charge(max(n, 0))
    integral = all(isinstance(v, int) for v in (first, stride))
    return [first + i * stride if integral else float(first + i * stride) for i in range(max(n, 0))]


def _spaced(first: float | int, last: float | int, n: int) -> list[Any]:
    """``count`` values evenly spaced from ``start`` to ``end`` inclusive (EE, when both are given)."""
    if n > MAX_SEQUENCE:
        raise EvaluationError(f"List.sequence: A list of {n} elements is longer than {MAX_SEQUENCE}.")
    charge(max(n, 0))
    if n <= 1:
        return [first][: max(n, 0)]
    span = last - first
    if isinstance(first, int) and isinstance(last, int) and span % (n - 1) == 0:
        return [first + i * (span // (n - 1)) for i in range(n)]
    return [float(first + i * span / (n - 1)) for i in range(n - 1)] + [float(last)]


_JODA = re.compile(r"'[^']*'|y+|Y+|M+|d+|D+|H+|h+|m+|s+|S+|E+|a|Z+")


def format_date(millis: int, pattern: str | None) -> str:
    """A Joda-Time pattern applied to a UTC instant (EE's ``Date.format``)."""
    stamp = dt.datetime.fromtimestamp(millis / 1000, tz=dt.timezone.utc)
    if pattern is None:
        return stamp.strftime("%Y-%m-%dT%H:%M:%S")

    def token(match: re.Match[str]) -> str:
        text = match.group(0)
        letter, width = text[0], len(text)
        if letter == "'":
            return text[1:-1] if width > 2 else "'"
        if letter in "yY":
            return f"{stamp.year % 100:02d}" if width == 2 else f"{stamp.year:0{width}d}"
        if letter == "M":
            if width >= 4:
                return stamp.strftime("%B")
            if width == 3:
                return stamp.strftime("%b")
            return f"{stamp.month:0{width}d}"
        if letter == "d":
            return f"{stamp.day:0{width}d}"
        if letter == "D":
            return f"{stamp.timetuple().tm_yday:0{width}d}"
        if letter == "H":
            return f"{stamp.hour:0{width}d}"
        if letter == "h":
            return f"{(stamp.hour % 12) or 12:0{width}d}"
        if letter == "m":
            return f"{stamp.minute:0{width}d}"
        if letter == "s":
            return f"{stamp.second:0{width}d}"
        if letter == "S":
            return f"{stamp.microsecond // 1000:03d}"[:width].ljust(width, "0")
        if letter == "E":
            return stamp.strftime("%A" if width >= 4 else "%a")
        if letter == "a":
            return "AM" if stamp.hour < 12 else "PM"
        return "+0000" if width == 1 else "Z" if width == 3 else "+00:00"

    return _JODA.sub(token, pattern)


def register(reg: dict[str, Function]) -> None:
    """Add the scalar functions to an evaluator's registry."""

    def fn(name: str) -> Callable[[Function], Function]:
        def deco(f: Function) -> Function:
            reg[name] = f
            return f

        return deco

    # -- numbers --
    binary: dict[str, Callable[[Any, Any], Any]] = {
        "add": lambda a, b: a + b,
        "subtract": lambda a, b: a - b,
        "multiply": lambda a, b: a * b,
        "divide": lambda a, b: a / b if b else 0,
        "max": max,
        "min": min,
        "pow": lambda a, b: a**b,
        "mod": lambda a, b: math.fmod(a, b) if b else 0,
        "gt": lambda a, b: int(a > b),
        "gte": lambda a, b: int(a >= b),
        "lt": lambda a, b: int(a < b),
        "lte": lambda a, b: int(a <= b),
        "eq": lambda a, b: int(a == b),
        "neq": lambda a, b: int(a != b),
        "and": lambda a, b: int(truthy(a) and truthy(b)),
        "or": lambda a, b: int(truthy(a) or truthy(b)),
    }
    for op, func in binary.items():
        reg[f"Number.{op}"] = lambda left, right, _f=func, _op=op: _f(
            _number(left, f"Number.{_op}"), _number(right, f"Number.{_op}")
        )
    unary: dict[str, Callable[[Any], Any]] = {
        "abs": abs,
        "round": lambda a: math.floor(a + 0.5),
        "floor": math.floor,
        "ceil": math.ceil,
        "sqrt": math.sqrt,
        "exp": math.exp,
        "log": math.log,
        "log10": math.log10,
        "not": lambda a: int(not truthy(a)),
        "toInt": int,
        "int": int,
        "toLong": int,
        "long": int,
        "toFloat": float,
        "float": float,
        "toDouble": float,
        "double": float,
    }
    for op, func1 in unary.items():
        reg[f"Number.{op}"] = lambda input, _f=func1, _op=op: _f(_number(input, f"Number.{_op}"))

    @fn("Number.format")
    def _number_format(number: Any, pattern: str | None = None) -> str:
        value = _number(number, "Number.format")
        if pattern is None:
            return str(value)
        try:
            return pattern % value
        except (TypeError, ValueError):
            raise EvaluationError(f"Number.format: Invalid pattern '{pattern}'.") from None

    @fn("Number.parse")
    def _number_parse(input: str, radix: int = 10) -> float | int:
        try:
            return int(input, int(radix)) if re.fullmatch(r"[-+]?\w+", input.strip()) else float(input)
        except ValueError:
            raise EvaluationError(f"Number.parse: Unable to parse '{input}'.") from None

    # -- strings --
    @fn("String")
    def _string(input: Any) -> str:
        return input if isinstance(input, str) else str(input)

    @fn("String.cat")
    def _cat(string1: str, string2: str) -> str:
        return f"{string1}{string2}"

    @fn("String.length")
    def _str_len(string: str) -> int:
        return len(string)

    @fn("String.replace")
    def _str_replace(input: str, regex: str, replacement: str, flags: str | None = None) -> str:
        count = 0 if flags and "g" in flags else 1
        return re.sub(regex, replacement.replace("$", "\\"), input, count=count)

    # -- lists --
    @fn("List.sequence")
    def _sequence(start: Any, end: Any = None, step: Any = None, count: Any = None) -> list[Any]:
        return sequence(start, end, step, count)

    @fn("List.length")
    def _length(list: list[Any]) -> int:
        return len(list)

    @fn("List.contains")
    def _contains(list: list[Any], element: Any) -> bool:
        return element in list

    @fn("List.sort")
    def _sort(list: list[Any], keys: list[Any] | None = None) -> list[Any]:
        order = keys if keys is not None else list
        return [v for _, v in sorted(zip(order, list, strict=True), key=lambda p: p[0])]

    @fn("List.remove")
    def _remove(list: list[Any], element: Any) -> list[Any]:
        out = [*list]
        if element in out:
            out.remove(element)
        return out

    @fn("List.cat")
    def _list_cat(list: list[Any], other: list[Any]) -> list[Any]:
        charge(len(list) + len(other))
        return [*list, *other]

    @fn("List.add")
    def _list_add(list: list[Any], element: Any) -> list[Any]:
        charge(len(list))
        return [*list, element]

    @fn("List.map")
    def _list_map(list: list[Any], baseAlgorithm: EEFunction, dropNulls: bool = False) -> list[Any]:
        name = baseAlgorithm.arg_names[0] if baseAlgorithm.arg_names else "_MAPPING_VAR_0_0"
        out = [baseAlgorithm(**{name: v}) for v in list]
        return [v for v in out if v is not None] if dropNulls else out

    @fn("List.iterate")
    def _list_iterate(list: list[Any], function: EEFunction, first: Any) -> Any:
        names = function.arg_names
        acc = first
        for value in list:
            acc = function(**{names[0]: value, names[1]: acc})
        return acc

    @fn("List.reduce")
    def _list_reduce(list: list[Any], reducer: Any) -> Any:
        from edown.emulator.reducers import EEReducer, reduce_list

        if not isinstance(reducer, EEReducer):
            raise EvaluationError("List.reduce: Expected a Reducer.")
        if reducer.kind in ("first", "firstNonNull"):
            # Any values, not only numbers: ee.List([image, fallback]).reduce(firstNonNull) picks one.
            present = [v for v in list if v is not None] if reducer.kind == "firstNonNull" else list
            return present[0] if present else None
        return reduce_list(list, reducer)

    # -- dictionaries --
    @fn("Dictionary.get")
    def _dict_get(dictionary: dict[str, Any], key: str, defaultValue: Any = None) -> Any:
        if key in dictionary:
            return dictionary[key]
        if defaultValue is not None:
            return defaultValue
        raise EvaluationError(f"Dictionary.get: Dictionary does not contain key: '{key}'.")

    @fn("Dictionary.keys")
    def _dict_keys(dictionary: dict[str, Any]) -> list[str]:
        return sorted(dictionary)

    @fn("Dictionary.values")
    def _dict_values(dictionary: dict[str, Any], keys: list[str] | None = None) -> list[Any]:
        return [dictionary[k] for k in (keys if keys is not None else sorted(dictionary))]

    @fn("Dictionary.contains")
    def _dict_contains(dictionary: dict[str, Any], key: str) -> bool:
        return key in dictionary

    @fn("Dictionary.remove")
    def _dict_remove(
        dictionary: dict[str, Any], selectors: list[str], ignoreMissing: bool = False
    ) -> dict[str, Any]:
        missing = [k for k in selectors if k not in dictionary]
        if missing and not ignoreMissing:
            raise EvaluationError(f"Dictionary.remove: Dictionary does not contain key: '{missing[0]}'.")
        return {k: v for k, v in dictionary.items() if k not in selectors}

    @fn("Dictionary.set")
    def _dict_set(dictionary: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
        return {**dictionary, key: value}

    @fn("Dictionary.map")
    def _dict_map(dictionary: dict[str, Any], baseAlgorithm: EEFunction) -> dict[str, Any]:
        key_arg, value_arg = baseAlgorithm.arg_names[:2]
        return {k: baseAlgorithm(**{key_arg: k, value_arg: v}) for k, v in sorted(dictionary.items())}

    @fn("Dictionary.fromLists")
    def _dict_from_lists(keys: list[str], values: list[Any]) -> dict[str, Any]:
        return dict(zip(keys, values, strict=True))

    # -- dates --
    @fn("Date.format")
    def _date_format(date: Any, format: str | None = None, timeZone: str | None = None) -> str:
        if timeZone not in (None, "UTC", "GMT", "Etc/UTC"):
            raise EvaluationError(
                f"Date.format: time zone '{timeZone}' is not supported by the edown emulator."
            )
        return format_date(to_millis(date), format)

    @fn("Date.get")
    def _date_get(date: Any, unit: str, timeZone: str | None = None) -> int:
        stamp = dt.datetime.fromtimestamp(to_millis(date) / 1000, tz=dt.timezone.utc)
        parts = {
            "year": stamp.year,
            "month": stamp.month,
            "week": stamp.isocalendar()[1],
            "day": stamp.day,
            "hour": stamp.hour,
            "minute": stamp.minute,
            "second": stamp.second,
        }
        key = unit.lower().rstrip("s")
        if key not in parts:
            raise EvaluationError(f"Date.get: Unknown unit '{unit}'.")
        return parts[key]

    @fn("Date.difference")
    def _date_difference(date: Any, start: Any, unit: str) -> float:
        fixed = {"second": 1000, "minute": 60_000, "hour": 3_600_000, "day": 86_400_000, "week": 604_800_000}
        key = unit.lower().rstrip("s")
        if key not in fixed:
            raise EvaluationError(f"Date.difference: unit '{unit}' is not supported by the edown emulator.")
        return (to_millis(date) - to_millis(start)) / fixed[key]

    @fn("Date.fromMillis")
    def _from_millis(millis: Any) -> EEDate:
        return EEDate(int(millis))

"""The filters of LangGraph's stores, as ``InMemoryStore`` applies them (pure functions).

``matches(value, filter)`` for ``search(filter=...)``: equality, nested dicts, lists, and
the operators ``$eq``, ``$ne``, ``$gt``, ``$gte``, ``$lt``, ``$lte``; a range operator on a
value that is not a number does not match (``InMemoryStore`` raises there).
``namespace_matches(condition, namespace)`` for ``list_namespaces`` prefix/suffix
conditions with ``"*"`` wildcards.

>>> from langgraph.store.base import MatchCondition
>>> namespace_matches(MatchCondition("suffix", ("*", "v1")), ("docs", "drafts", "v1"))
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langgraph.store.base import MatchCondition

__all__ = ["matches", "namespace_matches"]


def namespace_matches(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    """Whether ``namespace`` meets a ``list_namespaces`` prefix or suffix condition."""
    path = tuple(condition.path)
    if len(namespace) < len(path):
        return False
    if condition.match_type == "prefix":
        pairs = zip(namespace, path, strict=False)
    elif condition.match_type == "suffix":
        pairs = zip(reversed(namespace), reversed(path), strict=False)
    else:
        raise ValueError(f"unsupported match type {condition.match_type!r}")
    return all(p == "*" or k == p for k, p in pairs)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


_RANGE: dict[str, Callable[[float, float], bool]] = {
    "$gt": lambda a, b: a > b,
    "$gte": lambda a, b: a >= b,
    "$lt": lambda a, b: a < b,
    "$lte": lambda a, b: a <= b,
}


def _apply_operator(value: Any, operator: str, operand: Any) -> bool:
    if operator == "$eq":
        return bool(value == operand)
    if operator == "$ne":
        return bool(value != operand)
    compare = _RANGE.get(operator)
    if compare is None:
        raise ValueError(f"unsupported filter operator {operator!r}")
    a, b = _number(value), _number(operand)
    return a is not None and b is not None and compare(a, b)


def matches(value: Any, wanted: Any) -> bool:
    """Whether a stored ``value`` matches a ``filter`` value (``InMemoryStore``'s rules).

    >>> matches({"a": 3, "b": {"c": "x"}}, {"a": {"$gte": 2}, "b": {"c": "x"}})
    True
    >>> matches(None, {"$gt": 1})
    False
    """
    if isinstance(wanted, dict):
        if any(str(k).startswith("$") for k in wanted):
            return all(_apply_operator(value, op, operand) for op, operand in wanted.items())
        if not isinstance(value, dict):
            return False
        return all(matches(value.get(k), v) for k, v in wanted.items())
    if isinstance(wanted, (list, tuple)):
        return (
            isinstance(value, (list, tuple))
            and len(value) == len(wanted)
            and all(matches(a, b) for a, b in zip(value, wanted, strict=True))
        )
    return bool(value == wanted)

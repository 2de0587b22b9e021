"""Helpers shared by the benchmarks: interleaved side-by-side timing, results table."""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def interleaved(
    runs: dict[str, Callable[[], Awaitable[float]]],
    repeats: int = 3,
    statistic: Callable[[list[float]], float] = statistics.median,
) -> dict[str, float]:
    """Run each measurement ``repeats`` times, interleaved (A B A B ...), and return the
    median of each (or ``statistic``). Each callable returns its own figure (e.g.
    tokens/s)."""
    figures: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            figures[name].append(await run())
    return {name: statistic(values) for name, values in figures.items()}


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def entry(
    name: str,
    value: float,
    unit: str,
    *,
    target: str | None = None,
    passed: bool | None = None,
    **details: Any,
) -> dict[str, Any]:
    """One row of ``bench/results.json``."""
    return {
        "name": name,
        "value": round(value, 4),
        "unit": unit,
        "target": target,
        "passed": passed,
        "details": details,
    }

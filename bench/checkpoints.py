"""How much checkpointing costs as the interval shrinks.

A simulated session of ``total_tokens`` streamed tokens (about 4 characters each, split
over several question/answer turns) is driven through a
:class:`~langchain_fabstir.checkpoints.CheckpointTracker`. Because a checkpoint hashes
only its delta, checkpointing every 100 tokens should cost little more than every
10,000: ``make bench`` reports the ratio (it must stay <= 2.0).

Run alone: ``python -m bench.checkpoints``. ``BENCHMARKS`` follows the
``bench.run`` convention (a module ``bench.checkpoints`` can re-export it).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench.common import entry
from langchain_fabstir.checkpoints import CheckpointTracker

__all__ = ["BENCHMARKS", "bench_checkpointing", "checkpoint_interval_ratio", "interval_ratio"]

_WORDS = ("tok ", "en. ", "abc ", "déjà", "xyz ", "1234", "fooo", "bar ")


def bench_checkpointing(
    total_tokens: int, interval: int, *, turns: int = 20, repeats: int = 5
) -> float:
    """Seconds to stream ``total_tokens`` tokens through a tracker at ``interval``.

    The session has a system prompt and ``turns`` user/assistant exchanges; every token
    is one ``on_tokens`` call with ~4 characters, and each answer ends with
    ``end_message``. The best of ``repeats`` runs is returned: the work is deterministic,
    so the fastest run is the one least disturbed by other processes.
    """
    per_answer = max(1, total_tokens // turns)
    best = float("inf")
    for _ in range(repeats):
        tracker = CheckpointTracker("bench", checkpoint_interval=interval)
        start = time.perf_counter()
        tracker.add_message("system", "You are a helpful assistant.")
        streamed = 0
        turn = 0
        while streamed < total_tokens:
            tracker.add_message("user", f"Question {turn}: tell me more.")
            tracker.add_message("assistant")
            for i in range(min(per_answer, total_tokens - streamed)):
                tracker.on_tokens(_WORDS[i & 7], 1)
            streamed += min(per_answer, total_tokens - streamed)
            tracker.end_message()
            turn += 1
        best = min(best, time.perf_counter() - start)
    return best


def checkpoint_interval_ratio(
    total_tokens: int = 100_000, small: int = 100, large: int = 10_000
) -> float:
    """``bench_checkpointing(total, small) / bench_checkpointing(total, large)``."""
    return bench_checkpointing(total_tokens, small) / bench_checkpointing(total_tokens, large)


def interval_ratio() -> dict[str, Any]:
    """``make bench`` row: time at interval 100 over interval 10,000, 100,000 tokens.

    The two are measured interleaved, three times each (each a best of five); the best
    of each are compared.
    """
    small: list[float] = []
    large: list[float] = []
    for _ in range(3):
        small.append(bench_checkpointing(100_000, 100))
        large.append(bench_checkpointing(100_000, 10_000))
    ratio = min(small) / min(large)
    return entry(
        "interval_100_over_10000",
        ratio,
        "ratio",
        target="<= 2.0",
        passed=ratio <= 2.0,
        tokens=100_000,
        seconds_interval_100=round(min(small), 4),
        seconds_interval_10000=round(min(large), 4),
        median_ratio=round(statistics.median(small) / statistics.median(large), 4),
    )


BENCHMARKS = [interval_ratio]


if __name__ == "__main__":
    small = bench_checkpointing(100_000, 100)
    large = bench_checkpointing(100_000, 10_000)
    print(
        f"100,000 tokens: interval 100 {small:.3f}s, interval 10,000 {large:.3f}s, "
        f"ratio {small / large:.2f} (must be <= 2.0)"
    )

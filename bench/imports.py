"""Import cost (issue 22 item 4), each figure side by side in one run, fresh interpreters.

(a) ``import langchain_fabstir`` over ``import langchain_core.language_models.chat_models``
    (the import every LangChain chat model pays): target <= 1.3.
(b) ``from langchain_fabstir import ChatFabstir`` over the same: report (the client
    stack: httpx, websockets, pydantic models of the session layer).
(c) ``fabstir --help`` wall time (interpreter start included) over ``python -c pass``:
    report (every CLI call pays it).

Each import is timed inside its own fresh interpreter (``perf_counter`` around the import
statement, interpreter start excluded), interleaved A B A B..., median of ``REPEATS``.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from typing import Any

from bench.common import entry

REPEATS = 9
CORE = "import langchain_core.language_models.chat_models"
PLAIN = "import langchain_fabstir"
CHAT = "from langchain_fabstir import ChatFabstir"


def _import_seconds(statement: str) -> float:
    code = f"import time\nt = time.perf_counter()\n{statement}\nprint(time.perf_counter() - t)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return float(out.stdout.strip())


def _wall_seconds(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], capture_output=True, check=True, timeout=120)
    return time.perf_counter() - start


def _medians(runs: dict[str, Any]) -> dict[str, float]:
    figures: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(REPEATS):
        for name, run in runs.items():
            figures[name].append(run())
    return {name: statistics.median(values) for name, values in figures.items()}


def import_cost() -> list[dict[str, Any]]:
    m = _medians(
        {
            "core": lambda: _import_seconds(CORE),
            "plain": lambda: _import_seconds(PLAIN),
            "chat": lambda: _import_seconds(CHAT),
            "bare": lambda: _wall_seconds("-c", "pass"),
            "cli": lambda: _wall_seconds("-m", "langchain_fabstir.cli", "--help"),
        }
    )
    plain, chat, cli = m["plain"] / m["core"], m["chat"] / m["core"], m["cli"] / m["bare"]
    core_ms = round(m["core"] * 1000)
    return [
        entry(
            "import_langchain_fabstir_over_langchain_core_chat_models",
            plain,
            "ratio",
            target="<= 1.3",
            passed=plain <= 1.3,
            fabstir_ms=round(m["plain"] * 1000),
            langchain_core_ms=core_ms,
            repeats=REPEATS,
        ),
        entry(
            "import_chatfabstir_over_langchain_core_chat_models",
            chat,
            "ratio",
            target="report",
            passed=None,
            fabstir_ms=round(m["chat"] * 1000),
            langchain_core_ms=core_ms,
            repeats=REPEATS,
        ),
        entry(
            "fabstir_help_over_bare_python",
            cli,
            "ratio",
            target="report",
            passed=None,
            fabstir_help_ms=round(m["cli"] * 1000),
            bare_python_ms=round(m["bare"] * 1000),
            repeats=REPEATS,
        ),
    ]


BENCHMARKS = [import_cost]

"""``make bench``: run every benchmark, print a table, write ``bench/results.json``.

Each figure is a ratio of two measurements taken side by side in the same run (or a
plainly reported absolute), never a wall-clock limit: machines here are noisy.
Run a subset with ``python -m bench.run foundation``. Each group runs in a process of its
own (the arms of one figure side by side in it).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODULES = [
    "imports",
    "foundation",
    "client_cpu",
    "chat_model",
    "checkpoints",
    "storage",
    "resilience",
    "openai_engine",
    "encryption",
    "embeddings",
    "store_search",
]


def main(argv: list[str]) -> int:
    wanted = argv or MODULES
    if argv[:1] == ["--group"]:  # a child of the loop below
        rows = _run_group(argv[1])
        Path(argv[2]).write_text(json.dumps(rows))
        return 0
    results: list[dict[str, Any]] = []
    for name in wanted:
        # Each group in a process of its own: what one leaves behind (a model, threads, a
        # larger heap that makes every full garbage collection slower) must not move the
        # next group's figures. The arms of one figure still run side by side.
        with tempfile.TemporaryDirectory() as tmp:
            rows_file = Path(tmp) / "rows.json"
            subprocess.run(
                [sys.executable, "-m", "bench.run", "--group", name, str(rows_file)],
                check=True,
                cwd=Path(__file__).resolve().parents[1],
            )
            results.extend(json.loads(rows_file.read_text()))
    out = Path(__file__).with_name("results.json")
    if argv and out.exists():  # a subset: keep the other groups' last figures
        ran = {row["group"] for row in results}
        kept = [r for r in json.loads(out.read_text()).get("results", []) if r["group"] not in ran]
        results = kept + results
    out.write_text(
        json.dumps(
            {
                "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "machine": {"python": platform.python_version(), "cpus": _cpus()},
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    print()
    print(f"{'benchmark':<52} {'value':>10} {'unit':<8} {'target':<20} ok")
    for row in results:
        ok = {True: "yes", False: "NO", None: "-"}[row["passed"]]
        print(
            f"{row['group'] + '.' + row['name']:<52} {row['value']:>10} {row['unit']:<8} "
            f"{row['target'] or '':<20} {ok}"
        )
    print(f"\nwritten to {out}")
    return 0


def _run_group(name: str) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    try:
        module = importlib.import_module(f"bench.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"bench.{name}":
            return results
        raise
    for bench in module.BENCHMARKS:
        print(f"running {name}.{bench.__name__} ...", flush=True)
        outcome = bench()
        if asyncio.iscoroutine(outcome):
            outcome = asyncio.run(outcome)
        rows = outcome if isinstance(outcome, list) else [outcome]
        for row in rows:
            row["group"] = name
            results.append(row)
    return results


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

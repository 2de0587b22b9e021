"""Run the Python snippets of a documentation page, as a reader would paste them."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def python_blocks(page: str, section: str | None = None) -> list[str]:
    """The ```` ```python ```` blocks of ``page`` (relative to the repository), or of its
    ``section`` (a heading line such as ``"## Web search"``, up to the next ``## ``)."""
    text = (ROOT / page).read_text("utf-8")
    if section is not None:
        start = text.index(f"\n{section}\n")
        text = text[start : text.find("\n## ", start + 1)]
    return [body for lang, body in FENCE.findall(text) if lang == "python"]


def run_snippets(page: str, section: str | None = None) -> dict[str, object]:
    """Run the page's (or section's) Python blocks in order in one namespace; return it."""
    blocks = python_blocks(page, section)
    assert blocks, f"{page} {section or ''}: no python block"
    namespace: dict[str, object] = {"__name__": "fabstir_docs"}
    for number, block in enumerate(blocks, 1):
        exec(compile(block, f"{page}[python block {number}]", "exec"), namespace)
    return namespace

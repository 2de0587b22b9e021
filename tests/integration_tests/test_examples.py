"""The examples run as scripts (each starts its own reference host with SmolLM2) and
print what they promise."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.llama

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, timeout: float = 240.0) -> str:
    env = {k: v for k, v in os.environ.items() if k != "FABSTIR_HOST_URL"}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=EXAMPLES.parent,
        check=False,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


def test_lcel_chain() -> None:
    out = run_example("lcel_chain.py")
    answer = re.search(r"^Answer: (.+)$", out, re.M)
    assert answer and len(answer.group(1).split()) >= 5, out
    pieces = re.search(r"\((\d+) streamed pieces\)", out)
    assert pieces and int(pieces.group(1)) > 5, out
    facts = re.findall(r"^One fact about the (?:moon|sea): (.+)$", out, re.M)
    assert len(facts) == 2 and all(f.strip() for f in facts), out


def test_message_history() -> None:
    out = run_example("message_history.py")
    answers = re.findall(r"^Assistant: (.+)$", out, re.M)
    assert len(answers) == 2 and all(a.strip() for a in answers), out
    assert "History of 'demo-user': 4 messages" in out
    assert out.count("AIMessageChunk:") == 2 and out.count("HumanMessage:") == 2


def test_agent() -> None:
    out = run_example("agent.py")
    assert re.search(r"^\[tool call\] get_weather\(\{'city': '[^']+'\}\)$", out, re.M), out
    assert "[tool result] It is 21 degrees and sunny in" in out
    answer = re.search(r"^Assistant: (.+)$", out, re.M)
    assert answer and len(answer.group(1).split()) >= 3, out

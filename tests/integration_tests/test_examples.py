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
    assert re.search(r"History of 'demo-user' on S5 \(http://127\.0\.0\.1:\d+\): 4 messages", out)
    assert out.count("AIMessageChunk:") == 2 and out.count("HumanMessage:") == 2


def test_agent() -> None:
    out = run_example("agent.py")
    assert re.search(r"^\[tool call\] get_weather\(\{'city': '[^']+'\}\)$", out, re.M), out
    assert "[tool result] It is 21 degrees and sunny in" in out
    answer = re.search(r"^Assistant: (.+)$", out, re.M)
    assert answer and len(answer.group(1).split()) >= 3, out


def test_cross_device() -> None:
    out = run_example("cross_device.py")
    assert re.search(r"^\[Device A\] share code: fsc1", out, re.M), out
    assert re.search(r"^\[Device B\] session \w+ resumed with 3 messages$", out, re.M), out
    assert "[Device B] conversation saved: home/sessions/0xdevice-b/" in out
    assert len(re.findall(r"^Assistant: \S", out, re.M)) == 2, out


@pytest.mark.timeout(300)  # 1,200 tokens of the real model, beside another worker's model
def test_checkpoints_example() -> None:
    out = run_example("checkpoints.py")
    assert re.search(r"^  Checkpoint 1 created at token 500$", out, re.M), out
    assert "Host signed: True" in out
    assert "Every conversation hash recomputed from the history: OK" in out


def test_private_rag() -> None:
    out = run_example("private_rag.py")
    assert "Stored 4 chunks in the host's session memory" in out, out
    retrieved = re.search(r"^Retrieved \((0\.\d+)\): (.+)$", out, re.M)
    assert retrieved and "painted bright green" in retrieved.group(2), out
    assert float(retrieved.group(1)) > 0.5
    answer = re.search(r"^Answer: (.+)$", out, re.M)
    assert answer and "green" in answer.group(1).lower(), out  # answered from the document

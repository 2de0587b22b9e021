"""``examples/recovery.py`` and ``examples/parallel_sessions.py`` run as scripts, start
their own hosts (or use ``FABSTIR_HOST_URL``), exit 0 and print what happened."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from langchain_fabstir.host import EchoEngine
from tests.conftest import ThreadedHost
from tests.faults.test_failover import PlainHost

ROOT = Path(__file__).resolve().parents[2]
QUESTION_START = "Echo: Tell me the story of the lighthouse keeper"


def run_example(name: str, host_url: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "FABSTIR_HOST_URL"}
    if host_url is not None:
        env["FABSTIR_HOST_URL"] = host_url
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


def stitched_answer(out: str) -> str:
    """The first answer as printed, without the cut / reconnect notes."""
    text = re.sub(r"\n\[network cut after \d+ tokens\]\n", "", out)
    text = re.sub(r"\n\[reconnected: \w+ resume at token \d+\] ", "", text)
    answer = re.search(r"^Assistant: (Echo: Tell me.*)$", text, re.M)
    assert answer, out
    return answer.group(1).strip()


@pytest.mark.timeout(90)
def test_recovery_example_resumes_exactly_on_its_own_host() -> None:
    out = run_example("recovery.py")
    assert "[network cut after 10 tokens]" in out
    resumed = re.search(r"\[reconnected: exact resume at token (\d+)\]", out)
    assert resumed and int(resumed.group(1)) >= 10, out
    answer = stitched_answer(out)
    assert answer.startswith(QUESTION_START) and answer.endswith("black and roaring sea"), out
    assert len(answer.split()) == 41  # every word once
    assert "Answer complete: 41 tokens, resumed 1x" in out
    assert re.search(r"^Session \w+ recovered with 3 messages$", out, re.M), out
    assert "Assistant: Echo: Where were we?" in out
    assert "Recovery failed" not in out


@pytest.fixture
def plain_host() -> Iterator[str]:
    threaded = ThreadedHost(PlainHost(EchoEngine(delay=0.02), rate_limit_per_minute=None))
    yield threaded.host.url
    threaded.stop()


@pytest.mark.timeout(90)
def test_recovery_example_continues_on_a_host_without_resume(plain_host: str) -> None:
    out = run_example("recovery.py", plain_host)
    resumed = re.search(r"\[reconnected: continuation resume at token (\d+)\]", out)
    assert resumed, out
    answer = stitched_answer(out)
    # The echo engine "continues" by echoing the continuation prompt: what matters is
    # that the partial answer was kept and the session went on.
    assert answer.startswith(QUESTION_START) and "Continue your previous answer" in answer
    assert "Assistant: Echo: Where were we?" in out


@pytest.mark.timeout(90)
def test_parallel_sessions_example() -> None:
    out = run_example("parallel_sessions.py")
    answers = re.findall(r"^User: (.+)\nAssistant: (.+)$", out, re.M)
    assert len(answers) == 5, out
    assert all(answer == f"Echo: {prompt}" for prompt, answer in answers), out
    assert len(re.findall(r"^Session \w+ ended: \d+ tokens$", out, re.M)) == 5
    assert "5 sessions answered in parallel" in out

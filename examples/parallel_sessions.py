"""The seed's "Parallel Sessions", in Python.

Several sessions at once, one prompt each, streamed concurrently with
``asyncio.gather``; then every session is ended. Each session has its own socket and
history, so their answers never mix.

Run it as is (it starts a local reference host with the echo engine), or point it at a
host: ``FABSTIR_HOST_URL=http://127.0.0.1:8080 python examples/parallel_sessions.py``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time

from langchain_fabstir import SessionManager
from langchain_fabstir.cli import start_host_process

PROMPTS = [
    "What is a lighthouse?",
    "Why is the sea salty?",
    "How do tides work?",
    "What makes waves break?",
    "Where do storms come from?",
]


async def parallel_sessions(manager: SessionManager, prompts: list[str]) -> list[str]:
    """One session per prompt, all prompts streamed at once; the answers, in order."""
    # Create multiple sessions.
    sessions = await asyncio.gather(*(manager.create_session() for _ in prompts))

    # Process in parallel.
    async def ask(i: int, prompt: str) -> str:
        tokens = [token async for token in manager.stream_prompt(sessions[i].id, prompt)]
        return "".join(tokens)

    results = await asyncio.gather(*(ask(i, p) for i, p in enumerate(prompts)))

    # Cleanup.
    summaries = await asyncio.gather(*(manager.end_session(s.id) for s in sessions))
    for session, summary in zip(sessions, summaries, strict=True):
        print(f"Session {session.id[:8]} ended: {summary.final_token_count} tokens")
    return list(results)


async def main(host_url: str) -> None:
    async with SessionManager(host_url=host_url) as manager:
        started = time.perf_counter()
        answers = await parallel_sessions(manager, PROMPTS)
        elapsed = time.perf_counter() - started
    print()
    for prompt, answer in zip(PROMPTS, answers, strict=True):
        print(f"User: {prompt}\nAssistant: {answer}\n")
    print(f"{len(PROMPTS)} sessions answered in parallel in {elapsed:.2f}s")


def run() -> None:
    url = os.environ.get("FABSTIR_HOST_URL")
    if url:
        asyncio.run(main(url))
        return
    # A local reference host: echo engine, 20 ms a token, no rate limit.
    proc, url = start_host_process("--engine", "echo", "--delay", "0.02", "--rate-limit", "0")
    try:
        asyncio.run(main(url))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    run()

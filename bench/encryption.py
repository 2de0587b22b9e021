"""Encrypted-mode benchmarks (issue 12, PROTOCOL.md section 4).

(a) Client CPU per token of an encrypted stream over a plaintext stream: the same echo
    host (a separate process started with a host key, so its CPU does not count), two
    ``SessionManager`` sessions side by side, one ``encryption="off"``; the figure is
    ``time.process_time()`` of this (client) process per streamed token (aim <= 1.5).
    Measured twice: with the echo host sending as fast as it can (the headline: the worst
    case, where a plaintext client reads many frames per wake-up), and with the host pacing
    tokens at 0.5 ms (2,000 tokens/s, still far faster than a real model), where each frame
    costs a wake-up in both modes. The host's CPU per token (from /proc) is reported beside:
    when sealing makes the host slower than the client, the encrypted client waits for
    frames one by one and pays a wake-up per token that the plaintext client does not.
(b) llama tokens/s through an encrypted session over the engine called directly in-process
    (as ``foundation.llama_ratio`` measures the plaintext path; aim >= 0.90).
"""

from __future__ import annotations

import os
import signal
import statistics
import tempfile
import time
from typing import Any

from bench.common import Stopwatch, entry, interleaved
from langchain_fabstir.cli import start_host_process
from langchain_fabstir.host import EngineRequest, LlamaEngine, ReferenceHost
from langchain_fabstir.sessions import SessionConfig, SessionManager

HOST_KEY = "0x" + "5a" * 32
ECHO_TOKENS = 4000
LLAMA_PROMPT = "Write a long story about a lighthouse keeper and the sea."
LLAMA_TOKENS = 160


async def client_cpu_ratio() -> list[dict[str, Any]]:
    return [await _client_cpu_ratio(0.0), await _client_cpu_ratio(0.0005)]


async def _client_cpu_ratio(delay: float) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".key", delete=False) as key_file:
        key_file.write(HOST_KEY)
    try:
        proc, url = start_host_process(
            "--engine",
            "echo",
            "--script",
            "tok ",
            "--fill",
            "--rate-limit",
            "0",
            "--host-key-file",
            key_file.name,
            "--delay",
            str(delay),
        )
    finally:
        os.unlink(key_file.name)
    try:
        async with (
            SessionManager(SessionConfig(encryption="required"), host_url=url) as sealed,
            SessionManager(SessionConfig(encryption="off"), host_url=url) as clear,
        ):
            enc_session = await sealed.create_session(max_tokens=ECHO_TOKENS)
            plain_session = await clear.create_session(max_tokens=ECHO_TOKENS)
            assert enc_session.encrypted and not plain_session.encrypted

            host_us: dict[str, list[float]] = {"enc": [], "plain": []}

            def measure(manager: SessionManager, session_id: str, name: str) -> Any:
                async def run() -> float:
                    cpu = time.process_time()
                    host = _process_cpu(proc.pid)
                    n = 0
                    async for _stream, _text in manager.open_stream(
                        session_id, "go", context=[], record=False
                    ):
                        n += 1
                    assert n >= ECHO_TOKENS - 1, n
                    host_us[name].append((_process_cpu(proc.pid) - host) / n * 1e6)
                    return (time.process_time() - cpu) / n * 1e6  # microseconds per token

                return run

            encrypted = measure(sealed, enc_session.id, "enc")
            plaintext = measure(clear, plain_session.id, "plain")
            await encrypted()  # warm-up
            await plaintext()
            medians = await interleaved({"enc": encrypted, "plain": plaintext}, repeats=5)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    ratio = medians["enc"] / medians["plain"]
    paced = f"_paced_{delay * 1000:g}ms" if delay else ""
    return entry(
        f"client_cpu_per_token_encrypted_over_plaintext{paced}",
        ratio,
        "ratio",
        target="<= 1.5",
        passed=ratio <= 1.5,
        encrypted_us_per_token=round(medians["enc"], 1),
        plaintext_us_per_token=round(medians["plain"], 1),
        host_encrypted_us_per_token=round(statistics.median(host_us["enc"]), 1),
        host_plaintext_us_per_token=round(statistics.median(host_us["plain"]), 1),
        host_delay_ms=delay * 1000,
        tokens=ECHO_TOKENS,
    )


def _process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of another process, from /proc (0.0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def llama_encrypted_ratio() -> dict[str, Any]:
    engine = LlamaEngine(seed=7)
    messages = [{"role": "user", "content": LLAMA_PROMPT}]
    async with (
        ReferenceHost(engine, rate_limit_per_minute=None, host_key=HOST_KEY) as host,
        SessionManager(SessionConfig(encryption="required"), host_url=host.url) as sealed,
        SessionManager(SessionConfig(encryption="off"), host_url=host.url) as clear,
    ):
        enc_session = await sealed.create_session(temperature=0.0, max_tokens=LLAMA_TOKENS)
        plain_session = await clear.create_session(temperature=0.0, max_tokens=LLAMA_TOKENS)
        assert enc_session.encrypted and not plain_session.encrypted

        async def direct() -> float:
            watch = Stopwatch()
            gen = engine.generate(EngineRequest(messages, max_tokens=LLAMA_TOKENS, temperature=0.0))
            async for _ in gen:
                pass
            return gen.result.completion_tokens / watch.elapsed()

        def through(manager: SessionManager, session_id: str) -> Any:
            async def run() -> float:
                # Same single-turn prompt each time: no growing history.
                watch = Stopwatch()
                last = None
                async for stream, _text in manager.open_stream(
                    session_id, LLAMA_PROMPT, context=[], record=False
                ):
                    last = stream
                assert last is not None
                return last.result.output_tokens / watch.elapsed()

            return run

        runs = {
            "direct": direct,
            "enc": through(sealed, enc_session.id),
            "plain": through(clear, plain_session.id),
        }
        for run in runs.values():  # warm-up (prompt cache, page-in)
            await run()
        medians = await interleaved(runs, repeats=5)
    engine.close()
    ratio = medians["enc"] / medians["direct"]
    return entry(
        "llama_encrypted_session_over_direct",
        ratio,
        "ratio",
        target=">= 0.90",
        passed=ratio >= 0.90,
        encrypted_tokens_per_s=round(medians["enc"], 1),
        plaintext_session_tokens_per_s=round(medians["plain"], 1),
        direct_tokens_per_s=round(medians["direct"], 1),
        encrypted_over_plaintext_session=round(medians["enc"] / medians["plain"], 3),
        tokens=LLAMA_TOKENS,
    )


BENCHMARKS = [client_cpu_ratio, llama_encrypted_ratio]

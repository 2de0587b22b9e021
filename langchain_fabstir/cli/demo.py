"""``fabstir demo``: a reference host and an S5 portal on 127.0.0.1, then a conversation.

The conversation is the seed's "Complete Conversation Flow" (``examples/quickstart.py``
in a checkout): a session, three questions with their answers streamed token by token,
checkpoint proofs, the session's end, and the messages kept encrypted on the portal. It
is part of the package, so ``pip install 'langchain-fabstir[host]'`` then ``fabstir demo``
runs it anywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import tempfile
from collections.abc import Callable
from typing import Any

from langchain_fabstir.cli._common import CliError, terminal_text

__all__ = ["QUESTIONS", "add_demo_parser", "run_conversation", "run_demo"]

QUESTIONS = (
    "What are React hooks?",
    "How do I use useState?",
    "Can you show me an example with useEffect?",
)
"""What the demo asks, in one session."""

Starter = Callable[..., "tuple[subprocess.Popen[str], str]"]
_START_TIMEOUT = 300.0  # the first start joins the model's wheels into one file


async def run_conversation(
    host_url: str, *, storage: Any = None, max_tokens: int = 120, questions: Any = QUESTIONS
) -> None:
    """One session on ``host_url``: ``questions`` asked in turn, each answer printed as it
    streams; with ``storage`` (an ``S5ConversationStore``) the conversation is kept on S5."""
    from langchain_fabstir.sessions.manager import SessionManager
    from langchain_fabstir.sessions.models import SessionConfig

    config = SessionConfig(checkpoint_interval=100)
    async with SessionManager(config, host_url=host_url, storage=storage) as manager:
        manager.on(
            "checkpoint",
            lambda proof: print(f" [checkpoint {proof.checkpoint_number}]", end="", flush=True),
        )
        session = await manager.create_session(
            system_prompt="You are an expert in TypeScript and React. Answer briefly.",
            max_tokens=max_tokens,
            temperature=0.2,
        )
        # host text (the model's name, its answers) reaches the terminal without escapes
        print(
            terminal_text(f"Session {session.id} connected to {session.host_url} ({session.model})")
        )
        for question in questions:
            print(f"\nUser: {question}")
            print("Assistant: ", end="", flush=True)
            async for token in manager.stream_prompt(session.id, question):
                print(terminal_text(token), end="", flush=True)
            print()
        summary = await manager.end_session(session.id)
        print(f"\nSession ended. Total tokens: {summary.final_token_count}")
        print(f"Checkpoint proofs: {len(summary.checkpoint_proofs)}")
        if storage is None:
            print("Not saved (no S5 portal and seed phrase given)")
        else:
            stored = await manager.get_conversation_history(session.id)
            print(f"Conversation saved on S5: {summary.conversation_id}")
            print(f"Messages on S5: {len(stored)} (encrypted; the portal sees ciphertext only)")


def _check_llama() -> None:
    """Are the engine and a model installed? (An expected, one-line failure when not, which
    names the install command.) The model is made ready here, once, for the host."""
    from langchain_fabstir.host.engines import INSTALL_HOST, default_model

    try:
        import xllamacpp  # noqa: F401
    except ImportError:
        raise CliError(
            f"the demo's host needs the llama engine and a model: {INSTALL_HOST} "
            "(or try `fabstir demo --engine echo`, no model)"
        ) from None
    default_model()  # the host extra's model is joined once into the cache (seconds)


async def _demo(portal_url: str, host_url: str, max_tokens: int) -> None:
    from pydantic import SecretStr

    from langchain_fabstir.s5 import generate_phrase
    from langchain_fabstir.storage.conversations import S5ConversationStore

    storage = S5ConversationStore(
        portal_url=portal_url, seed_phrase=SecretStr(generate_phrase()), user_address="0xdemo"
    )
    try:
        await run_conversation(host_url, storage=storage, max_tokens=max_tokens)
    finally:
        await storage.aclose()


def run_demo(args: argparse.Namespace, start_host: Starter, start_portal: Starter) -> int:
    """``fabstir demo``: ``start_host`` / ``start_portal`` are ``start_host_process`` and
    ``start_portal_process`` of :mod:`langchain_fabstir.cli`."""
    host_args = ["--engine", args.engine]
    if args.engine == "llama":
        _check_llama()
    else:
        host_args += ["--delay", "0.02"]
    print(
        f"Starting the reference host ({args.engine} engine) and a local S5 portal "
        "on 127.0.0.1 ...",
        flush=True,
    )
    children: list[subprocess.Popen[str]] = []
    with tempfile.TemporaryDirectory(prefix="fabstir-demo-") as data:
        try:
            try:
                host, host_url = start_host(*host_args, timeout=_START_TIMEOUT)
                children.append(host)
                portal, portal_url = start_portal(data, timeout=_START_TIMEOUT)
                children.append(portal)
            except RuntimeError as exc:
                raise CliError(f"{exc} (its own error, if any, is on the line above)") from None
            asyncio.run(_demo(portal_url, host_url, args.max_tokens))
            return 0
        finally:
            for child in children:
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(10)
                except subprocess.TimeoutExpired:
                    child.kill()


def add_demo_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    from langchain_fabstir.cli.host import positive_int

    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="start a local host and S5 portal, then stream a conversation",
        description="Start a reference host and an S5 portal on 127.0.0.1 and run a "
        "conversation against them: three questions, answers streamed, kept encrypted on "
        "the portal. The llama engine needs pip install 'langchain-fabstir[host]'.",
    )
    demo.add_argument(
        "--engine",
        choices=["llama", "echo"],
        default="llama",
        help="the host's engine: llama (a real model) or echo (no model) (default llama)",
    )
    demo.add_argument(
        "--max-tokens",
        type=positive_int,
        default=120,
        help="the longest answer, in tokens (default 120)",
    )

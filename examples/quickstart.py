"""The seed's "Complete Conversation Flow", in Python.

`fabstir demo` runs the same flow from the installed package (a local reference host and
S5 portal included). Run this file as is: with no ``FABSTIR_HOST_URL`` set, it starts a
reference host with the real model in this process (127.0.0.1, a free port), as the other
examples do. Point it at any Fabstir host with
``FABSTIR_HOST_URL=http://127.0.0.1:8080 python examples/quickstart.py``. With
`FABSTIR_PORTAL_URL` and `FABSTIR_S5_SEED` set, the conversation is kept on S5, encrypted
with keys from the seed phrase; without them nothing is saved, and it says so.
"""

import asyncio
import os

from langchain_fabstir import SessionConfig, SessionManager
from langchain_fabstir.errors import FabstirError
from langchain_fabstir.host import local_host
from langchain_fabstir.s5 import seed_phrase_from_env
from langchain_fabstir.storage.conversations import S5ConversationStore


def s5_storage() -> S5ConversationStore | None:
    portal_url = os.environ.get("FABSTIR_PORTAL_URL")
    phrase = seed_phrase_from_env()  # FABSTIR_S5_SEED
    if not (portal_url and phrase):
        return None
    return S5ConversationStore(portal_url=portal_url, seed_phrase=phrase, user_address="0xdemo")


async def main() -> None:
    # FABSTIR_HOST_URL when set, else a reference host started here for the run.
    async with local_host() as host_url:
        await run_conversation(host_url)


async def run_conversation(host_url: str) -> None:
    storage = s5_storage()
    config = SessionConfig(checkpoint_interval=100)
    async with SessionManager(config, host_url=host_url, storage=storage) as session_manager:
        # Checkpoint proofs arrive as events while tokens stream.
        session_manager.on(
            "checkpoint",
            lambda proof: print(f" [checkpoint {proof.checkpoint_number}]", end="", flush=True),
        )
        # Create a session (the host was given explicitly: discovery picks one otherwise).
        session = await session_manager.create_session(
            system_prompt="You are an expert in TypeScript and React. Answer briefly.",
            max_tokens=120,
            temperature=0.2,
        )
        print(f"Session {session.id} connected to {session.host_url} ({session.model})")

        questions = [
            "What are React hooks?",
            "How do I use useState?",
            "Can you show me an example with useEffect?",
        ]
        for question in questions:
            print(f"\nUser: {question}")
            print("Assistant: ", end="", flush=True)
            # Stream the response, token by token, as it arrives.
            async for token in session_manager.stream_prompt(session.id, question):
                print(token, end="", flush=True)
            print()

        # End the session and get the summary.
        summary = await session_manager.end_session(session.id)
        print(f"\nSession ended. Total tokens: {summary.final_token_count}")
        print(f"Checkpoint proofs: {len(summary.checkpoint_proofs)}")
        if storage is None:
            print("Not saved (set FABSTIR_PORTAL_URL and FABSTIR_S5_SEED to keep it on S5)")
        else:
            stored = await session_manager.get_conversation_history(session.id)
            print(f"Conversation saved on S5: {summary.conversation_id}")
            print(f"Messages on S5: {len(stored)} (encrypted; the portal sees ciphertext only)")
            await storage.aclose()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except FabstirError as exc:  # one line a person can act on (a host that is down...)
        raise SystemExit(f"quickstart: {exc}") from None

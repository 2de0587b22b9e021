"""The seed's "Complete Conversation Flow", in Python.

Run it with `make demo` (which starts a local reference host with SmolLM2), or point it
at any Fabstir host: `FABSTIR_HOST_URL=http://host:8080 python examples/quickstart.py`.
"""

import asyncio
import os

from langchain_fabstir import SessionManager


async def run_conversation() -> None:
    host_url = os.environ.get("FABSTIR_HOST_URL", "http://127.0.0.1:8080")
    async with SessionManager(host_url=host_url) as session_manager:
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
        print(f"Checkpoints: {len(summary.checkpoint_proofs)}")
        print(f"Conversation saved: {summary.conversation_id}")


if __name__ == "__main__":
    asyncio.run(run_conversation())

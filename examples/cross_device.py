"""The seed's "Cross-Device Session Continuity", in Python.

Device A starts a session, talks, exports it and makes a share code. Device B, a
different user with its own S5 identity and nothing in common with A but the code,
imports the session and resumes it: the conversation goes on where A left it.

A share code is a capability: it names the encrypted export on the portal and carries the
key that opens it, and nothing else. Without FABSTIR_HOST_URL / FABSTIR_PORTAL_URL, a
reference host with SmolLM2 and a local S5 portal are started in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator

from langchain_fabstir import S5ConversationStore, SessionManager
from langchain_fabstir.s5 import generate_phrase


@contextlib.asynccontextmanager
async def services() -> AsyncIterator[tuple[str, str]]:
    """(host URL, portal URL): from the environment, or started here on 127.0.0.1."""
    host_url = os.environ.get("FABSTIR_HOST_URL")
    portal_url = os.environ.get("FABSTIR_PORTAL_URL")
    async with contextlib.AsyncExitStack() as stack:
        if not host_url:
            from langchain_fabstir.host import LlamaEngine, ReferenceHost

            host = await stack.enter_async_context(ReferenceHost(LlamaEngine()))
            host_url = host.url
        if not portal_url:
            from langchain_fabstir.portal import LocalPortal

            data = stack.enter_context(tempfile.TemporaryDirectory())
            portal = await stack.enter_async_context(LocalPortal(data, port=0))
            portal_url = portal.url
        yield host_url, portal_url


async def ask(manager: SessionManager, session_id: str, question: str) -> None:
    print(f"User: {question}\nAssistant: ", end="", flush=True)
    async for token in manager.stream_prompt(session_id, question):
        print(token, end="", flush=True)
    print()


async def main() -> None:
    async with services() as (host_url, portal_url):
        # --- Device A -----------------------------------------------------------------
        store_a = S5ConversationStore(
            portal_url=portal_url, seed_phrase=generate_phrase(), user_address="0xdevice-a"
        )
        async with SessionManager(host_url=host_url, storage=store_a) as device_a:
            session = await device_a.create_session(
                system_prompt="You are a concise travel guide.", max_tokens=40, temperature=0
            )
            print(f"[Device A] session {session.id}")
            await ask(device_a, session.id, "Name one famous museum in Paris.")
            export_data = await device_a.export_session(session.id)
            share_code = await device_a.generate_share_code(export_data)
            print(f"[Device A] share code: {share_code[:32]}... ({len(share_code)} chars)")
        await store_a.aclose()

        # --- Device B -----------------------------------------------------------------
        store_b = S5ConversationStore(
            portal_url=portal_url, seed_phrase=generate_phrase(), user_address="0xdevice-b"
        )
        async with SessionManager(host_url=host_url, storage=store_b) as device_b:
            imported = await device_b.import_session(share_code)
            resumed = await device_b.resume_session(imported.id)
            history = await device_b.get_conversation_history(resumed.id)
            print(f"[Device B] session {resumed.id} resumed with {len(history)} messages")
            await ask(device_b, resumed.id, "And one famous museum in London?")
            summary = await device_b.end_session(resumed.id)
            print(f"[Device B] conversation saved: {summary.conversation_id}")
        await store_b.aclose()


if __name__ == "__main__":
    asyncio.run(main())

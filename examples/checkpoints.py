"""The seed's "Checkpoint Management", in Python.

A session with ``checkpoint_interval=500`` streams several answers; every 500 generated
tokens a checkpoint proof is made: a hash chain over the conversation, co-signed by the
host (the reference host signs with its key and announces its address) and signed by
the user's key. A handler prints each proof as it is made; every fifth would be the one to
submit on chain. At the end, anyone holding the history recomputes every hash.

Without FABSTIR_HOST_URL, a reference host with SmolLM2 and a host key is started here.
"""

from __future__ import annotations

import asyncio
import secrets

from langchain_fabstir import CheckpointProof, SessionConfig, SessionManager, verify_checkpoints
from langchain_fabstir.host import local_host


def submit_proof_to_blockchain(proof: CheckpointProof) -> None:
    print(f"    (would submit checkpoint {proof.checkpoint_number} on chain)")


async def managed_checkpoints() -> None:
    user_key = "0x" + secrets.token_hex(32)
    config = SessionConfig(checkpoint_interval=500)
    host_key = "0x" + secrets.token_hex(32)  # the local host signs checkpoints with it
    async with local_host(host_key=host_key) as host_url:
        async with SessionManager(config, host_url=host_url, private_key=user_key) as manager:
            session = await manager.create_session(max_tokens=400, temperature=0.7)

            # Monitor checkpoints.
            @manager.on("checkpoint")
            def on_checkpoint(proof: CheckpointProof) -> None:
                print(
                    f"\n  Checkpoint {proof.checkpoint_number} created at token {proof.token_count}"
                )
                print(f"  Hash: {proof.conversation_hash}")
                print(f"  Host signed: {bool(proof.host_signature)}, user signer: {proof.signer}")
                if proof.checkpoint_number % 5 == 0:
                    submit_proof_to_blockchain(proof)

            prompts = [
                "Tell me a long story about a lighthouse keeper.",
                "Continue the story with a storm.",
                "How does the story end?",
            ]
            for prompt in prompts:
                print(f"\nUser: {prompt}\nAssistant: ", end="", flush=True)
                async for token in manager.stream_prompt(session.id, prompt):
                    print(token, end="", flush=True)
            print()

            history = await manager.get_conversation_history(session.id)
            summary = await manager.end_session(session.id)
            print(
                f"\nCreated {len(summary.checkpoint_proofs)} checkpoints over "
                f"{summary.final_token_count} tokens"
            )
            verify_checkpoints(
                [{"role": m.role, "content": m.content} for m in history],
                summary.checkpoint_proofs,
            )
            print("Every conversation hash recomputed from the history: OK")


if __name__ == "__main__":
    asyncio.run(managed_checkpoints())

"""A paid session on the Fabstir network: find a host on chain, pay, talk, settle, refund.

Against Base Sepolia (a funded key, a public or private RPC)::

    FABSTIR_PRIVATE_KEY=0x... FABSTIR_RPC_URL=https://sepolia.base.org \\
        python examples/paid_session.py

Other contracts or chains: ``FABSTIR_CHAIN_CONFIG=chain.json`` (keys ``rpc_url, chain_id,
job_marketplace, node_registry, model_registry, usdc``). ``FABSTIR_MODEL`` picks the model
(``repo/file`` as in the ModelRegistry), ``FABSTIR_DEPOSIT`` / ``FABSTIR_PAYMENT_TOKEN`` /
``FABSTIR_MAX_PRICE_PER_TOKEN`` the money (whole ETH or USDC; hard limits), and
``FABSTIR_SETTLE_WAIT`` how long to wait for the host to settle (seconds).

The test suite runs this file unchanged against a local chain (anvil with the project's
contracts) and two reference hosts registered on it.
"""

import asyncio
import os
from decimal import Decimal

from langchain_fabstir import SessionManager
from langchain_fabstir.chain import ChainConfig
from langchain_fabstir.errors import FabstirError, ResponseTimeoutError

MODEL = os.environ.get(
    "FABSTIR_MODEL", "CohereForAI/TinyVicuna-1B-32k-GGUF/tiny-vicuna-1b.q4_k_m.gguf"
)


async def main() -> None:
    chain = ChainConfig.from_env()  # BASE_SEPOLIA unless FABSTIR_CHAIN_CONFIG names a file
    token = os.environ.get("FABSTIR_PAYMENT_TOKEN", "ETH")
    assert token in ("ETH", "USDC"), "FABSTIR_PAYMENT_TOKEN is ETH or USDC"
    deposit = Decimal(os.environ.get("FABSTIR_DEPOSIT", "0.0002" if token == "ETH" else "1"))
    max_price = os.environ.get("FABSTIR_MAX_PRICE_PER_TOKEN")
    settle_wait = float(os.environ.get("FABSTIR_SETTLE_WAIT", "180"))

    # The key comes from FABSTIR_PRIVATE_KEY; it signs the payment locally, never leaves.
    async with SessionManager(chain=chain) as manager:
        payer = manager.chain.address if manager.chain else None
        print(f"Paying as {payer} on chain {chain.chain_id}")
        session = await manager.create_session(
            model=MODEL,
            deposit=deposit,
            payment_token=token,  # type: ignore[arg-type]
            max_price_per_token=Decimal(max_price) if max_price else None,
            policy="cheapest",
            system_prompt="Answer in one short sentence.",
            max_tokens=60,
        )
        mode = "encrypted" if session.encrypted else "plaintext"
        print(f"Job {session.job_id} with {session.host_url} ({mode}), deposit {deposit} {token}")

        print("Assistant: ", end="", flush=True)
        async for piece in manager.stream_prompt(session.id, "What is a blockchain?"):
            print(piece, end="", flush=True)
        print()

        summary = await manager.end_session(session.id)
        print(f"Session ended: {summary.final_token_count} tokens, job {summary.job_id}")

        # The host proves its tokens and completes the job; past the job's deadline the
        # watcher would complete it for us. Either way, the unused deposit is refunded.
        assert summary.job_id is not None
        try:
            settled = await manager.watch_settlement(
                summary.job_id, max_wait=settle_wait, poll_interval=2.0
            )
        except ResponseTimeoutError:
            print(f"Not settled yet: watch_settlement({summary.job_id}) later, then withdraw.")
            return
        print(
            f"Settled ({settled.state}, by the {settled.settled_by}): "
            f"{settled.tokens_used} tokens paid, refund {settled.refunded_to_user} base units"
        )
        taken = await manager.withdraw_refund(token)  # type: ignore[arg-type]
        print(f"Refund withdrawn: {taken} {token}")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except FabstirError as exc:  # one line a person can act on, and a non-zero exit
        raise SystemExit(f"paid_session: {exc}") from None

"""A LangGraph agent that pays through a delegate, within a budget that survives restarts.

The agent holds a *delegate* key (a hot key with a little ETH for gas), never the payer's:
its sessions are created with ``createSessionForModelAsDelegate`` and paid in USDC from the
payer's wallet, through the allowance the payer gave once::

    async with SessionManager(chain=chain, private_key=PAYER_KEY) as payer:
        await payer.authorize_delegate(AGENT_ADDRESS, Decimal("20"))   # approve + authorize

``max_spend`` caps what this agent commits over its whole life, and ``spend_ledger`` keeps
the count on disk (written before each payment is sent), so a restarted agent cannot pay
past it: the payment that would cross it is ``BUDGET_EXCEEDED``, and nothing is sent.

Environment: ``FABSTIR_PRIVATE_KEY`` (the delegate's key), ``FABSTIR_PAYER`` (the payer's
address), ``FABSTIR_CHAIN_CONFIG`` or ``FABSTIR_RPC_URL`` (as for ``paid_session.py``),
``FABSTIR_MODEL``, ``FABSTIR_DEPOSIT`` (USDC per session, default 1),
``FABSTIR_MAX_SPEND`` (USDC, default 2), ``FABSTIR_SPEND_LEDGER`` (default ``spend.json``).
The test suite runs this file unchanged against a local chain.
"""

import asyncio
import os
import sys
from decimal import Decimal
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage
from langgraph.graph import END, START, MessagesState, StateGraph

from langchain_fabstir import ChatFabstir, SpendBudget
from langchain_fabstir.chain import ChainConfig
from langchain_fabstir.errors import FabstirError

MODEL = os.environ.get(
    "FABSTIR_MODEL", "CohereForAI/TinyVicuna-1B-32k-GGUF/tiny-vicuna-1b.q4_k_m.gguf"
)
STEPS = 3


def build_agent(llm: ChatFabstir) -> Any:
    """A small loop: the model thinks ``STEPS`` times, each step building on the last."""

    async def think(state: MessagesState) -> dict[str, Any]:
        reply = await llm.ainvoke(state["messages"])
        step = sum(isinstance(m, AIMessage) for m in state["messages"]) + 1
        follow = HumanMessage(f"Step {step + 1}: go on.") if step < STEPS else None
        return {"messages": [reply] + ([follow] if follow else [])}

    def next_step(state: MessagesState) -> str:
        done = sum(isinstance(m, AIMessage) for m in state["messages"]) >= STEPS
        return END if done else "think"

    graph = StateGraph(MessagesState)
    graph.add_node("think", think)
    graph.add_edge(START, "think")
    graph.add_conditional_edges("think", next_step)
    return graph.compile()


async def main() -> int:
    chain = ChainConfig.from_env()
    payer = os.environ["FABSTIR_PAYER"]
    max_spend = {"USDC": Decimal(os.environ.get("FABSTIR_MAX_SPEND", "2"))}
    ledger = os.environ.get("FABSTIR_SPEND_LEDGER", "spend.json")
    llm = ChatFabstir(
        chain=chain,  # the key: FABSTIR_PRIVATE_KEY, the delegate's
        model=MODEL,
        payer=payer,
        payment_token="USDC",
        deposit=Decimal(os.environ.get("FABSTIR_DEPOSIT", "1")),
        max_spend=max_spend,
        spend_ledger=ledger,
        max_tokens=48,
    )
    before = SpendBudget(max_spend, ledger).spent("USDC")
    print(f"Budget: {max_spend['USDC']} USDC, {before} already committed (ledger {ledger})")
    try:
        result = await build_agent(llm).ainvoke({"messages": [HumanMessage("Plan a picnic.")]})
    except FabstirError as exc:
        print(f"Stopped: {exc.code}: {exc.message}")
        return 1
    for message in result["messages"]:
        if isinstance(message, AIMessage):
            print(f"Agent: {message.content}")
    spent = SpendBudget(max_spend, ledger).spent("USDC")
    print(f"Paid by {payer}; committed {spent} of {max_spend['USDC']} USDC")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

"""langchain-fabstir: Fabstir's decentralized LLM network for LangChain and LangGraph.

The main entry points:

- :class:`SessionManager`: the seed's Session Manager API (sessions, streaming,
  history, checkpoints, resume, export and share), async-first.
- :class:`ChatFabstir`: a LangChain chat model over Fabstir sessions.
- :class:`FabstirEmbeddings`: LangChain embeddings over hosts' ``/v1/embed``.
- :class:`FabstirVectorStore`: a vector store in a host's session memory (host RAG).
- :class:`FabstirSearchRetriever` and :class:`FabstirImageGenerationTool`: web search
  (``/v1/search``) as a retriever and image generation (``/v1/images/generate``) as a tool.
- :class:`S5ChatMessageHistory`, :class:`S5CheckpointSaver` and :class:`S5Store`: memory
  on S5.
- :class:`FabstirCheckpointHandler` / :func:`get_fabstir_checkpoint_callback`:
  checkpoint proofs as LangChain callbacks.
- :mod:`langchain_fabstir.sessions` (the session layer), :mod:`langchain_fabstir.storage`
  and :mod:`langchain_fabstir.s5` (S5), :mod:`langchain_fabstir.checkpoints` (proofs),
  :mod:`langchain_fabstir.discovery` (hosts), :mod:`langchain_fabstir.wire` (frames).
- :mod:`langchain_fabstir.host` and :mod:`langchain_fabstir.portal`: a reference host
  with a real model and a local S5 portal, to run everything on one machine.
"""

from typing import TYPE_CHECKING

from langchain_fabstir._version import __version__ as __version__

if TYPE_CHECKING:  # what type checkers see; at run time each name is imported on first use
    from langchain_fabstir.callbacks import (
        AsyncFabstirCheckpointHandler,
        FabstirCheckpointHandler,
        get_fabstir_checkpoint_callback,
    )
    from langchain_fabstir.chat_message_histories import S5ChatMessageHistory
    from langchain_fabstir.chat_models import ChatFabstir
    from langchain_fabstir.checkpoints import CheckpointProof, verify_checkpoints
    from langchain_fabstir.embeddings import FabstirEmbeddings
    from langchain_fabstir.errors import (
        BudgetExceededError,
        CheckpointError,
        DelegateError,
        FabstirError,
        HostDisconnectedError,
        ProtocolError,
        RateLimitedError,
        ResponseTimeoutError,
        SessionNotFoundError,
        SessionTimeoutError,
        TokenLimitExceededError,
    )
    from langchain_fabstir.langgraph import S5CheckpointSaver, S5Store
    from langchain_fabstir.retrievers import FabstirSearchRetriever
    from langchain_fabstir.sessions.audit import ChainRecovery, JobAudit, ProofAudit
    from langchain_fabstir.sessions.budget import SpendBudget
    from langchain_fabstir.sessions.manager import SessionManager
    from langchain_fabstir.sessions.models import (
        Message,
        Session,
        SessionConfig,
        SessionSummary,
        StreamResult,
    )
    from langchain_fabstir.storage.conversations import S5ConversationStore
    from langchain_fabstir.tools import FabstirImageGenerationTool
    from langchain_fabstir.vectorstores import FabstirVectorStore

__all__ = [
    "AsyncFabstirCheckpointHandler",
    "BudgetExceededError",
    "ChainRecovery",
    "ChatFabstir",
    "CheckpointError",
    "CheckpointProof",
    "DelegateError",
    "FabstirCheckpointHandler",
    "FabstirEmbeddings",
    "FabstirError",
    "FabstirImageGenerationTool",
    "FabstirSearchRetriever",
    "FabstirVectorStore",
    "HostDisconnectedError",
    "JobAudit",
    "Message",
    "ProofAudit",
    "ProtocolError",
    "RateLimitedError",
    "ResponseTimeoutError",
    "S5ChatMessageHistory",
    "S5CheckpointSaver",
    "S5ConversationStore",
    "S5Store",
    "Session",
    "SessionConfig",
    "SessionManager",
    "SessionNotFoundError",
    "SessionSummary",
    "SessionTimeoutError",
    "SpendBudget",
    "StreamResult",
    "TokenLimitExceededError",
    "get_fabstir_checkpoint_callback",
    "verify_checkpoints",
]

# A plain `import langchain_fabstir` (and every `fabstir` command) stays cheap: each class
# below is imported from its module on first use (PEP 562). `S5CheckpointSaver`, `S5Store`
# need the optional `langgraph` extra.
_LAZY: dict[str, str] = {
    "AsyncFabstirCheckpointHandler": "langchain_fabstir.callbacks",
    "BudgetExceededError": "langchain_fabstir.errors",
    "ChainRecovery": "langchain_fabstir.sessions.audit",
    "ChatFabstir": "langchain_fabstir.chat_models",
    "CheckpointError": "langchain_fabstir.errors",
    "CheckpointProof": "langchain_fabstir.checkpoints",
    "DelegateError": "langchain_fabstir.errors",
    "FabstirCheckpointHandler": "langchain_fabstir.callbacks",
    "FabstirEmbeddings": "langchain_fabstir.embeddings",
    "FabstirError": "langchain_fabstir.errors",
    "FabstirImageGenerationTool": "langchain_fabstir.tools",
    "FabstirSearchRetriever": "langchain_fabstir.retrievers",
    "FabstirVectorStore": "langchain_fabstir.vectorstores",
    "HostDisconnectedError": "langchain_fabstir.errors",
    "JobAudit": "langchain_fabstir.sessions.audit",
    "Message": "langchain_fabstir.sessions.models",
    "ProofAudit": "langchain_fabstir.sessions.audit",
    "ProtocolError": "langchain_fabstir.errors",
    "RateLimitedError": "langchain_fabstir.errors",
    "ResponseTimeoutError": "langchain_fabstir.errors",
    "S5ChatMessageHistory": "langchain_fabstir.chat_message_histories",
    "S5CheckpointSaver": "langchain_fabstir.langgraph",
    "S5ConversationStore": "langchain_fabstir.storage.conversations",
    "S5Store": "langchain_fabstir.langgraph",
    "Session": "langchain_fabstir.sessions.models",
    "SessionConfig": "langchain_fabstir.sessions.models",
    "SessionManager": "langchain_fabstir.sessions.manager",
    "SessionNotFoundError": "langchain_fabstir.errors",
    "SessionSummary": "langchain_fabstir.sessions.models",
    "SessionTimeoutError": "langchain_fabstir.errors",
    "SpendBudget": "langchain_fabstir.sessions.budget",
    "StreamResult": "langchain_fabstir.sessions.models",
    "TokenLimitExceededError": "langchain_fabstir.errors",
    "get_fabstir_checkpoint_callback": "langchain_fabstir.callbacks",
    "verify_checkpoints": "langchain_fabstir.checkpoints",
}


# The subpackages, reachable as attributes after a plain `import langchain_fabstir`.
_SUBMODULES = frozenset(
    {
        "callbacks",
        "chain",
        "chat_message_histories",
        "chat_models",
        "checkpoints",
        "cli",
        "discovery",
        "embeddings",
        "errors",
        "host",
        "langgraph",
        "portal",
        "retrievers",
        "s5",
        "sessions",
        "storage",
        "tools",
        "vectorstores",
        "wire",
    }
)


def __getattr__(name: str) -> object:
    import importlib

    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'langchain_fabstir' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access is a plain attribute read
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

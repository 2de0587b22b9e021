"""langchain-fabstir: Fabstir's decentralized LLM network for LangChain and LangGraph.

The main entry points:

- :class:`SessionManager`: the seed's Session Manager API (sessions, streaming,
  history, checkpoints, resume), async-first.
- ``ChatFabstir``: a LangChain chat model over Fabstir sessions.
- :mod:`langchain_fabstir.host`: a reference host you can run with a real model.
"""

from langchain_fabstir.errors import (
    CheckpointError,
    FabstirError,
    HostDisconnectedError,
    ProtocolError,
    RateLimitedError,
    ResponseTimeoutError,
    SessionNotFoundError,
    SessionTimeoutError,
    TokenLimitExceededError,
)
from langchain_fabstir.models import Message, Session, SessionConfig, SessionSummary, StreamResult
from langchain_fabstir.session import SessionManager

__all__ = [
    "CheckpointError",
    "FabstirError",
    "HostDisconnectedError",
    "Message",
    "ProtocolError",
    "RateLimitedError",
    "ResponseTimeoutError",
    "Session",
    "SessionConfig",
    "SessionManager",
    "SessionNotFoundError",
    "SessionSummary",
    "SessionTimeoutError",
    "StreamResult",
    "TokenLimitExceededError",
]
__version__ = "0.1.0"

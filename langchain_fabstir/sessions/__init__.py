"""The Session Manager API: sessions with Fabstir hosts, usable without LangChain.

:class:`SessionManager` is a facade over parts it composes, each in its own module:

- :mod:`~langchain_fabstir.sessions.transport`: one WebSocket (timeouts, size limit, pings);
- :mod:`~langchain_fabstir.sessions.connection`: open, ``session_init``, reconnect, failover;
- :mod:`~langchain_fabstir.sessions.answer`: one answer's protocol, frames in, events out
  (no I/O); :mod:`~langchain_fabstir.sessions.stream` drives it (socket, clocks, cancel);
- :mod:`~langchain_fabstir.sessions.sealed`: an encrypted socket's conversation (key,
  chunk order, replay checks);
- :mod:`~langchain_fabstir.sessions.recovery`: keeping a broken answer going (resume,
  continuation, rate-limit waits);
- :mod:`~langchain_fabstir.sessions.proofs`: checkpoint proofs inside a session;
- :mod:`~langchain_fabstir.sessions.persistence`: sessions kept on S5, export, share, import;
- :mod:`~langchain_fabstir.sessions.models`: the seed's data types.
"""

from langchain_fabstir.sessions.manager import SessionManager
from langchain_fabstir.sessions.models import (
    GeneratedImage,
    Message,
    Session,
    SessionConfig,
    SessionSummary,
    StreamResult,
)
from langchain_fabstir.wire.images import ImageInput

__all__ = [
    "GeneratedImage",
    "ImageInput",
    "Message",
    "Session",
    "SessionConfig",
    "SessionManager",
    "SessionSummary",
    "StreamResult",
]

"""Conversations, histories and share codes on S5. Knows nothing of sessions or LangChain.

- :mod:`~langchain_fabstir.storage.conversations`: :class:`S5ConversationStore`, the SDK's
  ``conversation.json``, saved blobs, share codes;
- :mod:`~langchain_fabstir.storage.sealed_log`: an append-only record log with constant-cost
  appends and compare-and-swap writers (the chat history and the LangGraph saver use it);
- :mod:`~langchain_fabstir.storage.folded_logs`: a bounded cache of such logs and their
  folds, brought up to date incrementally (the LangGraph saver and store use it);
- :mod:`~langchain_fabstir.storage.access`: one S5 file system on the package's background
  loop, shared by sync and async callers;
- :mod:`~langchain_fabstir.storage.share`: the share-code format.

The S5 client itself is :mod:`langchain_fabstir.s5`.
"""

from langchain_fabstir.storage.conversations import S5ConversationStore, export_session
from langchain_fabstir.storage.share import ShareCode, make_share_code, parse_share_code

__all__ = [
    "S5ConversationStore",
    "ShareCode",
    "export_session",
    "make_share_code",
    "parse_share_code",
]

"""LangGraph on S5: :class:`S5CheckpointSaver`, a ``BaseCheckpointSaver``, and
:class:`S5Store`, a ``BaseStore`` for long-term memory (both need the ``langgraph``
extra). LangGraph's "checkpoints" are graph snapshots; Fabstir's checkpoint proofs live
in :mod:`langchain_fabstir.checkpoints`."""

from langchain_fabstir.langgraph.saver import S5CheckpointSaver
from langchain_fabstir.langgraph.store import S5Store

__all__ = ["S5CheckpointSaver", "S5Store"]

"""LangGraph on S5: :class:`S5CheckpointSaver`, a ``BaseCheckpointSaver`` (needs the
``langgraph`` extra). LangGraph's "checkpoints" are graph snapshots; Fabstir's checkpoint
proofs live in :mod:`langchain_fabstir.checkpoints`."""

from langchain_fabstir.langgraph.saver import S5CheckpointSaver

__all__ = ["S5CheckpointSaver"]

"""LangGraph on S5: :class:`S5CheckpointSaver`, a ``BaseCheckpointSaver``, and
:class:`S5Store`, a ``BaseStore`` for long-term memory (both need the ``langgraph``
extra). LangGraph's "checkpoints" are graph snapshots; Fabstir's checkpoint proofs live
in :mod:`langchain_fabstir.checkpoints`."""

try:
    from langchain_fabstir.langgraph.saver import S5CheckpointSaver
    from langchain_fabstir.langgraph.store import S5Store
except ModuleNotFoundError as exc:  # the extra is not installed: say how to install it
    if not (exc.name or "").startswith("langgraph"):
        raise
    from langchain_fabstir._extras import missing_extra

    raise missing_extra("S5CheckpointSaver and S5Store", "langgraph", exc) from None

__all__ = ["S5CheckpointSaver", "S5Store"]

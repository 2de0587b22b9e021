"""langchain-fabstir: Fabstir's decentralized LLM network for LangChain and LangGraph."""

from langchain_fabstir.errors import FabstirError

__all__ = ["FabstirError"]
__version__ = "0.1.0"

"""``ChatFabstir``: a LangChain chat model over Fabstir sessions.

- :mod:`~langchain_fabstir.chat_models.base`: the class (its docstring is the manual);
- :mod:`~langchain_fabstir.chat_models.messages`: LangChain messages to and from the protocol;
- :mod:`~langchain_fabstir.chat_models.structured`: tools and structured output by prompt.
"""

from langchain_fabstir.chat_models.base import ChatFabstir

__all__ = ["ChatFabstir"]

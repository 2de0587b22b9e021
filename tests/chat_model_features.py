"""What ChatFabstir supports, declared once for LangChain's standard unit and
integration test suites."""

from __future__ import annotations

from langchain_fabstir.chat_models import ChatFabstir


class ChatFabstirFeatures:
    """Mixed into both standard test classes (before the langchain_tests base)."""

    @property
    def chat_model_class(self) -> type[ChatFabstir]:
        return ChatFabstir

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True

"""The reference host: a Fabstir host you can run locally, with a real model or an echo.

See :class:`ReferenceHost`, :class:`LlamaEngine`, :class:`EchoEngine`, and
:class:`OpenAIEngine` (in front of any OpenAI-compatible server).
"""

from langchain_fabstir.host.engines import (
    EchoEngine,
    Engine,
    EngineContextOverflow,
    EngineError,
    EngineRateLimited,
    EngineRequest,
    Generation,
    GenerationResult,
    LlamaEngine,
    ModelFile,
    default_model,
    default_model_path,
)
from langchain_fabstir.host.local import local_host
from langchain_fabstir.host.openai_engine import OpenAIEngine
from langchain_fabstir.host.server import ReferenceHost, run_host

__all__ = [
    "EchoEngine",
    "Engine",
    "EngineContextOverflow",
    "EngineError",
    "EngineRateLimited",
    "EngineRequest",
    "Generation",
    "GenerationResult",
    "LlamaEngine",
    "ModelFile",
    "OpenAIEngine",
    "ReferenceHost",
    "default_model",
    "default_model_path",
    "local_host",
    "run_host",
]

"""The reference host: a Fabstir host you can run locally, with a real model or an echo.

See :class:`ReferenceHost`, :class:`LlamaEngine` and :class:`EchoEngine`.
"""

from langchain_fabstir.host.engines import (
    EchoEngine,
    Engine,
    EngineError,
    GenerationResult,
    LlamaEngine,
    default_model_path,
)
from langchain_fabstir.host.local import local_host
from langchain_fabstir.host.server import ReferenceHost, run_host

__all__ = [
    "EchoEngine",
    "Engine",
    "EngineError",
    "GenerationResult",
    "LlamaEngine",
    "ReferenceHost",
    "default_model_path",
    "local_host",
    "run_host",
]

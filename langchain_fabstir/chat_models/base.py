"""``ChatFabstir``: a LangChain chat model over Fabstir sessions."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
import weakref
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Sequence,
)
from operator import itemgetter
from typing import Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
    adispatch_custom_event,
)
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.chat_models import BaseChatModel, LangSmithParams
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
)
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import (
    JsonOutputKeyToolsParser,
    PydanticToolsParser,
)
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from langchain_fabstir._sync import iterate_sync, run_sync
from langchain_fabstir.callbacks import CHECKPOINT_EVENT, CHECKPOINTS_METADATA_KEY
from langchain_fabstir.chat_models.messages import (
    find_stop,
    generation_info,
    held_back,
    to_protocol,
    to_result,
    usage_metadata,
    with_metadata,
)
from langchain_fabstir.chat_models.structured import (
    closed_objects,
    format_instructions,
    with_instructions,
)
from langchain_fabstir.errors import FabstirError, RateLimitedError
from langchain_fabstir.sessions.manager import SessionManager
from langchain_fabstir.sessions.models import SessionConfig, StreamResult
from langchain_fabstir.sessions.recovery import fit_context
from langchain_fabstir.sessions.stream import PromptStream
from langchain_fabstir.wire.tools import (
    forced_tool_names,
    parse_envelope,
    tool_instructions,
    validate_arguments,
)

__all__ = ["ChatFabstir"]

_RETRY_AFTER_CAP = 30.0
_BACKOFF = wait_exponential(multiplier=0.2, max=5.0) + wait_random(0, 1)
"""Exponential backoff with jitter (every tenacity >= 8.2 has these)."""


class _LoopResources:
    """A SessionManager and its idle sessions, for one event loop."""

    def __init__(self, manager: SessionManager) -> None:
        self.manager = manager
        self.idle: dict[str, list[str]] = {}


class ChatFabstir(BaseChatModel):
    """Chat model on Fabstir's decentralized LLM network.

    Setup:
        Install ``langchain-fabstir`` and point the model at a Fabstir host (or run one
        locally: ``fabstir host --engine llama --port 8080``)::

            pip install langchain-fabstir
            export FABSTIR_HOST_URL=http://127.0.0.1:8080

    Key init args — completion params:
        model: model id to ask the host for (hosts fall back to their default).
        temperature: sampling temperature (0..2).
        max_tokens: maximum tokens to generate.
        stop: stop sequences, enforced on the client (the host is told to stop).
        seed: sampling seed, sent to hosts that announce the ``seed`` feature.

    Key init args — client params:
        host_url: one host URL, or a list tried in order (failover before the first
            token). Defaults to ``FABSTIR_HOST_URL``.
        timeout: seconds to wait for the first token.
        stream_chunk_timeout: seconds of silence allowed between chunks.
        max_retries: retries of retryable failures before the first token.
        job_id, chain_id: the on-chain job this conversation is paid by (optional).
        private_key: the user's key (``FABSTIR_PRIVATE_KEY``); a secret, never shown.
        session_config: a :class:`~langchain_fabstir.sessions.models.SessionConfig` for the
            underlying sessions.

    Instantiate:
        .. code-block:: python

            from langchain_fabstir import ChatFabstir

            llm = ChatFabstir(host_url="http://127.0.0.1:8080", temperature=0, max_tokens=64)

    Invoke:
        .. code-block:: python

            msg = llm.invoke([("system", "Answer briefly."), ("human", "Capital of France?")])
            msg.content              # 'The capital of France is Paris.'
            msg.usage_metadata       # {'input_tokens': 37, 'output_tokens': 8, 'total_tokens': 45}
            msg.response_metadata["model_name"], msg.response_metadata["finish_reason"]

    Stream:
        .. code-block:: python

            for chunk in llm.stream("Tell me about the sea."):
                print(chunk.content, end="", flush=True)

        Usage arrives on exactly one chunk (the last, ``chunk_position="last"``). Breaking
        out of the loop sends ``stream_cancel`` so the host stops generating.

    Async:
        .. code-block:: python

            await llm.ainvoke("hello")
            async for chunk in llm.astream("hello"):
                ...
            await llm.abatch(["a", "b"])

        The sync methods also work inside a running event loop (e.g. a notebook): they
        run on a private background loop, without ``nest_asyncio``.

    Tool calling:
        .. code-block:: python

            from langchain_core.tools import tool

            @tool
            def get_weather(city: str) -> str:
                \"\"\"Weather in a city.\"\"\"
                return "sunny"

            llm_tools = llm.bind_tools([get_weather], tool_choice="any")
            msg = llm_tools.invoke("Weather in Paris?")
            msg.tool_calls   # [{'name': 'get_weather', 'args': {'city': 'Paris'}, 'id': ...}]

        Two paths, chosen per host:

        - hosts that announce the ``tools`` feature (the reference host does) receive
          ``tools``/``tool_choice`` and constrain decoding to the tool-call envelope:
          every answer parses, names are always bound tools, and arguments always match
          the tool's JSON schema (the values are the model's choice).
        - other hosts get the tools described in a system message; the client parses the
          answer and validates arguments (required keys, top-level types). Calls that do
          not validate become ``invalid_tool_calls``; text that is not a call is content.

        While streaming with tools bound, the answer is buffered and the tool calls are
        emitted as ``tool_call_chunks`` when the envelope is complete.

    Structured output:
        .. code-block:: python

            from pydantic import BaseModel

            class Joke(BaseModel):
                setup: str
                punchline: str

            llm.with_structured_output(Joke).invoke("A joke about cats")
            # Joke(setup='...', punchline='...')

        ``method="json_schema"`` (default) sends ``response_format`` to hosts that
        announce it (grammar-constrained: the result always parses and matches the
        schema) and otherwise asks for JSON and validates it; ``"function_calling"`` uses
        tool calling; ``"json_mode"`` asks for any JSON object.

    History:
        Messages of every type map onto the protocol's ``conversation_context``:
        system, human, AI (earlier tool calls included as their JSON envelope) and tool
        results (as user turns that name the tool). Content a host cannot take (images,
        audio, files) is refused with a ``ValueError``, never silently dropped.

    Errors:
        Every failure is a :class:`~langchain_fabstir.errors.FabstirError` with a stable
        ``code`` that is also the matching ``langchain_core.exceptions`` type:
        ``ModelConnectionError`` (HOST_UNREACHABLE, HOST_DISCONNECTED),
        ``ModelTimeoutError`` (RESPONSE_TIMEOUT, STREAM_CHUNK_TIMEOUT),
        ``ContextOverflowError`` (TOKEN_LIMIT_EXCEEDED), ``ModelRateLimitError``
        (RATE_LIMITED), ``ModelNotFoundError`` (MODEL_NOT_AVAILABLE),
        ``ModelInvalidRequestError`` (INVALID_REQUEST), with ``is_retryable`` set.

    A runnable example with the in-process echo host:

    >>> import asyncio
    >>> from langchain_fabstir.host import EchoEngine, ReferenceHost
    >>> async def demo():
    ...     async with ReferenceHost(EchoEngine()) as host:
    ...         llm = ChatFabstir(host_url=host.url, stop=["world"])
    ...         msg = await llm.ainvoke("hello world")
    ...         return msg.content, msg.response_metadata["finish_reason"]
    >>> asyncio.run(demo())
    ('Echo: hello ', 'stop')
    """

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True)

    model: str | None = Field(default=None, alias="model_name")
    """Model id to request. ``None``: the model the host announces (or its default);
    hosts fall back to their default model for ids they do not serve."""
    host_url: str | list[str] | None = None
    """Host base URL, or a list tried in order. Defaults to ``FABSTIR_HOST_URL``."""
    temperature: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    seed: int | None = None
    timeout: float | None = None
    """Seconds to wait for the first token (default: the session config's 60 s)."""
    stream_chunk_timeout: float | None = None
    """Seconds of silence allowed between two chunks (default 30 s)."""
    max_retries: int = 2
    job_id: int | None = None
    chain_id: int = 84532
    private_key: SecretStr | None = Field(default=None)
    user_address: str | None = None
    streaming: bool = False
    session_config: SessionConfig | None = None
    host_public_key: str | None = None
    """The host's public key (``0x02...``): sessions are encrypted to it end to end
    (``session_config.encryption``, default ``"auto"``)."""

    _resources: weakref.WeakKeyDictionary[Any, _LoopResources] = PrivateAttr(
        default_factory=weakref.WeakKeyDictionary
    )

    def __init__(self, **kwargs: Any) -> None:
        import os

        if kwargs.get("private_key") is None and os.environ.get("FABSTIR_PRIVATE_KEY"):
            kwargs["private_key"] = SecretStr(os.environ["FABSTIR_PRIVATE_KEY"])
        if kwargs.get("host_url") is None and os.environ.get("FABSTIR_HOST_URL"):
            kwargs["host_url"] = os.environ["FABSTIR_HOST_URL"]
        super().__init__(**kwargs)

    # --- LangChain plumbing ------------------------------------------------------------

    @property
    def _llm_type(self) -> str:
        return "fabstir"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "host_url": self.host_url,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "stop": self.stop,
            "seed": self.seed,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="fabstir",
            ls_model_name=kwargs.get("model") or self.model or "default",
            ls_model_type="chat",
        )
        temperature = kwargs.get("temperature", self.temperature)
        if temperature is not None:
            params["ls_temperature"] = temperature
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if max_tokens is not None:
            params["ls_max_tokens"] = max_tokens
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return True

    @classmethod
    def get_lc_namespace(cls) -> list[str]:
        return ["langchain_fabstir", "chat_models"]

    @property
    def lc_secrets(self) -> dict[str, str]:
        return {"private_key": "FABSTIR_PRIVATE_KEY"}

    # --- sessions ----------------------------------------------------------------------

    def _hosts(self) -> list[str]:
        hosts = [self.host_url] if isinstance(self.host_url, str) else list(self.host_url or [])
        if not hosts:
            raise ValueError("ChatFabstir needs a host: pass host_url=... or set FABSTIR_HOST_URL")
        return hosts

    def _config(self) -> SessionConfig:
        config = self.session_config or SessionConfig()
        updates: dict[str, Any] = {"reconnect_attempts": config.reconnect_attempts}
        if self.timeout is not None:
            updates["first_token_timeout"] = self.timeout
        if self.stream_chunk_timeout is not None:
            updates["chunk_timeout"] = self.stream_chunk_timeout
        return config.model_copy(update=updates)

    def _loop_resources(self) -> _LoopResources:
        loop = asyncio.get_running_loop()
        res = self._resources.get(loop)
        if res is None:
            # Sessions of loops that are gone (``asyncio.run`` per call) hold sockets and,
            # through them, their loop: drop them so they are collected and closed.
            for old in [lp for lp in self._resources if lp.is_closed()]:
                del self._resources[old]
            manager = SessionManager(
                self._config(),
                user_address=self.user_address,
                chain_id=self.chain_id,
                private_key=self.private_key,
            )
            res = _LoopResources(manager)
            self._resources[loop] = res
        return res

    async def _checkout(self, host_url: str) -> tuple[_LoopResources, str]:
        res = self._loop_resources()
        idle = res.idle.setdefault(host_url, [])
        manager = res.manager
        while idle:
            sid = idle.pop()
            if manager.is_reusable(sid):
                return res, sid
            if any(s.id == sid and s.status == "active" for s in manager.sessions):
                with contextlib.suppress(FabstirError):
                    await manager.end_session(sid)  # idle too long: a fresh one instead
        session = await res.manager.create_session(
            host_url=host_url,
            model=None,
            job_id=self.job_id,
            session_id=uuid.uuid4().hex,
            host_public_key=self.host_public_key,
        )
        return res, session.id

    # --- messages ----------------------------------------------------------------------

    # --- the core stream ---------------------------------------------------------------

    def _stream_params(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        params = {
            "model": kwargs.get("model", self.model),
            "max_tokens": kwargs.get("max_tokens", self.max_tokens),
            "temperature": kwargs.get("temperature", self.temperature),
            "seed": kwargs.get("seed", self.seed),
            "stop": stop if stop is not None else kwargs.get("stop", self.stop),
            "tools": kwargs.get("tools"),
            "tool_choice": kwargs.get("tool_choice"),
            "response_format": kwargs.get("response_format"),
            "parallel_tool_calls": kwargs.get("parallel_tool_calls"),
        }
        return params

    @contextlib.asynccontextmanager
    async def _attempt(
        self,
        host_url: str,
        protocol_messages: list[dict[str, str]],
        params: dict[str, Any],
    ) -> AsyncIterator[AsyncGenerator[tuple[PromptStream, str], None]]:
        """One try against one host: the ``(stream, text)`` pairs of the answer, from a
        pooled session (returned to the pool if its socket is still good)."""
        res, sid = await self._checkout(host_url)
        manager = res.manager
        healthy = False
        try:
            transport = await manager.connect(sid)
            features = transport.features
            context = list(protocol_messages[:-1])
            prompt = protocol_messages[-1]["content"] or " "
            request: dict[str, Any] = {
                "model": params["model"],
                "max_tokens": params["max_tokens"],
                "temperature": params["temperature"],
                "seed": params["seed"],
            }
            tools = params["tools"]
            if tools:
                if "tools" in features:
                    request["tools"] = tools
                    request["tool_choice"] = params["tool_choice"]
                    request["parallel_tool_calls"] = params["parallel_tool_calls"]
                else:
                    context = with_instructions(
                        context, tool_instructions(tools, params["tool_choice"])
                    )
            fmt = params["response_format"]
            if fmt is not None:
                if "response_format" in features:
                    request["response_format"] = fmt
                else:
                    context = with_instructions(context, format_instructions(fmt))
            # Hosts read only the last few context messages: keep the system ones.
            context = fit_context(context, manager.config.max_context_messages)
            try:
                async with contextlib.aclosing(
                    manager.open_stream(sid, prompt, context=context, record=False, **request)
                ) as pieces:
                    yield pieces
            except (GeneratorExit, asyncio.CancelledError):
                # The consumer stopped early (a stop sequence, a ``break``, a cancelled
                # task): the stream has sent ``stream_cancel`` and the late frames of this
                # answer are skipped by id, so an open socket stays usable.
                healthy = manager.is_connected(sid)
                raise
            healthy = True
        finally:
            if healthy:
                res.idle.setdefault(host_url, []).append(sid)
            else:
                with contextlib.suppress(Exception):
                    await manager.end_session(sid)

    async def _chunks(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        dispatch: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
        **kwargs: Any,
    ) -> AsyncGenerator[ChatGenerationChunk, None]:
        """The answer as LangChain chunks; checkpoint proofs ride on the chunk that
        completes them (``response_metadata["fabstir_checkpoints"]``, a list so that
        merging chunks concatenates) and go to ``dispatch`` (default: a
        ``fabstir_checkpoint`` custom event to the enclosing run, when there is one)."""
        dispatch = dispatch or _dispatch_to_parent_run
        carry: list[dict[str, Any]] = []  # proofs waiting for the next emitted chunk
        resumed: dict[str, Any] | None = None  # a resume to announce on the next chunk
        protocol_messages = to_protocol(messages)
        params = self._stream_params(stop, kwargs)
        stops = [s for s in (params.pop("stop") or []) if s]
        buffering = bool(params["tools"]) or params["response_format"] is not None
        hosts = self._hosts()
        attempts = self.max_retries + 1
        started = False
        attempt_no = 0
        last: PromptStream | None = None
        emitted: list[str] = []
        stopped = False

        def retryable(exc: BaseException) -> bool:
            return (
                not started
                and isinstance(exc, FabstirError)
                and bool(getattr(exc, "is_retryable", False))
            )

        def wait(retry_state: Any) -> float:
            exc = retry_state.outcome.exception() if retry_state.outcome else None
            base = _BACKOFF(retry_state)
            if isinstance(exc, RateLimitedError) and exc.retry_after:
                return min(max(base, exc.retry_after), _RETRY_AFTER_CAP)
            return base

        retrying = AsyncRetrying(
            stop=stop_after_attempt(attempts),
            retry=retry_if_exception(retryable),
            wait=wait,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                host = hosts[attempt_no % len(hosts)]
                attempt_no += 1
                pending = ""
                async with self._attempt(host, protocol_messages, params) as pieces:
                    async for stream, text in pieces:
                        last = stream
                        started = True
                        if stream.chunk_proofs:
                            for proof in stream.chunk_proofs:
                                carry.append(proof.to_dict())
                                await dispatch(carry[-1])
                        if stream.resume_note is not None:
                            resumed, stream.resume_note = stream.resume_note, None
                        if buffering:
                            emitted.append(text)
                            continue
                        if stops:
                            pending += text
                            cut = find_stop(pending, stops)
                            if cut is not None:
                                text, stopped = pending[:cut], True
                                pending = ""
                            else:
                                safe = len(pending) - held_back(pending, stops)
                                text, pending = pending[:safe], pending[safe:]
                        if text:
                            emitted.append(text)
                            if carry or resumed:
                                yield with_metadata(text, carry, resumed)
                                carry, resumed = [], None
                            else:
                                yield ChatGenerationChunk(message=AIMessageChunk(content=text))
                        if stopped:
                            break
                    if pending and not stopped:
                        emitted.append(pending)
                        yield ChatGenerationChunk(message=AIMessageChunk(content=pending))
        if last is None:
            return
        result = last.result
        full = "".join(emitted)
        final = AIMessageChunk(content="", chunk_position="last")
        if buffering:
            final = self._parse_buffered(full, params)
        if stopped:
            result.finish_reason = "stop"
        for proof in last.end_proofs:
            carry.append(proof.to_dict())
            await dispatch(carry[-1])
        final.usage_metadata = usage_metadata(result, last.chunks_received)
        final.response_metadata = self._response_metadata(result)
        if carry:
            final.response_metadata[CHECKPOINTS_METADATA_KEY] = carry
        if result.metadata.get("resumes"):
            final.response_metadata["fabstir_resumes"] = result.metadata["resumes"]
        yield ChatGenerationChunk(message=final, generation_info=generation_info(result))

    def _parse_buffered(self, text: str, params: dict[str, Any]) -> AIMessageChunk:
        if not params["tools"]:
            return AIMessageChunk(content=text, chunk_position="last")
        try:
            content, calls = parse_envelope(text)
        except ValueError as exc:
            return AIMessageChunk(
                content=text,
                chunk_position="last",
                invalid_tool_calls=[
                    {
                        "name": None,
                        "args": text,
                        "id": None,
                        "error": str(exc),
                        "type": "invalid_tool_call",
                    }
                ],
            )
        schemas = {
            t["function"]["name"]: t["function"].get("parameters") or {} for t in params["tools"]
        }
        if not params["parallel_tool_calls"]:
            calls = calls[:1]
        chunks = []
        invalid = []
        for i, call in enumerate(calls):
            call_id = f"call_{uuid.uuid4().hex[:24]}"
            problems = (
                ["unknown tool"]
                if call["name"] not in schemas
                else validate_arguments(call["args"], schemas[call["name"]])
            )
            if problems:
                invalid.append(
                    {
                        "name": call["name"],
                        "args": json.dumps(call["args"]),
                        "id": call_id,
                        "error": "; ".join(problems),
                        "type": "invalid_tool_call",
                    }
                )
                continue
            chunks.append(
                {
                    "name": call["name"],
                    "args": json.dumps(call["args"]),
                    "id": call_id,
                    "index": i,
                    "type": "tool_call_chunk",
                }
            )
        return AIMessageChunk(
            content=content,
            chunk_position="last",
            tool_call_chunks=chunks,
            invalid_tool_calls=invalid,
        )

    def _response_metadata(self, result: StreamResult) -> dict[str, Any]:
        return {
            "model_name": result.model or self.model or "default",
            "model_provider": "fabstir",
            "finish_reason": result.finish_reason,
            "host_url": result.host_url,
            "session_id": result.session_id,
            "request_id": result.request_id,
        }

    # --- BaseChatModel hooks -----------------------------------------------------------

    def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        # The generator itself, not a wrapper re-yielding it: one hop less per token.
        return self._chunks(messages, stop, **kwargs)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        yield from iterate_sync(self._chunks(messages, stop, **kwargs))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        dispatch = None
        if run_manager is not None:
            events = AsyncCallbackManager(
                handlers=run_manager.handlers,
                inheritable_handlers=run_manager.inheritable_handlers,
                tags=run_manager.tags,
                metadata=run_manager.metadata,
            )
            run_id = run_manager.run_id

            async def dispatch(proof: dict[str, Any]) -> None:
                await events.on_custom_event(CHECKPOINT_EVENT, proof, run_id=run_id)

        return await self._collect(messages, stop, dispatch, **kwargs)

    async def _collect(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        dispatch: Callable[[dict[str, Any]], Awaitable[None]] | None,
        **kwargs: Any,
    ) -> ChatResult:
        merged: ChatGenerationChunk | None = None
        async with contextlib.aclosing(self._chunks(messages, stop, dispatch, **kwargs)) as chunks:
            async for chunk in chunks:
                merged = chunk if merged is None else merged + chunk
        return to_result(merged)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        proofs: list[dict[str, Any]] = []

        async def keep(proof: dict[str, Any]) -> None:
            proofs.append(proof)

        result = run_sync(self._collect(messages, stop, keep, **kwargs))
        if run_manager is not None and proofs:
            events = CallbackManager(
                handlers=run_manager.handlers,
                inheritable_handlers=run_manager.inheritable_handlers,
                tags=run_manager.tags,
                metadata=run_manager.metadata,
            )
            for proof in proofs:
                events.on_custom_event(CHECKPOINT_EVENT, proof, run_id=run_manager.run_id)
        return result

    # --- tools and structured output ---------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | dict[str, Any] | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (functions, pydantic models, ``BaseTool``, OpenAI dicts).

        ``tool_choice``: ``"auto"``/``None`` (the model decides), ``"any"``/``"required"``
        (some tool), a tool name, or ``"none"``.
        """
        specs = [convert_to_openai_tool(t) for t in tools]
        if tool_choice == "none":
            return self.bind(**kwargs)
        forced_tool_names(specs, tool_choice)  # validates the choice early
        return self.bind(tools=specs, tool_choice=tool_choice, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        method: Literal["json_schema", "function_calling", "json_mode"] = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """Return outputs shaped like ``schema`` (pydantic class, TypedDict or JSON schema).

        See the class docstring for what each ``method`` guarantees.
        """
        if kwargs:
            raise ValueError(f"unexpected arguments: {sorted(kwargs)}")
        is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        ls_format = {
            "kwargs": {"method": method},
            "schema": convert_to_json_schema(schema),
        }
        parser: Runnable[Any, Any]
        if method == "function_calling":
            tool = convert_to_openai_tool(schema)
            name = tool["function"]["name"]
            llm = self.bind_tools([schema], tool_choice=name, ls_structured_output_format=ls_format)
            if is_pydantic:
                parser = PydanticToolsParser(tools=[schema], first_tool_only=True)
            else:
                parser = JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
        elif method in ("json_schema", "json_mode"):
            if method == "json_schema":
                json_schema = convert_to_json_schema(schema)
                if strict is not False:
                    json_schema = closed_objects(json_schema)
                fmt: dict[str, Any] = {
                    "type": "json_schema",
                    "json_schema": {
                        "name": json_schema.get("title", "output"),
                        "schema": json_schema,
                    },
                }
            else:
                fmt = {"type": "json_object"}
            llm = self.bind(response_format=fmt, ls_structured_output_format=ls_format)
            if is_pydantic and method == "json_schema":
                parser = PydanticOutputParser(pydantic_object=schema)
            else:
                parser = JsonOutputParser()
        else:
            raise ValueError(f"unknown method {method!r}")
        if not include_raw:
            return llm | parser
        parser_with_fallback = RunnablePassthrough.assign(
            parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
        ).with_fallbacks(
            [RunnablePassthrough.assign(parsed=lambda _: None)],
            exception_key="parsing_error",
        )
        return RunnableMap(raw=llm) | parser_with_fallback


# --- helpers ---------------------------------------------------------------------------


async def _dispatch_to_parent_run(proof: dict[str, Any]) -> None:
    """A ``fabstir_checkpoint`` custom event for the enclosing run (a chain or graph
    node); a bare ``astream()`` has none, and the chunk metadata is the channel then."""
    with contextlib.suppress(RuntimeError):
        await adispatch_custom_event(CHECKPOINT_EVENT, proof)

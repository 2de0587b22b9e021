"""An engine that forwards to any OpenAI-compatible server (vLLM, llama.cpp, Ollama...).

:class:`OpenAIEngine` puts the reference host in front of a model someone already
serves: each Fabstir prompt becomes one streamed ``POST /v1/chat/completions``
(``stream: true``, ``stream_options.include_usage``) over a pooled ``httpx`` client, and
each chunk's ``delta.content`` becomes one ``stream_chunk``. Token counts come from the
upstream's ``usage``; only when it sends none are the content chunks counted (and
:meth:`OpenAIEngine.describe`, shown in ``/v1/version``, says ``token_counts: counted``).

Details and examples: :class:`OpenAIEngine`.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
from pydantic import SecretStr

from langchain_fabstir._compat import timeout as deadline_after
from langchain_fabstir._http import client, read_capped
from langchain_fabstir._json import loads_untrusted
from langchain_fabstir.host.engines import (
    EngineContextOverflow,
    EngineError,
    EngineRateLimited,
    EngineRequest,
    Generation,
    GenerationResult,
)

__all__ = ["OpenAIEngine"]

log = logging.getLogger(__name__)

BUSY_RETRY_AFTER = 5.0
"""Seconds a client is told to wait when every upstream slot stayed busy."""

MAX_ERROR_BODY = 64 * 1024
"""Bytes of an upstream's error reply that are read (the rest is not)."""

MAX_MODELS_BODY = 1024 * 1024
"""Bytes of an upstream's ``/v1/models`` reply that are read; a longer one is refused."""


_OVERFLOW = re.compile(
    r"context[ _-]?(length|size|window)|maximum context|too many tokens|prompt is too long",
    re.IGNORECASE,
)
_MAX_CONTEXT = re.compile(r"maximum context length is (\d+)", re.IGNORECASE)
_PROMPT_TOKENS = re.compile(r"(\d+) in the messages|has (\d+) input tokens", re.IGNORECASE)


def _base_url(url: str) -> str:
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _retry_after(response: httpx.Response) -> float:
    """Seconds from a 429's ``Retry-After`` (seconds or an HTTP date), default 1."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return 1.0
    try:
        return max(1.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 1.0
    return max(1.0, when.timestamp() - time.time())


def _error_text(body: Any, fallback: str) -> tuple[str, dict[str, Any]]:
    """The message (and the error object) of an OpenAI-style error body."""
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, dict):
        message = error.get("message") or error.get("detail") or fallback
        return str(message)[:500], error
    if isinstance(error, str):
        return error[:500], {}
    return fallback, {}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def upstream_error(status: int | None, body: Any, *, retry_after: float = 1.0) -> EngineError:
    """The typed engine error for an upstream's error (HTTP status and parsed body).

    >>> e = upstream_error(400, {"error": {"message": "This model's maximum context length "
    ...     "is 4096 tokens. However, you requested 5000 tokens (4990 in the messages, "
    ...     "10 in the completion).", "code": "context_length_exceeded"}})
    >>> type(e).__name__, e.prompt_tokens, e.context_window
    ('EngineContextOverflow', 4990, 4096)
    >>> e = upstream_error(400, {"error": {"type": "exceed_context_size_error",
    ...     "message": "the request exceeds the available context size",
    ...     "n_prompt_tokens": 9000, "n_ctx": 8192}})
    >>> type(e).__name__, e.prompt_tokens, e.context_window
    ('EngineContextOverflow', 9000, 8192)
    >>> type(upstream_error(429, {}, retry_after=7)).__name__
    'EngineRateLimited'
    >>> str(upstream_error(500, {"error": "CUDA out of memory"}))
    'upstream error (HTTP 500): CUDA out of memory'
    """
    where = f"HTTP {status}" if status is not None else "in the stream"
    message, error = _error_text(body, "no details")
    if status == 429:
        return EngineRateLimited(f"upstream rate limit: {message}", retry_after=retry_after)
    kind = f"{error.get('code', '')} {error.get('type', '')}"
    if "context_length_exceeded" in kind or "exceed_context" in kind or _OVERFLOW.search(message):
        window = _int(error.get("n_ctx"))
        prompt = _int(error.get("n_prompt_tokens"))
        if window is None and (m := _MAX_CONTEXT.search(message)):
            window = int(m.group(1))
        if prompt is None and (m := _PROMPT_TOKENS.search(message)):
            prompt = int(m.group(1) or m.group(2))
        return EngineContextOverflow(
            f"the upstream model's context window is exceeded: {message}",
            prompt_tokens=prompt,
            context_window=window,
        )
    return EngineError(f"upstream error ({where}): {message}")


class _Slots:
    """The client, the concurrency cap and the model cache of one event loop."""

    def __init__(self, engine: OpenAIEngine) -> None:
        self.loop = asyncio.get_running_loop()
        self.semaphore = asyncio.Semaphore(engine.max_concurrent)
        self.active = 0
        self.models_lock = asyncio.Lock()
        # No compression (the client's default): the event stream is read raw, a line at
        # a time, with a bound.
        headers = {"Accept": "text/event-stream"}
        if engine.api_key is not None:
            headers["Authorization"] = f"Bearer {engine.api_key.get_secret_value()}"
        self.client = client(
            base_url=engine.base_url,
            headers=headers,
            timeout=httpx.Timeout(
                connect=engine.connect_timeout,
                read=engine.stall_timeout,
                write=engine.stall_timeout,
                pool=engine.queue_timeout,
            ),
            # One connection per answer in flight, kept alive between answers.
            limits=httpx.Limits(
                max_connections=engine.max_concurrent + 2,
                max_keepalive_connections=engine.max_concurrent,
            ),
            transport=engine._transport,
        )


class OpenAIEngine:
    """The reference host's engine over an OpenAI-compatible ``/v1/chat/completions``.

    Errors the upstream reports before the first token surface from
    :meth:`~langchain_fabstir.host.engines.Generation.opened` as typed engine errors that
    the host turns into its error frames: :class:`EngineContextOverflow`
    (``TOKEN_LIMIT_EXCEEDED``), :class:`EngineRateLimited` (``Rate limit exceeded, retry
    after N seconds``), any other :class:`EngineError` (a bare error). Closing a generation
    (a cancel, or the host stopping an answer nobody reads) closes the upstream connection,
    so the upstream stops generating. A stall (no bytes for ``stall_timeout`` seconds), a
    passed ``deadline`` (enforced inside each read), an event line over ``max_event_bytes``,
    more content chunks than ``max_tokens``, or a dropped connection ends the answer with an
    error, never a hang or unbounded memory. Every JSON the upstream sends is read with a
    size bound and parsed with :func:`~langchain_fabstir._json.loads_untrusted`.

    >>> from pydantic import SecretStr
    >>> engine = OpenAIEngine("http://127.0.0.1:8000/v1", api_key=SecretStr("sk-x"),
    ...                       models=["qwen2.5-7b"], max_concurrent=4)
    >>> engine.base_url, engine.default_model, "sk-x" in repr(engine)
    ('http://127.0.0.1:8000', 'qwen2.5-7b', False)
    >>> engine.resolve_model("no-such-model"), engine.resolve_model("qwen2.5-7b")
    ('qwen2.5-7b', 'qwen2.5-7b')

    Args:
        upstream_url: the server's base URL, with or without ``/v1``
            (``http://127.0.0.1:11434`` for Ollama, ``http://127.0.0.1:8000/v1`` for vLLM).
        api_key: sent as ``Authorization: Bearer ...`` (a ``SecretStr``: never shown in
            ``repr`` or logs). ``None`` sends no key.
        models: the model ids this host offers, the first being the default. Empty: every
            model the upstream's ``/v1/models`` lists (its first one is the default). A
            request for any other name gets the default, as deployed hosts do.
        max_concurrent: answers streamed from the upstream at once; more wait up to
            ``queue_timeout`` seconds for a slot, then get the rate-limit error.
        connect_timeout: seconds to open a connection to the upstream.
        stall_timeout: seconds without a byte from the upstream before the answer ends
            with an error (also the wait for the first byte).
        deadline: seconds an answer may take in all, from the request to its last byte
            (enforced inside every read: an upstream that never pauses cannot pass it).
        max_event_bytes: the longest line of the event stream accepted; an upstream that
            sends a longer one (or no newline at all) ends the answer with an error.
        context_window: the model's context window, for the host's overflow check and
            its ``max_tokens`` clamp. Default: what the upstream's ``/v1/models`` says
            (``max_model_len``, ``context_length``), else 32768.
        models_ttl: seconds the upstream's model list is cached.
        response_format: whether the upstream enforces ``response_format`` (JSON schema);
            when False the host does not announce ``response_format`` or ``tools``.
        transport: an ``httpx`` transport (for tests and unusual setups).
    """

    name = "openai"

    def __init__(
        self,
        upstream_url: str,
        *,
        api_key: SecretStr | str | None = None,
        models: Sequence[str] = (),
        max_concurrent: int = 8,
        queue_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        stall_timeout: float = 60.0,
        deadline: float = 600.0,
        max_event_bytes: int = 256 * 1024,
        context_window: int | None = None,
        models_ttl: float = 30.0,
        response_format: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, not {max_concurrent}")
        self.base_url = _base_url(upstream_url)
        self.api_key = SecretStr(api_key) if isinstance(api_key, str) else api_key
        self.configured_models = [m for m in models if m]
        self.max_concurrent = max_concurrent
        self.queue_timeout = queue_timeout
        self.connect_timeout = connect_timeout
        self.stall_timeout = stall_timeout
        self.deadline = deadline
        self.max_event_bytes = max_event_bytes
        self._context_window = context_window
        self.models_ttl = models_ttl
        self.response_format = response_format
        self._transport = transport
        self._upstream_models: list[dict[str, Any]] = []
        self._models_at = -float("inf")
        self._slots: _Slots | None = None
        self.token_counts = "unknown"
        """``upstream`` (the upstream sent ``usage``), ``counted`` (it did not: content
        chunks were counted), ``unknown`` before the first answer."""

    def __repr__(self) -> str:
        return (
            f"OpenAIEngine({self.base_url!r}, models={self.configured_models!r}, "
            f"max_concurrent={self.max_concurrent}, api_key={'set' if self.api_key else None})"
        )

    # --- models -------------------------------------------------------------------

    @property
    def default_model(self) -> str | None:
        if self.configured_models:
            return self.configured_models[0]
        return str(self._upstream_models[0]["id"]) if self._upstream_models else None

    def resolve_model(self, requested: str | None) -> str | None:
        """The upstream model for a requested name: itself when offered, else the default."""
        if requested and requested in {m["id"] for m in self.models()}:
            return requested
        return self.default_model

    def models(self) -> list[dict[str, str]]:
        """The models this host offers (from the last ``/v1/models`` read, or configured)."""
        upstream = {str(m.get("id")): m for m in self._upstream_models if m.get("id")}
        ids = self.configured_models or list(upstream)
        out = []
        for model_id in ids:
            entry = {"id": model_id, "name": model_id}
            owner = upstream.get(model_id, {}).get("owned_by")
            if isinstance(owner, str) and owner:
                entry["description"] = f"{owner}, served by {self.base_url}"
            out.append(entry)
        return out

    async def refresh_models(self, *, force: bool = False) -> list[dict[str, str]]:
        """Read the upstream's ``/v1/models`` unless the cached list is fresh.

        Never raises: an unreachable upstream keeps the previous list (and is logged).
        """
        if not force and time.monotonic() - self._models_at < self.models_ttl:
            return self.models()
        slots = self._slots_here()
        async with slots.models_lock:
            if not force and time.monotonic() - self._models_at < self.models_ttl:
                return self.models()
            try:
                # The whole read is bounded in time and size (a trickling or endless
                # reply cannot hold the lock, nor fill memory).
                async with deadline_after(self.connect_timeout + self.stall_timeout):
                    async with slots.client.stream("GET", "/v1/models") as response:
                        response.raise_for_status()
                        raw = await read_capped(response, MAX_MODELS_BODY)
                data = loads_untrusted(raw)
                listed = data.get("data") or data.get("models") if isinstance(data, dict) else None
                if not isinstance(listed, list):
                    raise ValueError(f"no model list in {str(data)[:200]!r}")
                self._upstream_models = [m for m in listed if isinstance(m, dict) and "id" in m]
            except (httpx.HTTPError, ValueError, TimeoutError, asyncio.TimeoutError) as exc:
                log.warning("cannot read %s/v1/models: %s", self.base_url, exc or type(exc))
            self._models_at = time.monotonic()
        return self.models()

    @property
    def context_window(self) -> int:
        if self._context_window is not None:
            return self._context_window
        wanted = self.default_model
        for model in self._upstream_models:
            if model.get("id") == wanted:
                for key in ("max_model_len", "context_length", "context_window"):
                    value = _int(model.get(key))
                    if value:
                        return value
        return 32768

    def count_prompt_tokens(self, messages: Sequence[dict[str, str]]) -> int:
        # An estimate (about 4 characters a token) for the host's overflow check; the
        # upstream's own count comes back in ``usage`` and is what the client is told.
        return sum(len(m.get("content", "")) // 4 + 4 for m in messages)

    # --- the host's view ------------------------------------------------------------

    def host_features(self, features: list[str]) -> list[str]:
        """The host's extensions as this upstream supports them."""
        if self.response_format:
            return features
        return [f for f in features if f not in ("response_format", "tools")]

    def describe(self) -> dict[str, Any]:
        """What ``/v1/version`` shows about this engine (never the key)."""
        return {
            "upstream": self.base_url,
            "models": [m["id"] for m in self.models()],
            "default_model": self.default_model,
            "token_counts": self.token_counts,
            "max_concurrent": self.max_concurrent,
        }

    def summary(self) -> str:
        """One line for the host's startup summary."""
        ids = [m["id"] for m in self.models()]
        shown = ", ".join(ids) if ids else "none listed"
        return (
            f"openai engine: upstream {self.base_url}, models: {shown} "
            f"(default {self.default_model}), max {self.max_concurrent} at once"
        )

    # --- generation -----------------------------------------------------------------

    def _slots_here(self) -> _Slots:
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots.loop is not loop:
            self._slots = _Slots(self)
        return self._slots

    def request_body(
        self, request: EngineRequest, *, model: str | None, max_tokens: int
    ) -> dict[str, Any]:
        """The ``/v1/chat/completions`` body for a Fabstir request, for the upstream's
        ``model`` (resolved) and ``max_tokens`` (capped to its window).

        >>> ask = EngineRequest([{"role": "user", "content": "hi"}], max_tokens=5, seed=3)
        >>> OpenAIEngine("http://x", models=["m"]).request_body(
        ...     ask, model="m", max_tokens=5)["stream_options"]
        {'include_usage': True}
        """
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in request.messages],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": max_tokens,
            "temperature": request.temperature,
        }
        if request.seed is not None:
            body["seed"] = request.seed
        if request.response_format is not None and self.response_format:
            body["response_format"] = request.response_format
        return body

    def generate(self, request: EngineRequest) -> Generation:
        stream = _UpstreamStream(self, request)
        return Generation(stream, stream.result, opener=stream.open)

    async def aclose(self) -> None:
        """Close the pooled connections to the upstream."""
        slots, self._slots = self._slots, None
        if slots is not None and slots.loop is asyncio.get_running_loop():
            await slots.client.aclose()

    def close(self) -> None:
        slots, self._slots = self._slots, None
        if slots is not None and not slots.loop.is_closed():
            with contextlib.suppress(RuntimeError):
                asyncio.run_coroutine_threadsafe(slots.client.aclose(), slots.loop)

    async def __aenter__(self) -> OpenAIEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


_DONE = b"[DONE]"


class _UpstreamStream:
    """One streamed chat completion: ``open()`` until the first token, then iterate.

    The slot, the HTTP response and its connection are released by :meth:`aclose`
    (called by the host when the answer ends, is cancelled or is reaped), which also
    runs when ``open()`` fails.

    The stream is read raw and cut into lines here, so that a line is bounded by
    ``max_event_bytes``; every read runs under the answer's deadline. At most
    ``max_tokens`` content chunks are passed on: an upstream that sends more (it ignores
    ``max_tokens``) is cut there, with finish reason ``length``.
    """

    def __init__(self, engine: OpenAIEngine, request: EngineRequest) -> None:
        self.engine = engine
        self.request = request
        self.max_tokens = request.max_tokens  # lowered to what fits the upstream's window
        self.result = GenerationResult()
        self._slots: _Slots | None = None
        self._holding = False
        self._response: httpx.Response | None = None
        self._raw: AsyncIterator[bytes] | None = None
        self._lines: deque[bytes] = deque()  # whole lines read, not yet handled
        self._partial = b""  # the start of a line whose end has not come yet
        self._eof = False
        self._pending: deque[str] = deque()
        self._is_open = False
        self._open_error: BaseException | None = None
        self._finished = False
        self._seen_reason = False
        self._got_usage = False
        self._chunks = 0
        self._ends_at = 0.0

    # --- opening ----------------------------------------------------------------------

    async def open(self) -> None:
        """Send the request and wait for its first token (or its end, or its error)."""
        if self._open_error is not None:
            raise self._open_error
        if self._is_open:
            return
        try:
            await self._open()
        except BaseException as exc:
            self._open_error = exc if isinstance(exc, EngineError) else EngineError("closed")
            await self.aclose()
            raise
        self._is_open = True

    async def _open(self) -> None:
        engine = self.engine
        self._slots = slots = engine._slots_here()
        self._ends_at = time.monotonic() + engine.deadline
        try:
            await asyncio.wait_for(slots.semaphore.acquire(), engine.queue_timeout)
        except asyncio.TimeoutError:
            raise EngineRateLimited(
                f"all {engine.max_concurrent} upstream slots stayed busy for "
                f"{engine.queue_timeout:g}s",
                retry_after=BUSY_RETRY_AFTER,
            ) from None
        self._holding = True
        slots.active += 1
        if not engine.configured_models and not engine._upstream_models:
            await engine.refresh_models()
        model = engine.resolve_model(self.request.model)
        if model is None:
            raise EngineError(
                f"no model to ask: {engine.base_url}/v1/models listed none; name one with --model"
            )
        body = engine.request_body(self.request, model=model, max_tokens=self.max_tokens)
        try:
            await self._send(slots, body)
        except EngineContextOverflow as exc:
            # The prompt fits but prompt + max_tokens does not (vLLM rejects that):
            # ask once more for what fits, which the upstream itself just told us.
            window, prompt = exc.context_window, exc.prompt_tokens
            if window is None or prompt is None or prompt >= window:
                raise
            body["max_tokens"] = self.max_tokens = window - prompt
            await self._send(slots, body)
        # Read up to the first token, so that an error in the stream's first event
        # still becomes the host's error frame.
        while not self._pending and not self._finished:
            await self._read_event()

    def _remaining(self) -> float:
        remaining = self._ends_at - time.monotonic()
        if remaining <= 0:
            raise EngineError(f"the answer passed its {self.engine.deadline:g}s deadline")
        return remaining

    async def _send(self, slots: _Slots, body: dict[str, Any]) -> None:
        try:
            async with deadline_after(self._remaining()):
                request = slots.client.build_request("POST", "/v1/chat/completions", json=body)
                response = await slots.client.send(request, stream=True)
        except (httpx.TimeoutException, TimeoutError, asyncio.TimeoutError) as exc:
            raise EngineError(
                f"upstream {self.engine.base_url} did not answer in time ({type(exc).__name__})"
            ) from None
        except httpx.HTTPError as exc:
            raise EngineError(f"cannot reach upstream {self.engine.base_url}: {exc}") from None
        if response.status_code >= 400:
            try:  # a bounded excerpt, in bounded time
                async with deadline_after(min(self._remaining(), self.engine.stall_timeout)):
                    raw = await read_capped(response, MAX_ERROR_BODY, truncate=True)
            except (httpx.HTTPError, TimeoutError, asyncio.TimeoutError, EngineError):
                raw = b""
            finally:
                await response.aclose()
            try:
                parsed: Any = loads_untrusted(raw) if raw else {}
            except (ValueError, UnicodeDecodeError):
                parsed = raw[:500].decode("utf-8", "replace")
            raise upstream_error(response.status_code, parsed, retry_after=_retry_after(response))
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            await response.aclose()
            raise EngineError(
                f"upstream {self.engine.base_url} compressed its event stream ({encoding}) "
                "though asked not to"
            )
        self._response = response
        self._raw = response.aiter_raw()

    # --- reading ----------------------------------------------------------------------

    async def _fill(self) -> None:
        """Read from the upstream until a whole line is ready (or the stream ends)."""
        assert self._raw is not None
        limit = self.engine.max_event_bytes
        while not self._lines and not self._eof:
            try:
                async with deadline_after(self._remaining()):
                    chunk = await self._raw.__anext__()
            except StopAsyncIteration:
                self._eof = True
                if self._partial:
                    self._lines.append(self._partial)
                    self._partial = b""
                return
            except (TimeoutError, asyncio.TimeoutError):
                raise EngineError(
                    f"the answer passed its {self.engine.deadline:g}s deadline"
                ) from None
            except httpx.TimeoutException:
                raise EngineError(
                    f"the upstream stalled: no data for {self.engine.stall_timeout:g}s"
                ) from None
            except httpx.HTTPError as exc:
                raise EngineError(f"the upstream connection dropped mid-answer: {exc}") from None
            if self._partial:
                chunk = self._partial + chunk
            lines = chunk.split(b"\n")
            self._partial = lines.pop()
            if len(self._partial) > limit or any(len(line) > limit for line in lines):
                raise EngineError(f"the upstream sent an event line longer than {limit} bytes")
            self._lines.extend(lines)

    async def _read_event(self) -> None:
        """Handle one line of the event stream into ``_pending`` / ``result``."""
        if not self._lines:
            await self._fill()
            if not self._lines:  # the end of the stream
                if not (self._seen_reason or self._got_usage):  # no [DONE], no finish: cut
                    raise EngineError("the upstream closed the stream before finishing")
                self._finish()
                return
        line = self._lines.popleft()
        if not line.startswith(b"data:"):
            return  # blank separators, comments (keep-alive pings), event names
        data = line[5:].strip()
        if data == _DONE:
            self._finish()
            return
        try:
            chunk = loads_untrusted(data)
        except (ValueError, UnicodeDecodeError):
            raise EngineError(f"the upstream sent an unreadable event: {data[:200]!r}") from None
        if not isinstance(chunk, dict):
            return
        if "error" in chunk:
            raise upstream_error(None, chunk)
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(text, str) and text:
                if self._chunks >= self.max_tokens:  # the upstream ignores max_tokens
                    self.result.finish_reason = "length"
                    self._seen_reason = True
                    self._finish()
                    return
                self._pending.append(text)
                self._chunks += 1
            reason = choice.get("finish_reason")
            if reason:
                self.result.finish_reason = "length" if reason == "length" else "stop"
                self._seen_reason = True
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._got_usage = True
            self.result.prompt_tokens = _int(usage.get("prompt_tokens")) or 0
            self.result.completion_tokens = _int(usage.get("completion_tokens")) or 0

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self._got_usage:
            self.engine.token_counts = "upstream"
        else:
            self.result.completion_tokens = self._chunks
            self.engine.token_counts = "counted"

    # --- the async iterator the host reads ----------------------------------------------

    def __aiter__(self) -> _UpstreamStream:
        return self

    async def __anext__(self) -> str:
        await self.open()
        try:
            while not self._pending:
                if self._finished:
                    raise StopAsyncIteration
                await self._read_event()
        except BaseException:
            await self.aclose()  # also when a reader forgets to close (the HTTP path)
            raise
        return self._pending.popleft()

    async def aclose(self) -> None:
        """Stop: close the upstream response (and its connection) and free the slot."""
        self._finished = True
        self._lines.clear()
        self._partial = b""
        response, self._response = self._response, None
        if response is not None:
            with contextlib.suppress(Exception):
                await response.aclose()
        if self._holding and self._slots is not None:
            self._holding = False
            self._slots.active -= 1
            self._slots.semaphore.release()

"""``ChatFabstir``: a LangChain chat model over Fabstir sessions."""

from __future__ import annotations

import asyncio
import contextlib
import difflib
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
from decimal import Decimal
from operator import itemgetter
from typing import Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
    adispatch_custom_event,
)
from langchain_core.language_models import LanguageModelInput, ModelProfile
from langchain_core.language_models.chat_models import BaseChatModel, LangSmithParams
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
)
from langchain_core.output_parsers.openai_tools import (
    JsonOutputKeyToolsParser,
    PydanticToolsParser,
)
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)

from langchain_fabstir._sync import iterate_sync, run_sync
from langchain_fabstir.callbacks import CHECKPOINT_EVENT, CHECKPOINTS_METADATA_KEY
from langchain_fabstir.chain.config import ChainConfig
from langchain_fabstir.chat_models.messages import (
    find_stop,
    generation_info,
    held_back,
    prompt_images,
    text_chunk,
    to_protocol,
    to_result,
    usage_metadata,
    with_metadata,
)
from langchain_fabstir.chat_models.options import check_host_fields, host_fields
from langchain_fabstir.chat_models.profile import base_profile, fetch_profile, learn
from langchain_fabstir.chat_models.reasoning import (
    Reasoning,
    ReasoningPlan,
    check_thinking,
    reasoning_plan,
)
from langchain_fabstir.chat_models.structured import (
    BoundedJsonOutputParser,
    BoundedPydanticOutputParser,
    closed_objects,
    format_instructions,
    with_instructions,
)
from langchain_fabstir.errors import FabstirError, InvalidRequestError
from langchain_fabstir.sessions.answer import ImageAnswer, Proof, Resumed, Text
from langchain_fabstir.sessions.manager import SessionManager
from langchain_fabstir.sessions.models import SessionConfig, StreamResult
from langchain_fabstir.sessions.recovery import fit_context
from langchain_fabstir.sessions.stream import PromptStream
from langchain_fabstir.wire.images import ImageInput
from langchain_fabstir.wire.reasoning import ReasoningSplitter, split_reasoning
from langchain_fabstir.wire.tools import (
    forced_tool_names,
    parse_envelope,
    tool_instructions,
    validate_arguments,
)

__all__ = ["ChatFabstir"]


class _LoopResources:
    """A SessionManager and its idle sessions, for one event loop."""

    def __init__(self, manager: SessionManager) -> None:
        self.manager = manager
        self.idle: list[str] = []


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
        host_url: one host URL, or a list tried in order (failover, see "Retries").
            Defaults to ``FABSTIR_HOST_URL``.
        timeout: total deadline of one call in seconds (the whole answer, reconnects
            included), as in langchain-openai: ``RESPONSE_TIMEOUT`` when it passes.
        first_token_timeout: seconds from the prompt to the host's first frame (does
            not bound a slow answer that has started).
        stream_chunk_timeout: seconds of silence allowed between chunks.
        max_retries: tries of one call in a row that bring no new token (see "Retries").
        job_id, chain_id: the on-chain job this conversation is paid by (optional).
        chain, deposit, payment_token, max_price_per_token: pay on chain instead (see
            "Paid sessions").
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

        ``stream_usage=False`` (field, or per call: ``llm.stream(x, stream_usage=False)``)
        leaves usage off the stream; ``invoke`` always reports it.

    Token usage:
        .. code-block:: python

            msg.usage_metadata
            # {'input_tokens': 37, 'output_tokens': 8, 'total_tokens': 45}

        The host's own counts from ``stream_end.usage`` (``prompt_tokens``,
        ``completion_tokens``). A host whose engine result was late sends only
        ``tokens_used``: then ``output_tokens`` is that and ``input_tokens`` is 0. An
        answer continued after a failure counts the tokens of every part. Tokens a
        node's vision model spent on the prompt's images (``stream_end.vlm_tokens``) are
        input tokens (``input_tokens``, ``total_tokens``, and apart in
        ``input_token_details["vlm"]`` and ``response_metadata["vlm_tokens"]``); the node
        bills them with the generated tokens, at the job's price per token.
        ``langchain_core.callbacks.get_usage_metadata_callback()`` sums it per model.

    Images as answers:
        In an encrypted session a node routes a prompt that asks for a picture ("draw a
        lighthouse", "generate an image of ...") to its diffusion model and answers with
        one image and no text. The message's ``content`` is then a list holding the
        image as LangChain's standard block ``{"type": "image", "base64": ...,
        "mime_type": "image/png"}``; a node's refusal is a typed error
        (``PROMPT_BLOCKED``, ``DIFFUSION_SERVICE_UNAVAILABLE``, ...).

    Response metadata:
        ``msg.response_metadata`` holds ``model_name`` (what the host served),
        ``model_provider`` (``"fabstir"``), ``finish_reason`` (``"stop"``, ``"length"``,
        ``"cancelled"``), ``host_url``, ``session_id``, ``request_id``; when they
        happened, ``fabstir_checkpoints`` (signed checkpoint proofs) and
        ``fabstir_resumes`` (each resume: ``mode`` ``"exact"`` or ``"continuation"``,
        ``offset`` in tokens, ``host_url`` where it went on). The chunk right after a
        resume carries ``fabstir_resumed``.

    Model profile:
        ``llm.profile`` (a ``ModelProfile``, read by LangChain's summarisation and
        context-trimming middleware): text out; ``image_inputs`` ``True`` where the host
        announces ``vision`` (see "Images"), the other media flags ``False``;
        ``tool_calling`` and ``tool_choice`` ``True``;
        ``max_input_tokens``/``max_output_tokens`` (the host's context window) and
        ``structured_output`` (the host announces ``response_format``) are filled from
        what the host announces: by ``await llm.afetch_profile()`` (``/v1/version``,
        ``/v1/models``) up front, and by every answer (``usage.context_window_size``,
        the greeting's features). A ``profile=`` you pass is never changed.

    Reasoning:
        .. code-block:: python

            llm = ChatFabstir(reasoning=True)          # or "low" | "medium" | "high"
            msg = llm.invoke("What is 2 + 2?")
            msg.content                                # '2 + 2 = 4'
            msg.additional_kwargs["reasoning_content"]  # 'Two and two make four.'
            msg.content_blocks[0]                      # {'type': 'reasoning', ...}

        As ``ChatOllama(reasoning=...)``, also per call (``llm.invoke(x, reasoning=True)``):

        - ``True``: sends ``thinking: "enabled"`` (or the level ``model_kwargs`` gives) and
          returns the model's reasoning apart from the answer; ``"low" | "medium" |
          "high"``: the same at that level.
        - ``False``: sends ``thinking: "disabled"``; a think block the model writes anyway
          is dropped.
        - ``None`` (default): sends no ``thinking`` (unless ``model_kwargs`` has one) and
          leaves the text as the model wrote it, think tags included.

        Nodes have no reasoning field (``PROTOCOL.md`` 6.6): models that think write
        ``<think>...</think>`` into the text. The reasoning is the text before the first
        ``</think>`` when the text begins with ``<think>``; a think block that never
        closes (``max_tokens`` ran out while thinking) is all reasoning and the answer is
        empty. With a level (``"low" | "medium" | "high"``) text before a ``</think>`` is
        reasoning even without ``<think>``: a GLM-4 node opens the block in its prompt at
        these levels. Whitespace at the start of the reasoning and of the answer after
        ``</think>`` is dropped.

        Streaming: reasoning comes as chunks whose ``content`` is empty and whose
        ``additional_kwargs["reasoning_content"]`` holds it (merged chunks equal
        ``invoke``), then the answer as content. A tag split across chunks is recognised;
        while one may be arriving at most ``len("</think>") - 1`` characters are held
        back. With a level, text that does not begin with ``<think>`` is held back until
        ``</think>`` (then it is reasoning) or the end (then it is the answer: a Harmony
        node sends only the answer at every level), because it cannot be told apart
        before. Stop sequences apply to the answer only. Usage, tool calls and
        checkpoint proofs are as without reasoning; with tools or structured output
        the call or the JSON is read from the answer, never from the reasoning (with
        ``reasoning=None`` too, where a think block in front stays in ``content``).

        History: reasoning is not sent back (an ``AIMessage`` is its answer). In an
        encrypted session a node stores the raw answer, reasoning included, as its
        history; the client recognises it as the answer it kept, so the conversation
        goes on without being resent.

        ``model_kwargs={"thinking": ...}`` (or ``thinking=`` per call) is still sent as
        given with ``reasoning=None``. With ``reasoning`` set, ``reasoning`` decides the
        ``thinking`` sent; a ``thinking`` that contradicts it (``reasoning=False`` with
        ``"high"``, ``"low"`` with ``"high"``, ``True`` with ``"disabled"``) is refused
        with ``InvalidRequestError`` (``INVALID_REQUEST``), as is a value a node refuses
        (anything but ``enabled | disabled | low | medium | high``), before anything is
        sent.

    Host-specific fields:
        ``model_kwargs={"thinking": "low", "web_search": True, "max_searches": 3}``
        (also per call: ``llm.invoke(x, thinking="high")``) go into the prompt's
        ``request`` as deployed hosts read them. Only ``thinking``, ``web_search``,
        ``max_searches`` and ``search_queries`` are accepted; anything else is a
        ``ValueError`` that names the allowed keys (or the parameter to use instead).

    Retries:
        The session layer owns every retry (:class:`~langchain_fabstir.sessions.recovery.
        AnswerRecovery`); ``ChatFabstir`` asks for one answer and has no retry loop of
        its own. One call has **one budget**, counted in tries: every socket opened or
        tried for the answer after the first, and every time the prompt is sent again.

        - ``max_retries`` (default 2): tries in a row that bring no new token. It is the
          ``reconnect_attempts`` of this model's sessions (a ``reconnect_attempts`` in
          ``session_config`` is overridden). A host that drops every socket sees exactly
          ``1 + max_retries`` sockets and prompts for one call, also across a list of
          hosts.
        - ``session_config.max_resumes`` (default 10): tries of one call in all, progress
          or not: no call ever uses more than ``1 + max_resumes`` sockets and sends.

        What is retried: a dropped socket, a stalled stream (STREAM_CHUNK_TIMEOUT),
        garbage from the host (PROTOCOL_ERROR), a rate limit before any text whose
        ``retry_after`` is at most ``session_config.max_retry_after`` (30 s; it is
        waited). A reconnect goes to the same host first (resuming from the exact token
        on hosts that announce ``resume``, else asking the model to continue: the partial
        answer is sent back as the assistant's turn with the token budget that is left),
        and after a try that brought nothing to the next host of ``host_url``. You
        receive every piece once (text a host restates after a resume or continuation is
        dropped); the first chunk after it carries ``fabstir_resumed``.

        Never retried: a call past its ``timeout`` (the total deadline), a host that
        sent nothing within ``first_token_timeout`` of the prompt
        (RESPONSE_TIMEOUT: it may still be working, and a prompt sent again could be
        billed twice), a longer rate limit, INVALID_REQUEST, TOKEN_LIMIT_EXCEEDED,
        MODEL_NOT_AVAILABLE, AUTH_FAILED. The error is typed with ``is_retryable`` (and
        ``details["attempts"]``): a caller may try again later, e.g.
        ``Runnable.with_retry()`` (which retries ``invoke`` only).

        Paid calls: a retry never pays. The job is bound to its host, so every try goes
        to that host on the job already paid. When the host cannot serve within the
        budget (or cannot be connected at all after paying), the call fails typed
        (HOST_DISCONNECTED, HOST_UNREACHABLE, ...) and the job is ended by the user at
        once, so the deposit comes back less the contract's early-end fee; a call
        therefore risks at most one ``deposit``. The next call pays a new job.

    Rate limits and streaming switches (inherited from ``BaseChatModel``):
        ``rate_limiter=InMemoryRateLimiter(requests_per_second=...)`` is consulted once
        per request (``invoke``, ``stream``, each ``batch`` item).
        ``disable_streaming=True`` makes ``stream`` yield one chunk (the whole answer,
        with usage); ``disable_streaming="tool_calling"`` does so only with tools bound.

    Serialization:
        ``dumpd``/``dumps`` write the model without its ``private_key`` (a secret
        reference to ``FABSTIR_PRIVATE_KEY``). langchain-core 1.7+ loads only classes
        it is told to trust:

        .. code-block:: python

            from langchain_core.load import dumpd, load

            data = dumpd(llm)
            llm2 = load(
                data,
                valid_namespaces=["langchain_fabstir"],
                allowed_objects=[ChatFabstir],
                secrets_from_env=True,          # FABSTIR_PRIVATE_KEY, if set
            )

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

        ``bind_tools`` options on each path:

        - ``tool_choice``: constrained by the grammar on the first path; on the second
          the model is told, and an answer that ignores it is reported as an
          ``invalid_tool_call`` (no call, or a call of a tool the choice excludes).
          ``"none"`` sends no tools on either path.
        - ``parallel_tool_calls``: ``True`` allows several calls in one answer (the
          grammar allows them / the client keeps them); ``False``/``None``: one.
        - ``strict=True``: honoured on the first path (arguments always match the
          schema); refused on the second with ``InvalidRequestError``
          (``INVALID_REQUEST``), because the client cannot make that promise.

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
        results (as user turns that name the tool). Content a host cannot take (audio,
        files, images outside human messages) is refused with a ``ValueError``, never
        silently dropped.

    Images:
        A human message may carry image blocks (``{"type": "image", "base64": ...,
        "mime_type": "image/png"}``, the older ``source_type: "base64"`` form, or an
        ``image_url`` **data** URL; png, jpeg, webp, gif, at most about 10 MB each). They
        are checked before anything is sent (``INVALID_IMAGE_DATA``,
        ``INVALID_IMAGE_FORMAT``, ``IMAGE_TOO_LARGE``: no session taken, nothing paid);
        URLs that are not ``data:`` URLs are refused, never fetched. The host's vision
        sidecar reads each image (its text and a one-sentence description) and puts what
        it read in front of the question; the tokens it used are billed with the job and
        count as input tokens (``usage_metadata["input_token_details"]["vlm"]``).

        .. code-block:: python

            msg = HumanMessage(content=[
                {"type": "text", "text": "What does the sign say?"},
                {"type": "image", "base64": b64, "mime_type": "image/png"},
            ])
            llm.invoke([msg])

        Never a silent drop: a host that announces its extensions without ``vision`` is
        refused before sending, and an answer that reports no vision tokens (a deployed
        node without a vision sidecar drops images silently) raises
        ``IMAGE_INPUTS_NOT_SUPPORTED`` with that answer in ``details["partial_text"]``.
        In ``stream`` that error comes after the last chunk (the node reports its vision
        tokens only in its final frame): discard what was shown. A prompt with images is
        never sent again by a retry (reading them is billed).

        Only the images of the last message go to the host, when it is a human message
        (the prompt a node reads images for). Images of earlier messages are not sent
        again; their text is, and so are the model's answers about them. In encrypted
        mode the node keeps what its sidecar read in its history of the node session,
        so follow-up questions on the same conversation still see it; in plaintext mode
        (nodes keep no history), and when the conversation moves to a new node session
        (another conversation on the pooled session, a reconnect, a failover) the model
        sees only the text: put the image in the new message again to have it read.

    Paid sessions:
        With ``chain=`` (a :class:`~langchain_fabstir.chain.ChainConfig`), ``deposit=`` and
        ``model=`` (its on-chain ``repo/file`` name) the host comes from the chain's registry
        (the cheapest acceptable one by default policy ``auto``) and each pooled session is a
        job paid with ``deposit`` (``payment_token`` ETH or USDC; hosts above
        ``max_price_per_token`` are never paid). Calls reuse the open session, so a chain or
        an agent pays one job while it runs. ``host_url`` is not used then.

        .. code-block:: python

            from decimal import Decimal
            from langchain_fabstir.chain import ChainConfig

            llm = ChatFabstir(
                chain=ChainConfig.from_env(),
                model="CohereForAI/TinyVicuna-1B-32k-GGUF/tiny-vicuna-1b.q4_k_m.gguf",
                deposit=Decimal("0.0002"),
                max_price_per_token=Decimal("0.00000001"),
            )  # the key: FABSTIR_PRIVATE_KEY

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

    model_config = ConfigDict(
        populate_by_name=True,
        arbitrary_types_allowed=True,
        hide_input_in_errors=True,
        use_attribute_docstrings=True,
    )

    model: str | None = Field(default=None, alias="model_name")
    """Model id to request. ``None``: the model the host announces (or its default);
    hosts fall back to their default model for ids they do not serve."""
    host_url: str | list[str] | None = None
    """Host base URL, or a list: one session, connected to the first that answers and
    failing over to the others, also in the middle of an answer, within the call's one
    retry budget (see "Retries"). Defaults to ``FABSTIR_HOST_URL``."""
    temperature: float | None = None
    """Sampling temperature, 0..2 (``None``: the host's default, 0.7 on real hosts)."""
    max_tokens: int | None = None
    """Most tokens to generate (``None``: the session config's ``default_max_tokens``)."""
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    """Stop sequences, enforced on the client (the host is told to stop)."""
    seed: int | None = None
    """Sampling seed, sent to hosts that announce the ``seed`` extension."""
    timeout: float | None = Field(default=None, gt=0)
    """Total deadline of one call, in seconds, as in langchain-openai: the whole answer,
    from sending the prompt to its last token, reconnects and resumes included. When it
    passes the call fails with ``RESPONSE_TIMEOUT`` (``ResponseTimeoutError``, never
    retried): ``invoke`` returns nothing (the text so far is in the error's
    ``details["partial_text"]``), ``stream`` keeps the chunks it already yielded. It is the
    sessions' ``answer_timeout`` (``None``: ``session_config``'s, default 900 s). Connecting
    is bounded separately (``session_config.open_timeout``/``ack_timeout``). Earlier, this
    field was the first-token timeout: that is ``first_token_timeout`` now."""
    first_token_timeout: float | None = Field(default=None, gt=0)
    """Seconds from sending the prompt to the host's first frame (``RESPONSE_TIMEOUT``, not
    retried: the host may still be working). It does not bound a slow answer that has
    started (``timeout`` does). ``None``: ``session_config``'s, default 60 s."""
    stream_chunk_timeout: float | None = Field(default=None, gt=0)
    """Seconds of silence allowed between two chunks of an answer that has started
    (``STREAM_CHUNK_TIMEOUT``, retried: see "Retries"). ``None``: ``session_config``'s
    ``chunk_timeout``, default 30 s."""
    max_retries: int = 2
    """Tries of one call in a row that bring no new token: the ``reconnect_attempts`` of
    this model's sessions (see "Retries" in the class docstring; the total bound of a call
    is ``session_config.max_resumes``). Earlier versions retried whole calls on top of the
    sessions' own reconnects (a product of attempts, and a new paid job per retry)."""
    job_id: int | None = None
    """The on-chain job that pays for the conversation (optional off-chain)."""
    chain_id: int = 84532
    """The chain of ``job_id`` (84532: Base Sepolia)."""
    private_key: SecretStr | None = Field(default=None)
    """The user's key (``FABSTIR_PRIVATE_KEY``): signs checkpoint proofs. A secret:
    never in ``repr``, logs or ``dumps`` output."""
    user_address: str | None = None
    """The user's address, sent in ``session_init`` (derived from ``private_key`` when
    unset)."""
    streaming: bool = False
    """Whether ``invoke`` streams internally (callbacks then see every token)."""
    stream_usage: bool = True
    """Whether ``stream``/``astream`` put ``usage_metadata`` on their last chunk (exactly
    one chunk). Also a per-call option: ``llm.stream(..., stream_usage=False)``.
    ``invoke`` always reports usage."""
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Host-specific request fields that have no parameter of their own, sent inside the
    prompt's ``request`` as the protocol defines them: ``thinking``
    (``"enabled" | "disabled" | "low" | "medium" | "high"``), ``web_search`` (bool),
    ``max_searches`` (int >= 0), ``search_queries`` (list of str). Any other key is
    refused with a ``ValueError``. The same keys are accepted per call
    (``llm.invoke(x, thinking="low")``)."""
    reasoning: Reasoning = None
    """Whether the model thinks, and its reasoning returned apart from the answer (as
    ``ChatOllama(reasoning=...)``; also per call: ``llm.invoke(x, reasoning=True)``):
    ``True`` sends ``thinking: "enabled"`` and returns the reasoning in
    ``additional_kwargs["reasoning_content"]`` and as a ``reasoning`` content block;
    ``"low" | "medium" | "high"`` the same at that level; ``False`` sends ``thinking:
    "disabled"`` and drops a think block the model writes anyway; ``None`` (default)
    sends no ``thinking`` (unless ``model_kwargs`` has one) and leaves the text as the
    model wrote it. See "Reasoning" in the class docstring."""
    session_config: SessionConfig | None = None
    """Settings of the underlying sessions (reconnects, resumes, checkpoint interval,
    timeouts, encryption): a :class:`~langchain_fabstir.sessions.models.SessionConfig`."""
    host_public_key: str | None = None
    """The host's public key (``0x02...``): sessions are encrypted to it end to end, and
    must be (a key you give makes encryption required, unless ``encryption="off"``)."""
    encryption: Literal["auto", "required", "off"] | None = None
    """End-to-end encryption, as ``SessionConfig.encryption``: ``"auto"``, ``"required"``
    (never a prompt in clear: ``ENCRYPTION_UNAVAILABLE`` instead) or ``"off"``. ``None``:
    ``session_config``'s (default ``"auto"``). Conflicting with ``session_config``'s is an
    error."""
    chain: ChainConfig | None = None
    """Pay on chain (a :class:`~langchain_fabstir.chain.ChainConfig`, e.g.
    ``ChainConfig.from_env()``): the host is the best one registered for ``model`` (its
    ``repo/file`` name or 0x id), paid with ``deposit``; needs ``private_key``. One paid
    session per conversation pool: calls reuse it while it is open. ``host_url`` is ignored."""
    deposit: Decimal | None = None
    """With ``chain``: the most paid into each session job, in whole ``payment_token``
    (a ``Decimal``, ``str`` or ``int``; never a ``bool``). One call risks at most this:
    retries reuse the job (see "Retries")."""
    payment_token: Literal["ETH", "USDC"] = "ETH"
    """With ``chain``: pay in native ETH or in USDC (approved first)."""
    max_price_per_token: Decimal | None = None
    """With ``chain``: the most paid per token (whole tokens); pricier hosts are skipped."""
    from_deposit: bool = False
    """With ``chain``: pay each session from the pre-funded deposit balance
    (``SessionManager.deposit``) instead of the wallet; refunds go back into it."""
    max_spend: dict[str, Decimal] | None = None
    """With ``chain``: the most this model commits in session deposits over its life, per
    token (``{"USDC": Decimal("5")}``; a token not named: nothing), across every call, event
    loop and retry; ``BUDGET_EXCEEDED`` before anything is sent beyond it."""
    spend_ledger: str | None = None
    """With ``max_spend``: a file keeping its count across restarts of the process."""
    payer: str | None = None
    """With ``chain``: ``private_key`` is a delegate's and sessions are paid by this address
    (USDC, through the allowance it gave with ``SessionManager.authorize_delegate``)."""

    @field_validator("max_spend", mode="before")
    @classmethod
    def _check_max_spend(cls, value: Any) -> Any:
        from langchain_fabstir.sessions.budget import SpendBudget

        if value is not None:
            SpendBudget(value)  # refuses floats, bools, unknown tokens
        return value

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown_arguments(cls, data: Any) -> Any:
        # A misspelt setting (``encrypton="required"``) must not be silently ignored.
        if isinstance(data, dict):
            known = set(cls.model_fields) | {
                f.alias for f in cls.model_fields.values() if f.alias is not None
            }
            unknown = [k for k in data if isinstance(k, str) and k not in known]
            if unknown:
                name = unknown[0]
                near = difflib.get_close_matches(name, sorted(known), n=1)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                raise ValueError(
                    f"ChatFabstir got an unknown argument {name!r}{hint} (host request fields "
                    "without a parameter of their own go in model_kwargs=)"
                )
        return data

    @model_validator(mode="after")
    def _check_encryption(self) -> ChatFabstir:
        config = self.session_config
        if (
            self.encryption is not None
            and config is not None
            and "encryption" in config.model_fields_set
            and config.encryption != self.encryption
        ):
            raise ValueError(
                f"encryption={self.encryption!r} conflicts with session_config's "
                f"encryption={config.encryption!r}: give one of them"
            )
        return self

    @field_validator("model_kwargs")
    @classmethod
    def _check_model_kwargs(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_host_fields(value)
        return value

    @field_validator("deposit", "max_price_per_token", mode="before")
    @classmethod
    def _check_money(cls, value: Any) -> Any:
        if isinstance(value, bool):  # a bool is an int: True would be 1 ETH
            raise ValueError("money must be a Decimal, str or int, not a bool")
        return value

    _resources: weakref.WeakKeyDictionary[Any, _LoopResources] = PrivateAttr(
        default_factory=weakref.WeakKeyDictionary
    )
    _auto_profile: bool = PrivateAttr(default=False)
    _budget: Any = PrivateAttr(default=None)  # one SpendBudget for every loop's manager

    def __init__(self, **kwargs: Any) -> None:
        import os

        if kwargs.get("private_key") is None and os.environ.get("FABSTIR_PRIVATE_KEY"):
            kwargs["private_key"] = SecretStr(os.environ["FABSTIR_PRIVATE_KEY"])
        if kwargs.get("host_url") is None and os.environ.get("FABSTIR_HOST_URL"):
            kwargs["host_url"] = os.environ["FABSTIR_HOST_URL"]
        super().__init__(**kwargs)

    # --- LangChain plumbing ------------------------------------------------------------

    def _resolve_model_profile(self) -> ModelProfile | None:
        return base_profile()

    @model_validator(mode="after")
    def _mark_auto_profile(self) -> ChatFabstir:
        # A profile the user passed is theirs; ours is refined by what hosts announce.
        self._auto_profile = self.profile == base_profile()
        return self

    async def afetch_profile(self) -> ModelProfile:
        """Ask the first host (``/v1/version``, ``/v1/models``) and fill :attr:`profile`
        (context window, structured output, model name) before the first call. Calls
        refine it anyway: every answer's usage carries ``context_window_size``. A
        profile passed by the user is returned unchanged."""
        if self.profile is None:
            self.profile = base_profile()
            self._auto_profile = True
        if not self._auto_profile or self.chain is not None:
            return self.profile  # paid: the host is chosen per session; answers refine it
        return await fetch_profile(self._hosts()[0], self.model, self.profile)

    def fetch_profile(self) -> ModelProfile:
        """Blocking :meth:`afetch_profile`."""
        return run_sync(self.afetch_profile())

    async def aclose(self) -> None:
        """End the pooled sessions of the running event loop and close their sockets.

        Hosts settle a paid session when its socket closes, so call this when a paid model
        is done (the model stays usable: the next call opens a new session).
        """
        res = self._resources.pop(asyncio.get_running_loop(), None)
        if res is None:
            return
        for session in res.manager.sessions:
            if session.status != "ended":
                with contextlib.suppress(FabstirError):
                    await res.manager.end_session(session.id)
        await res.manager.aclose()

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
            "reasoning": self.reasoning,
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

    def _spend_budget(self) -> Any:
        from langchain_fabstir.sessions.budget import SpendBudget

        if self.max_spend is not None and self._budget is None:
            self._budget = SpendBudget(self.max_spend, self.spend_ledger)
        return self._budget

    def _config(self) -> SessionConfig:
        config = self.session_config or SessionConfig()
        # One set of retry settings: max_retries is the sessions' reconnect_attempts.
        updates: dict[str, Any] = {"reconnect_attempts": self.max_retries}
        if self.encryption is not None:
            updates["encryption"] = self.encryption
        if self.timeout is not None:
            updates["answer_timeout"] = self.timeout
        if self.first_token_timeout is not None:
            updates["first_token_timeout"] = self.first_token_timeout
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
                chain=self.chain,
                max_spend=self._spend_budget(),
                payer=self.payer,
            )
            res = _LoopResources(manager)
            self._resources[loop] = res
        return res

    async def _checkout(self) -> tuple[_LoopResources, str]:
        """A pooled session (an idle one, else a new one: paid once, on chain)."""
        res = self._loop_resources()
        idle = res.idle
        manager = res.manager
        while idle:
            sid = idle.pop()
            if manager.is_reusable(sid):
                return res, sid
            if any(s.id == sid and s.status == "active" for s in manager.sessions):
                with contextlib.suppress(FabstirError):
                    await manager.end_session(sid)  # idle too long: a fresh one instead
        if self.chain is not None:
            if not self.model or self.deposit is None:
                raise InvalidRequestError(
                    "ChatFabstir(chain=...) needs model= (its on-chain 'repo/file' name) and "
                    "deposit= (the most paid into the session job)"
                )
            session = await manager.create_session(
                model=self.model,
                deposit=self.deposit,
                payment_token=self.payment_token,
                max_price_per_token=self.max_price_per_token,
                host_public_key=self.host_public_key,
                from_deposit=self.from_deposit,
            )
            return res, session.id
        hosts = self._hosts()
        session = await res.manager.create_session(
            host_url=hosts[0],
            fallback_hosts=hosts[1:],
            model=None,
            job_id=self.job_id,
            session_id=uuid.uuid4().hex,
            host_public_key=self.host_public_key,
        )
        return res, session.id

    # --- the core stream ---------------------------------------------------------------

    def _stream_params(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        for given in (kwargs, kwargs.get("model_kwargs") or {}):
            if "thinking" in given:  # refused typed, before anything is sent
                check_thinking(given["thinking"])
        fields = host_fields(self.model_kwargs, kwargs)
        plan = reasoning_plan(kwargs.get("reasoning", self.reasoning), fields.get("thinking"))
        if plan is not None:
            fields["thinking"] = plan.thinking
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
            "strict": kwargs.get("strict"),
            "host_fields": fields,
            "reasoning": plan,
            "native_tools": False,
        }
        return params

    @contextlib.asynccontextmanager
    async def _answer(
        self,
        protocol_messages: list[dict[str, str]],
        params: dict[str, Any],
        images: list[ImageInput] | None = None,
    ) -> AsyncIterator[
        AsyncGenerator[tuple[PromptStream, Text | Proof | Resumed | ImageAnswer], None]
    ]:
        """The ``(stream, event)`` pairs of one answer, from a pooled session; the session
        layer owns every retry of it. The session goes back to the pool when its socket is
        still good; otherwise it is ended (a paid one's job released: see "Retries")."""
        res, sid = await self._checkout()
        manager = res.manager
        keep = release = False
        try:
            transport = await manager.connect(sid)
            host_url = transport.host_url
            features = transport.features
            context = list(protocol_messages[:-1])
            prompt = protocol_messages[-1]["content"] or " "
            if self._auto_profile and self.profile is not None:
                learn(self.profile, features=features)
            request: dict[str, Any] = {
                **params["host_fields"],
                "model": params["model"],
                "max_tokens": params["max_tokens"],
                "temperature": params["temperature"],
                "seed": params["seed"],
            }
            tools = params["tools"]
            params["native_tools"] = bool(tools) and "tools" in features
            if tools and params["strict"] and not params["native_tools"]:
                raise InvalidRequestError(
                    f"strict=True needs a host that constrains tool arguments to their "
                    f"schema (one that announces the 'tools' extension); {host_url} does "
                    "not, and the client can only check required keys and top-level "
                    "types. Bind the tools with strict=None (the default) or use a host "
                    "that announces 'tools'.",
                    host_url=host_url,
                )
            if tools:
                if params["native_tools"]:
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
                    manager.answer_events(
                        sid, prompt, context=context, record=False, images=images, **request
                    )
                ) as pieces:
                    yield pieces
            except (GeneratorExit, asyncio.CancelledError):
                # The consumer stopped early (a stop sequence, a ``break``, a cancelled
                # task): the stream has sent ``stream_cancel`` and the late frames of this
                # answer are skipped by id, so an open socket stays usable.
                keep = manager.is_connected(sid)
                raise
            keep = True
        except FabstirError as exc:
            # An error the host answered with (a bad request, a token limit) leaves the
            # session usable; a host that could not serve within the retry budget ends it.
            keep = not exc.is_retryable and manager.is_connected(sid)
            release = not keep and self.chain is not None
            raise
        finally:
            if keep:
                res.idle.append(sid)
            else:
                with contextlib.suppress(Exception):
                    await manager.end_session(sid, release_job=release)

    async def _chunks(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        dispatch: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
        *,
        stream_usage: bool = True,
        **kwargs: Any,
    ) -> AsyncGenerator[ChatGenerationChunk, None]:
        """The answer as LangChain chunks; checkpoint proofs ride on the chunk that
        completes them (``response_metadata["fabstir_checkpoints"]``, a list so that
        merging chunks concatenates) and go to ``dispatch`` (default: a
        ``fabstir_checkpoint`` custom event to the enclosing run, when there is one).

        One answer is one request to the session layer, which owns its retries (see
        "Retries" in the class docstring); this only turns its text into chunks."""
        dispatch = dispatch or _dispatch_to_parent_run
        carry: list[dict[str, Any]] = []  # proofs waiting for the next emitted chunk
        resumed: dict[str, Any] | None = None  # a resume to announce on the next chunk
        protocol_messages = to_protocol(messages)
        images = prompt_images(messages)  # checked before a session is taken or paid
        params = self._stream_params(stop, kwargs)
        stops = [s for s in (params.pop("stop") or []) if s]
        buffering = bool(params["tools"]) or params["response_format"] is not None
        plan: ReasoningPlan | None = params["reasoning"]
        # reasoning=None: no splitter, nothing added per token.
        splitter: ReasoningSplitter | None = plan.splitter() if plan is not None else None
        keep = plan is not None and plan.keep
        last: PromptStream | None = None
        emitted: list[str] = []  # the answer's text, buffered (tools, structured output)
        pending = ""  # text held back while it may begin a stop sequence
        stopped = False
        async with self._answer(protocol_messages, params, images) as events:
            async for stream, event in events:
                last = stream
                if type(event) is not Text:
                    if type(event) is ImageAnswer:
                        block = event.image.content_block()
                        yield ChatGenerationChunk(message=AIMessageChunk(content=[block]))
                    elif type(event) is Proof:
                        carry.append(event.proof.to_dict())
                        await dispatch(carry[-1])
                    elif type(event) is Resumed:
                        resumed = event.note()
                    continue
                text = event.text
                if splitter is not None:
                    thought, text = splitter.feed(text)
                    if thought and keep:
                        yield _thought_chunk(thought, carry, resumed)
                        carry, resumed = [], None
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
                    if carry or resumed:
                        yield with_metadata(text, carry, resumed)
                        carry, resumed = [], None
                    else:
                        yield text_chunk(text)
                if stopped:
                    break
            tail = ""
            if splitter is not None and not stopped:
                thought, tail = splitter.close()  # what it held back
                if thought and keep:
                    yield _thought_chunk(thought, carry, resumed)
                    carry, resumed = [], None
                if buffering:
                    emitted.append(tail)
                    tail = ""
            if not stopped:
                pending += tail
                cut = find_stop(pending, stops) if stops and tail else None
                if cut is not None:
                    pending, stopped = pending[:cut], True
                if pending:
                    text, pending = pending, ""
                    yield text_chunk(text)
        if last is None:
            return
        result = last.result
        full = "".join(emitted)
        final = AIMessageChunk(content="", chunk_position="last")
        if buffering:
            final = self._parse_buffered(full, params)
        if stopped:
            result.finish_reason = "stop"
        if result.usage is not None and self._auto_profile and self.profile is not None:
            learn(self.profile, context_window=result.usage.context_window_size)
        notes = list(result.metadata.get("resumes", []))
        if stream_usage:
            usage = usage_metadata(result, last.chunks_received)
            # A continuation is a new request: the host counts only its own tokens.
            before = [n["offset"] for n in notes if n.get("mode") == "continuation"]
            if before and (result.usage is not None or result.tokens_used):
                usage["output_tokens"] += before[-1]
                usage["total_tokens"] += before[-1]
            final.usage_metadata = usage
        final.response_metadata = self._response_metadata(result)
        if carry:
            final.response_metadata[CHECKPOINTS_METADATA_KEY] = carry
        if notes:
            final.response_metadata["fabstir_resumes"] = notes
        yield ChatGenerationChunk(message=final, generation_info=generation_info(result))

    def _parse_buffered(self, text: str, params: dict[str, Any]) -> AIMessageChunk:
        if not params["tools"]:
            return AIMessageChunk(content=text, chunk_position="last")
        thought = ""
        if params["reasoning"] is None:
            # The text as the model wrote it, but the calls are read from the answer
            # only: a think block in front of it stays in the content, unparsed.
            answer = split_reasoning(text)[1]
            thought, text = text[: len(text) - len(answer)], answer
        final = self._parse_answer(text, params)
        if thought:
            final.content = thought + str(final.content)
        return final

    def _parse_answer(self, text: str, params: dict[str, Any]) -> AIMessageChunk:
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
        invalid: list[dict[str, Any]] = []
        forced = forced_tool_names(params["tools"], params["tool_choice"])
        if forced is not None:
            # Only the prompt-based path can get here without a call: a constrained host
            # always produces one. tool_choice is a promise: say that it was broken.
            schemas = {name: schema for name, schema in schemas.items() if name in forced}
            if not calls:
                invalid.append(
                    {
                        "name": None,
                        "args": content,
                        "id": None,
                        "error": f"tool_choice required a call of {', '.join(forced)}; "
                        "the model answered in text",
                        "type": "invalid_tool_call",
                    }
                )
        for i, call in enumerate(calls):
            call_id = f"call_{uuid.uuid4().hex[:24]}"
            problems = (
                [
                    "unknown tool"
                    if forced is None
                    else f"not a tool tool_choice allows ({', '.join(forced)})"
                ]
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
        final = AIMessageChunk(content=content, chunk_position="last", tool_call_chunks=chunks)
        # Set after construction: core rebuilds ``invalid_tool_calls`` from the chunks
        # when there are any, which would drop calls refused next to valid ones.
        final.invalid_tool_calls = [*invalid, *final.invalid_tool_calls]  # type: ignore[list-item]
        return final

    def _response_metadata(self, result: StreamResult) -> dict[str, Any]:
        return {
            "model_name": result.model or self.model or "default",
            "model_provider": "fabstir",
            "finish_reason": result.finish_reason,
            "host_url": result.host_url,
            "session_id": result.session_id,
            "request_id": result.request_id,
            **({"vlm_tokens": result.vlm_tokens} if result.vlm_tokens else {}),
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
        stream_usage = kwargs.pop("stream_usage", None)
        return self._chunks(messages, stop, stream_usage=self._stream_usage(stream_usage), **kwargs)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        stream_usage = self._stream_usage(kwargs.pop("stream_usage", None))
        yield from iterate_sync(self._chunks(messages, stop, stream_usage=stream_usage, **kwargs))

    def _stream_usage(self, per_call: bool | None) -> bool:
        if per_call is not None and not isinstance(per_call, bool):
            raise ValueError(f"stream_usage must be True or False, got {per_call!r}")
        return self.stream_usage if per_call is None else per_call

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
        kwargs.pop("stream_usage", None)  # an answer that is not streamed always has usage
        invalid: list[Any] = []
        async with contextlib.aclosing(self._chunks(messages, stop, dispatch, **kwargs)) as chunks:
            async for chunk in chunks:
                merged = chunk if merged is None else merged + chunk
                invalid = getattr(chunk.message, "invalid_tool_calls", None) or invalid
        result = to_result(merged)
        message = result.generations[0].message
        if invalid and isinstance(message, AIMessage):
            # Merging chunks rebuilds invalid calls from tool-call chunks only.
            message.invalid_tool_calls = invalid
        return result

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
        parallel_tool_calls: bool | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (functions, pydantic models, ``BaseTool``, OpenAI dicts).

        Args:
            tools: the tools the model may call.
            tool_choice: ``"auto"``/``None`` (the model decides), ``"any"``/
                ``"required"``/``True`` (some tool), a tool name or
                ``{"type": "function", "function": {"name": ...}}`` (that tool), or
                ``"none"`` (no tool: the tools are not sent).
            parallel_tool_calls: ``True``: several calls in one answer; ``False`` or
                ``None`` (default): at most one.
            strict: ``True``: arguments must match each tool's JSON schema exactly.
                Honoured on hosts that announce ``tools`` (grammar-constrained
                decoding); refused with ``InvalidRequestError`` (``INVALID_REQUEST``)
                on other hosts, where the client can check only required keys and
                top-level types. ``False``/``None``: no such promise is asked for.

        See "Tool calling" in the class docstring for what each option does on each path.
        Invalid values raise ``ValueError`` here, before any request.
        """
        for name, value in (("parallel_tool_calls", parallel_tool_calls), ("strict", strict)):
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"{name} must be True, False or None, got {value!r}")
        specs = [convert_to_openai_tool(t) for t in tools]
        if tool_choice == "none":
            return self.bind(**kwargs)
        forced_tool_names(specs, tool_choice)  # validates the choice early
        if parallel_tool_calls is not None:
            kwargs["parallel_tool_calls"] = parallel_tool_calls
        if strict is not None:
            kwargs["strict"] = strict
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
                parser = BoundedPydanticOutputParser(pydantic_object=schema)
            else:
                parser = BoundedJsonOutputParser()
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


def _thought_chunk(
    text: str, proofs: list[dict[str, Any]], resumed: dict[str, Any] | None
) -> ChatGenerationChunk:
    """A chunk of the model's reasoning (``additional_kwargs["reasoning_content"]``, which
    LangChain shows as a ``reasoning`` content block); it carries checkpoint proofs and a
    resume note like any first chunk after them."""
    meta: dict[str, Any] = {}
    if proofs:
        meta[CHECKPOINTS_METADATA_KEY] = proofs
    if resumed:
        meta["fabstir_resumed"] = resumed
    return ChatGenerationChunk(
        message=AIMessageChunk(
            content="", additional_kwargs={"reasoning_content": text}, response_metadata=meta
        )
    )


async def _dispatch_to_parent_run(proof: dict[str, Any]) -> None:
    """A ``fabstir_checkpoint`` custom event for the enclosing run (a chain or graph
    node); a bare ``astream()`` has none, and the chunk metadata is the channel then."""
    with contextlib.suppress(RuntimeError):
        await adispatch_custom_event(CHECKPOINT_EVENT, proof)


# Fields ChatFabstir inherits from LangChain carry no description of their own: give them
# one, so ``ChatFabstir.model_fields`` and IDEs describe every field (the model's own
# fields take theirs from their docstrings, ``use_attribute_docstrings``).
_INHERITED_FIELD_DESCRIPTIONS = {
    "name": "Name of this model in traces (LangChain's; default: the class name).",
    "cache": "LangChain's response cache: True for the global cache, False for none, or a "
    "BaseCache (None: the global cache when one is set).",
    "verbose": "Whether LangChain prints the text of each run (default: its global setting).",
    "callbacks": "Callback handlers run for every call of this model (LangChain's).",
    "tags": "Tags added to the trace of every call (LangChain's).",
    "metadata": "Metadata added to the trace of every call (LangChain's).",
    "custom_get_token_ids": "A function that splits text into token ids for "
    "get_num_tokens (LangChain's; default: a GPT-2 tokenizer).",
    "rate_limiter": "A LangChain rate limiter, consulted once per request (invoke, stream, "
    "each batch item).",
    "disable_streaming": "True: stream yields one chunk, the whole answer; "
    '"tool_calling": only when tools are bound (LangChain\'s).',
    "output_version": 'Format of the content of the AIMessage LangChain writes ("v0" or '
    '"v1"; default from LC_OUTPUT_VERSION).',
    "profile": "What the model can do (a ModelProfile), filled from what the host "
    "announces; a profile you pass is never changed.",
}
for _name, _description in _INHERITED_FIELD_DESCRIPTIONS.items():
    _field = ChatFabstir.model_fields.get(_name)
    if _field is not None and not _field.description:
        _field.description = _description
ChatFabstir.model_rebuild(force=True)

"""The conversation reaches the model the way deployed nodes read it (issue 21).

Against the node-faithful reference host (the default: encrypted sessions keep history
per session id and ignore ``conversation_context`` in the ciphertext), against the
lenient host (``lenient=True``, the ``encrypted_context`` extension announced), and in
plaintext mode, each test reads what the model saw (``ReferenceHost.model_inputs``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.tools import tool
from pydantic import BaseModel

from langchain_fabstir.chat_models import ChatFabstir
from langchain_fabstir.host import EchoEngine, LlamaEngine, ReferenceHost
from langchain_fabstir.host.engines import Engine
from langchain_fabstir.sessions import SessionConfig, SessionManager

HOST_KEY = "0x" + "5a" * 32
OTHER_KEY = "0x" + "7c" * 32
MODES = ["node", "lenient", "plaintext"]


class Host(ReferenceHost):
    """A reference host that can hide its extensions (``features=``)."""

    def __init__(self, engine: Engine, *, features: list[str] | None = None, **kw: Any) -> None:
        kw.setdefault("rate_limit_per_minute", None)
        super().__init__(engine, **kw)
        self._features = features

    def features(self) -> list[str]:
        return super().features() if self._features is None else list(self._features)


def make_host(mode: str, engine: Engine | None = None, key: str = HOST_KEY, **kw: Any) -> Host:
    engine = engine or EchoEngine()
    if mode == "plaintext":
        return Host(engine, **kw)
    return Host(engine, host_key=key, lenient=mode == "lenient", **kw)


@pytest.fixture(params=MODES)
async def host(request: pytest.FixtureRequest) -> AsyncIterator[Host]:
    async with make_host(request.param) as h:
        yield h


def seen(host: ReferenceHost) -> str:
    """All the model saw for the latest request, as one text."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in host.model_inputs[-1])


def encrypted(host: ReferenceHost) -> bool:
    return host.host_public_key is not None


async def test_the_system_prompt_reaches_the_model_on_every_turn(host: Host) -> None:
    async with SessionManager(host_url=host.url) as manager:
        session = await manager.create_session(system_prompt="Answer in French (zz-sys).")
        assert session.encrypted is encrypted(host)
        for i in range(7):  # past the node's window of 5 exchanges
            await manager.prompt(session.id, f"question zz-{i}")
            assert "zz-sys" in seen(host), i
            assert f"question zz-{i}" in seen(host)
            if i:
                assert f"question zz-{i - 1}" in seen(host)  # the conversation goes on
        if host.host_public_key is not None and not host.lenient:
            # A node has no system role in encrypted mode: user and assistant turns only.
            assert {m["role"] for m in host.model_inputs[-1]} == {"user", "assistant"}


async def test_a_langchain_history_reaches_the_model(host: Host) -> None:
    llm = ChatFabstir(host_url=host.url)
    history = [
        SystemMessage("zz-sys: be terse"),
        HumanMessage("zz-h1 my name is Ada"),
        AIMessage("zz-a1 hello Ada"),
        HumanMessage("zz-h2 what is my name?"),
    ]
    await llm.ainvoke(history)
    for word in ("zz-sys", "zz-h1", "zz-a1", "zz-h2"):
        assert word in seen(host), word


async def test_two_unrelated_calls_see_nothing_of_each_other(host: Host) -> None:
    llm = ChatFabstir(host_url=host.url)
    await llm.ainvoke("zz-secret-of-alice")
    await llm.ainvoke([SystemMessage("zz-sys"), HumanMessage("zz-bob asks")])
    assert "zz-bob asks" in seen(host) and "zz-sys" in seen(host)
    assert "zz-secret-of-alice" not in seen(host)
    await llm.ainvoke("zz-carol asks")
    assert "zz-bob" not in seen(host) and "zz-secret-of-alice" not in seen(host)


async def test_a_continued_conversation_of_chat_fabstir_keeps_its_turns(host: Host) -> None:
    llm = ChatFabstir(host_url=host.url)
    messages: list[Any] = [SystemMessage("zz-sys"), HumanMessage("zz-one")]
    for word in ("zz-two", "zz-three"):
        messages += [await llm.ainvoke(messages), HumanMessage(word)]
    await llm.ainvoke(messages)
    for word in ("zz-sys", "zz-one", "zz-two", "zz-three"):
        assert word in seen(host), word


@pytest.mark.parametrize("mode", ["node", "lenient"])
async def test_after_a_failover_the_new_host_sees_the_conversation(mode: str) -> None:
    async with (
        make_host(mode, EchoEngine(delay=0.02)) as first,
        make_host(mode, EchoEngine(delay=0.02), key=OTHER_KEY) as second,
    ):
        config = SessionConfig(reconnect_attempts=3, encryption="required")
        async with SessionManager(config, hosts=[first.url, second.url]) as manager:
            session = await manager.create_session(policy="auto", system_prompt="zz-sys")
            await manager.prompt(session.id, "zz-one")
            failed, other = (first, second) if session.host_url == first.url else (second, first)
            text = ""
            async for piece in manager.stream_prompt(session.id, "zz-two"):
                if not text:
                    await failed.stop()  # the host dies mid-answer
                text += piece
            assert session.host_url == other.url
            assert "zz-one" in seen(other) and "zz-sys" in seen(other)
            await manager.prompt(session.id, "zz-three")
            for word in ("zz-sys", "zz-one", "zz-two", "zz-three"):
                assert word in seen(other), word


async def test_a_new_socket_to_the_same_node_continues_its_node_session() -> None:
    """A node keeps a session id's history across sockets: the client goes on with the
    node session it had (no re-send of the conversation), and the model sees the turns."""
    async with make_host("node") as host, SessionManager(host_url=host.url) as manager:
        session = await manager.create_session()
        await manager.prompt(session.id, "zz-one")
        state = manager._state(session.id)
        await manager._connector.drop(state)
        await manager.prompt(session.id, "zz-two")
        roles = [(m["role"], m["content"]) for m in host.model_inputs[-1]]
        assert roles == [("user", "zz-one"), ("assistant", "Echo: zz-one"), ("user", "zz-two")]


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}"


class Joke(BaseModel):
    setup: str
    punchline: str


@pytest.mark.parametrize("mode", MODES)
async def test_prompt_based_tools_and_structured_output_reach_the_model(mode: str) -> None:
    """A host without the tools/response_format extensions: the instructions are system
    messages, and they reach the model on a node too (inside the prompt)."""
    envelope = '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}'
    keyed = ["encryption"] if mode != "plaintext" else []
    extra = ["encrypted_context"] if mode == "lenient" else []
    async with make_host(mode, EchoEngine([envelope]), features=keyed + extra) as host:
        llm = ChatFabstir(host_url=host.url).bind_tools([get_weather], tool_choice="any")
        msg = await llm.ainvoke("Oslo weather?")
        assert [c["args"] for c in msg.tool_calls] == [{"city": "Oslo"}]
        assert "get_weather" in seen(host) and "You must call a tool." in seen(host)
    joke = '{"setup": "s", "punchline": "p"}'
    async with make_host(mode, EchoEngine([joke]), features=keyed + extra) as host:
        out = await ChatFabstir(host_url=host.url).with_structured_output(Joke).ainvoke("Joke")
        assert isinstance(out, Joke)
        assert "Reply with one JSON object" in seen(host) and '"punchline"' in seen(host)


@pytest.mark.llama
@pytest.mark.parametrize("mode", ["node", "lenient"])
async def test_real_model_tools_and_structured_output_encrypted(
    llama_engine: LlamaEngine, mode: str
) -> None:
    async with make_host(mode, llama_engine) as host:
        llm = ChatFabstir(host_url=host.url, temperature=0.0, max_tokens=60)
        msg = await llm.bind_tools([get_weather], tool_choice="any").ainvoke(
            [SystemMessage("You are a weather bot."), HumanMessage("Weather in Paris?")]
        )
        assert len(msg.tool_calls) == 1 and msg.tool_calls[0]["name"] == "get_weather"
        assert "You are a weather bot." in seen(host)
        joke = await llm.with_structured_output(Joke).ainvoke("Tell a joke about cats.")
        assert isinstance(joke, Joke)
        assert host.requests[-1].response_format is not None


@pytest.mark.parametrize("mode", MODES)
async def test_a_long_history_keeps_its_system_message_within_the_window(mode: str) -> None:
    """Plaintext: the node reads the last 10 context messages, system ones count; the
    client sends the system message, then the newest others. Encrypted: the same
    conversation, inlined for a fresh node session."""
    async with make_host(mode) as host:
        history: list[Any] = [SystemMessage("zz-sys")]
        for i in range(8):
            history += [HumanMessage(f"zz-q{i}"), AIMessage(f"zz-a{i}")]
        await ChatFabstir(host_url=host.url).ainvoke([*history, HumanMessage("zz-last")])
        assert "zz-sys" in seen(host) and "zz-last" in seen(host) and "zz-a7" in seen(host)
        if mode == "plaintext":
            context = host.requests[-1].conversation_context
            assert len(context) == 10 and context[0].role == "system"


async def test_an_unknown_model_is_refused_unless_the_fallback_is_allowed() -> None:
    from langchain_core.exceptions import ModelNotFoundError

    from langchain_fabstir.errors import ModelNotAvailableError

    async with make_host("node") as host:
        with pytest.raises(ModelNotFoundError) as caught:
            await ChatFabstir(host_url=host.url, model="no-such-model").ainvoke("hi")
        assert isinstance(caught.value, ModelNotAvailableError)
        assert "no-such-model" in str(caught.value) and "'echo'" in str(caught.value)
        assert not host.model_inputs  # nothing was sent
        lenient = ChatFabstir(
            host_url=host.url,
            model="no-such-model",
            session_config=SessionConfig(allow_model_fallback=True),
        )
        msg = await lenient.ainvoke("hi")
        assert msg.response_metadata["model_name"] == "echo"  # what served
        async with SessionManager(host_url=host.url) as manager:
            with pytest.raises(ModelNotAvailableError):  # refused when it connects
                await manager.create_session(model="nope")
            assert not manager.sessions
            later = await manager.create_session(model="nope", connect=False)
            with pytest.raises(ModelNotAvailableError):  # or at the first prompt
                await manager.prompt(later.id, "hi")
        async with SessionManager(
            host_url=host.url, config=SessionConfig(allow_model_fallback=True)
        ) as manager:
            session = await manager.create_session(model="nope")
            assert session.model == "echo"  # what serves, before any prompt


async def test_the_reference_host_serves_v1_health() -> None:
    import httpx

    async with make_host("node") as host, httpx.AsyncClient() as client:
        for path in ("/health", "/v1/health"):
            reply = await client.get(host.url + path)
            assert reply.status_code == 200 and reply.json()["status"] == "healthy"

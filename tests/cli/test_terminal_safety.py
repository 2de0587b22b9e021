"""A hostile host cannot drive the user's terminal: ``fabstir chat`` (in a pseudo-terminal)
and ``fabstir hosts`` print a host's answers, errors and model names without a control
character (no OSC 52 clipboard write, no window title, no screen clear, no ``ESC[6n`` the
terminal would answer into stdin, no carriage return forging the status line)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from langchain_fabstir.host import EchoEngine, EngineError, ReferenceHost
from langchain_fabstir.host.engines import EngineRequest, Generation
from tests.cli.conftest import Terminal, child_env, run_cli
from tests.conftest import ThreadedHost

EVIL_TOKENS = [
    "Sure ",
    "\x1b]52;c;cm0gLXJmIH4K\x07",  # OSC 52: write the clipboard
    "\x1b]0;pwned-title\x07",  # OSC 0: the window title
    "\x1b[2J",  # clear the screen
    "\x1b[6n",  # ask the terminal for the cursor: it answers into stdin
    "\x1b",  # a sequence split across tokens...
    "[31mred ",  # ...ends in the next one
    "\x9b2J",  # C1 CSI
    "\r[0 in, 0 out, 0.0 tok/s, 0 checkpoints, encrypted, FORGED] ",  # overwrite the line
    "\x08\x07\x7fdone",
]
EVIL_MODEL = "evil\x1b]0;model-title\x07\x1b[2J-model"
EVIL_ERROR = "engine broke \x1b]52;c;ZXZpbA==\x07\x1b[2J\rFORGED-ERROR"
OURS = re.compile(r"\x1b\[(?:2|0)m")  # the CLI's own dimming (status lines), nothing else


class HostileEngine(EchoEngine):
    """Answers with escape sequences; a prompt containing ``fail`` gets an engine error
    whose text carries them."""

    def generate(self, request: EngineRequest) -> Generation:
        gen = super().generate(request)
        if "fail" in (request.messages[-1].get("content") or ""):

            async def refuse() -> None:
                raise EngineError(EVIL_ERROR)

            gen.opener = refuse
        return gen


@pytest.fixture
def hostile_host() -> Iterator[ThreadedHost]:
    engine = HostileEngine(script=EVIL_TOKENS, model_id=EVIL_MODEL)
    threaded = ThreadedHost(ReferenceHost(engine, rate_limit_per_minute=None))
    yield threaded
    threaded.stop()


def _controls(text: str) -> list[str]:
    """Control characters left in ``text`` besides newline, tab and the pty's CR before LF."""
    text = OURS.sub("", text).replace("\r\n", "\n")
    return [c for c in text if (ord(c) < 32 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F]


def test_chat_prints_no_control_characters_from_a_hostile_host(
    hostile_host: ThreadedHost,
) -> None:
    term = Terminal(["chat", "--host-url", hostile_host.host.url], child_env())
    seen: list[str] = []
    try:
        seen.append(term.expect("you> "))
        assert "evil]0;model-title[2J-model" in seen[-1]  # the greeting's model name, defanged
        term.send(b"hello\r")
        seen.append(term.expect("you> ", timeout=30))
        answer = seen[-1]
        assert "Sure ]52;c;cm0gLXJmIH4K]0;pwned-title[2J[6n[31mred 2J" in answer
        assert "FORGED] done" in answer
        term.send(b"please fail\r")
        seen.append(term.expect("you> ", timeout=30))
        assert "engine broke ]52;c;ZXZpbA==[2JFORGED-ERROR" in seen[-1]
        term.send(b"/history\r")
        seen.append(term.expect("you> ", timeout=30))
        term.send(b"\x04")
        seen.append(term.expect("ended:", timeout=30))
        assert term.wait() == 0
        seen.append(term.seen.decode("utf-8", "replace"))
    finally:
        term.close()
    out = "".join(seen)
    assert not _controls(out), sorted(set(_controls(out)))


def test_hosts_table_prints_no_control_characters_from_model_names(
    hostile_host: ThreadedHost,
) -> None:
    done = run_cli("hosts", "--host", hostile_host.host.url)
    assert done.returncode == 0, done.stderr
    assert "evil]0;model-title[2J-model" in done.stdout
    assert not _controls(done.stdout + done.stderr)

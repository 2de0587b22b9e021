"""``fabstir chat`` as a person uses it: in a terminal, and piped."""

from __future__ import annotations

import io
import json
import re
import shlex
from pathlib import Path

from tests.cli.conftest import Terminal, child_env, run_cli, wait_event
from tests.conftest import ThreadedHost
from tests.storage.conftest import ThreadedPortal

LONG = " ".join(f"w{i}" for i in range(400))  # echoed at 50 ms a word: 20 s


def test_ctrl_c_stops_the_answer_then_the_chat_goes_on_and_ctrl_d_ends_it(
    slow_host: ThreadedHost,
) -> None:
    host = slow_host.host
    term = Terminal(["chat", "--host-url", host.url, "--max-tokens", "1000"], child_env())
    try:
        term.expect("you> ")
        term.send(LONG.encode() + b"\r")
        term.expect("Echo: w0 w1 ")  # the answer is streaming (not the typed echo)
        term.send(b"\x03")  # Ctrl-C, through the terminal's line discipline
        assert wait_event(slow_host, host.cancel_seen), "the host never got stream_cancel"
        assert host.received_cancels == 1
        out = term.expect("you> ", timeout=30)  # back at the prompt, the session alive
        assert "[stopped]" in out
        assert "w399" not in out
        # no final counts from the host: the pieces received, not "0 out"
        assert re.search(r"\[- in, ~[1-9]\d* out, .*not encrypted, http://127\.0\.0\.1", out)

        term.send(b"second question\r")
        out = term.expect("you> ", timeout=30)
        assert "Echo: second question" in out
        assert re.search(r"\[\d+ in, 3 out, [\d.]+ tok/s, 0 checkpoints", out)

        term.send(b"\x04")  # Ctrl-D at the prompt: the end, with the summary
        out = term.expect("ended:", timeout=30)
        assert term.wait() == 0
        assert "Traceback" not in term.seen.decode(errors="replace")
        # the host answered two prompts, the first one cut short
        assert [r.prompt for r in host.requests] == [LONG, "second question"]
    finally:
        term.close()


def test_ctrl_c_at_the_prompt_ends_the_session(slow_host: ThreadedHost) -> None:
    term = Terminal(["chat", "--host-url", slow_host.host.url], child_env())
    try:
        term.expect("you> ")
        term.send(b"\x03")
        term.expect("ended: 0 tokens", timeout=30)
        assert term.wait() == 0
    finally:
        term.close()


def test_piped_chat_is_plain_text_and_runs_commands(
    slow_host: ThreadedHost, tmp_path: Path
) -> None:
    system = tmp_path / "system.txt"
    system.write_text("Answer in one word.")
    saved = tmp_path / "chat.json"
    result = run_cli(
        "chat",
        "--host-url",
        slow_host.host.url,
        "--system",
        f"@{system}",
        "--temperature",
        "0.2",
        "--model",
        "echo",
        stdin=f"hello there\n/history\n/checkpoint\n/save {saved}\n/bogus\n",
        env=child_env(),
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "\x1b" not in out and "you>" not in out  # no colours, no prompt
    assert "Echo: hello there" in out
    assert "system: Answer in one word." in out  # /history
    assert "user: hello there" in out
    assert re.search(r"checkpoint 1: \d+ tokens, hash 0x[0-9a-f]{64}", out)
    assert f"saved to {saved}" in out and saved.stat().st_mode & 0o777 == 0o600
    export = json.loads(saved.read_text())
    assert export["session"]["model"] == "echo"
    assert "chain_id" not in export["session"]  # no chain configured: none recorded
    assert "unknown command /bogus" in out
    assert "ended:" in out
    request = slow_host.host.requests[-1]
    assert request.temperature == 0.2 and request.model == "echo"


def test_a_conversation_kept_on_s5_is_resumed(
    slow_host: ThreadedHost, portal: ThreadedPortal, keys_dir: Path
) -> None:
    s5 = ["--portal-url", portal.url, "--seed-file", str(keys_dir / "s5.seed")]
    s5 += ["--key-file", str(keys_dir / "eth.key")]
    first = run_cli("chat", "--host-url", slow_host.host.url, *s5, stdin="remember apples\n")
    assert first.returncode == 0, first.stderr
    found = re.search(r"--resume (\w+)", first.stdout)
    assert found, first.stdout
    second = run_cli(
        "chat",
        "--host-url",
        slow_host.host.url,
        *s5,
        "--resume",
        found.group(1),
        stdin="/history\nand pears\n",
    )
    assert second.returncode == 0, second.stderr
    assert f"session {found.group(1)} resumed" in second.stdout
    assert "user: remember apples" in second.stdout
    assert "assistant: Echo: remember apples" in second.stdout
    # the resumed conversation went to the host as context of the next prompt
    context = [m.content for m in slow_host.host.requests[-1].conversation_context]
    assert "remember apples" in context


def test_the_printed_resume_command_resumes_as_printed(
    slow_host: ThreadedHost, portal: ThreadedPortal, keys_dir: Path
) -> None:
    """The closing hint is a whole command (host, portal, seed and key files), no secret."""
    s5 = ["--portal-url", portal.url, "--seed-file", str(keys_dir / "s5.seed")]
    s5 += ["--key-file", str(keys_dir / "eth.key")]
    first = run_cli("chat", "--host-url", slow_host.host.url, *s5, stdin="remember apples\n")
    assert first.returncode == 0, first.stderr
    found = re.search(r"resume with: (fabstir chat .*)$", first.stdout, re.MULTILINE)
    assert found, first.stdout
    printed = found.group(1)
    for secret in ("s5.seed", "eth.key"):
        assert (keys_dir / secret).read_text().strip() not in printed
    words = shlex.split(printed)
    assert words[:2] == ["fabstir", "chat"]
    second = run_cli(*words[1:], stdin="/history\n")
    assert second.returncode == 0, second.stderr
    assert "resumed" in second.stdout
    assert "assistant: Echo: remember apples" in second.stdout


def test_an_overlong_input_line_is_dropped_whole(slow_host: ThreadedHost) -> None:
    """Memory stays bounded: a line over 1 MiB is refused, none of it sent as a prompt."""
    result = run_cli(
        "chat", "--host-url", slow_host.host.url, stdin="x" * (1100 * 1024) + "\nshort\n"
    )
    assert result.returncode == 0, result.stderr
    assert "input line too long, ignored" in result.stderr
    assert [r.prompt for r in slow_host.host.requests] == ["short"]


def test_counts_are_singular_for_one() -> None:
    from langchain_fabstir.cli.chat import _count

    assert [_count(n, "checkpoint") for n in (0, 1, 2)] == [
        "0 checkpoints",
        "1 checkpoint",
        "2 checkpoints",
    ]


def test_encrypted_against_a_keyless_host_names_the_cli_flags(slow_host: ThreadedHost) -> None:
    done = run_cli("chat", "--host-url", slow_host.host.url, "--encrypted", stdin="hello\n")
    assert "Traceback" not in done.stderr
    assert "ENCRYPTION_UNAVAILABLE" in done.stderr, done.stderr
    assert "create_session" not in done.stderr and "host_public_key" not in done.stderr
    assert "--host-key-file" in done.stderr and "--encrypted" in done.stderr
    assert not slow_host.host.requests  # no prompt was sent


def test_the_banner_names_the_model_that_serves(slow_host: ThreadedHost) -> None:
    url = slow_host.host.url
    unknown = run_cli("chat", "--host-url", url, "--model", "no-such-model", stdin="hi\n")
    assert unknown.returncode != 0
    assert "MODEL_NOT_AVAILABLE" in unknown.stderr and "'echo'" in unknown.stderr
    assert "Traceback" not in unknown.stderr and "no-such-model" not in unknown.stdout
    default = run_cli("chat", "--host-url", url, stdin="hi\n")
    assert default.returncode == 0, default.stderr
    assert "(model echo," in default.stdout  # the host's default, by its name


def test_tokens_per_second_count_from_the_first_token() -> None:
    """The wait for the first token (the host reading the prompt) is not the host's speed:
    21 tokens streamed in 0.2 s after a 5 s wait are 100 tok/s, not 4."""
    import argparse

    from langchain_fabstir.cli.chat import _Chat
    from langchain_fabstir.sessions import Session, StreamResult

    chat = _Chat(argparse.Namespace(), manager=None, out=io.StringIO())
    chat.session = Session(id="s", host_url="http://127.0.0.1:1", model="m", checkpoint_count=1)
    result = StreamResult(text="x", tokens_used=21)
    line = chat.status(result, first=105.0, end=105.2, pieces=21)
    assert line.startswith("[- in, 21 out, 100.0 tok/s, 1 checkpoint, not encrypted, "), line
    # one token has no rate; a stopped answer counts the pieces received
    assert "- tok/s" in chat.status(StreamResult(tokens_used=1), 1.0, 2.0, 1)
    assert "~5 out, 20.0 tok/s" in chat.status(None, 1.0, 1.2, 5)

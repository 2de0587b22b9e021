"""The ``fabstir`` command: ``host``, ``portal``, ``chat`` and ``demo``.

    fabstir host --engine llama --port 8080        # a reference host with SmolLM2
    fabstir host --engine echo --delay 0.01        # a deterministic test host
    fabstir chat --host-url http://127.0.0.1:8080  # talk to a host from the terminal
    fabstir demo                                   # host + examples/quickstart.py

``fabstir host --port 0`` picks a free port and prints ``READY <url>`` on stdout once it
listens, so scripts (and ``fabstir demo``) can start it and read where it is.
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

__all__ = ["main", "start_host_process"]


def _engine(args: argparse.Namespace) -> object:
    from langchain_fabstir.host import EchoEngine, LlamaEngine

    if args.engine == "echo":
        script = args.script.split("|") if args.script else None
        return EchoEngine(script, delay=args.delay, fill=args.fill)
    return LlamaEngine(args.model, n_ctx=args.ctx, seed=args.seed, threads=args.threads)


async def _serve_host(args: argparse.Namespace) -> None:
    from langchain_fabstir.host import ReferenceHost

    engine = _engine(args)
    host = ReferenceHost(
        engine,  # type: ignore[arg-type]
        host=args.bind,
        port=args.port,
        rate_limit_per_minute=args.rate_limit or None,
    )
    await host.start()
    print(f"READY {host.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await host.stop()


def start_host_process(
    *extra: str, python: str = sys.executable, timeout: float = 60.0
) -> tuple[subprocess.Popen[str], str]:
    """Start ``fabstir host --port 0 ...`` as a child process; return it and its URL."""
    proc = subprocess.Popen(
        [python, "-m", "langchain_fabstir.cli", "host", "--port", "0", *extra],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout):
        proc.kill()
        raise RuntimeError(f"host did not start within {timeout}s")
    line = proc.stdout.readline().strip()
    if not line.startswith("READY "):
        proc.kill()
        raise RuntimeError(f"host failed to start: {line!r}")
    return proc, line.split(" ", 1)[1]


async def _chat(args: argparse.Namespace) -> None:
    from langchain_fabstir import SessionManager

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
    root = Path(__file__).resolve().parent.parent
    example = root / "examples" / "quickstart.py"
    extra = ["--engine", args.engine]
    print(f"Starting the reference host ({args.engine} engine) on 127.0.0.1 ...", flush=True)
    proc, url = start_host_process(*extra)
    try:
        env = dict(os.environ, FABSTIR_HOST_URL=url)
        return subprocess.call([sys.executable, str(example)], env=env)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fabstir", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    host = sub.add_parser("host", help="run a reference host (/v1/ws + HTTP endpoints)")
    host.add_argument("--engine", choices=["llama", "echo"], default="llama")
    host.add_argument("--model", help="a GGUF file (default: SmolLM2-135M-Instruct)")
    host.add_argument("--bind", default="127.0.0.1", help="address to listen on")
    host.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    host.add_argument("--ctx", type=int, default=8192, help="context window (llama)")
    host.add_argument("--seed", type=int, default=42, help="sampling seed (llama)")
    host.add_argument("--threads", type=int, default=2, help="CPU threads (llama)")
    host.add_argument("--rate-limit", type=int, default=100, help="prompts/minute; 0 = off")
    host.add_argument("--script", help="echo: tokens separated by |")
    host.add_argument("--fill", action="store_true", help="echo: repeat script to max_tokens")
    host.add_argument("--delay", type=float, default=0.0, help="echo: seconds per token")

    chat = sub.add_parser("chat", help="chat with a host from the terminal")
    chat.add_argument("--host-url", default=os.environ.get("FABSTIR_HOST_URL"))
    chat.add_argument("--system", default="You are a helpful assistant.")

    demo = sub.add_parser("demo", help="start a local host and run examples/quickstart.py")
    demo.add_argument("--engine", choices=["llama", "echo"], default="llama")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "host":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve_host(args))
        return 0
    if args.command == "chat":
        if not args.host_url:
            parser.error("--host-url (or FABSTIR_HOST_URL) is required")
        asyncio.run(_chat(args))
        return 0
    return _demo(args)


if __name__ == "__main__":
    sys.exit(main())

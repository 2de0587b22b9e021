"""``fabstir jobs``: the session jobs you paid for, on chain.

    fabstir jobs show 42 --chain-config chain.json          # where job 42 stands
    fabstir jobs watch 42 --max-wait 600 --key-file eth.key # until it is settled
    fabstir jobs withdraw --payment-token USDC --key-file eth.key
    fabstir jobs audit 42 --portal http://127.0.0.1:5522      # check its proofs on S5

``show`` reads a job: its state (active, completed, timed out), host, deposit, price, the
tokens the host proved, what they cost, the refund, and the deadline after which you may
settle it yourself. ``watch`` polls the job until it is settled; once the chain's clock
passes the deadline and the host has not settled, it settles the job with your key
(completes it, or times it out). ``withdraw`` moves the refunds credited to your deposit
balance in the contract back to your wallet. ``audit`` reads every proof the host submitted
for the job, fetches the proof bytes and the checkpoint delta each names from an S5 portal
and checks them (SHA-256 of the bytes against the on-chain ``proofHash``, the delta's host
signature and place in the chain, the tokens claimed against the settlement); it exits 1
when a proof is suspect (an encrypted session's deltas stay sealed: no key here). The chain
is named as for ``fabstir chat``: ``--chain-config PATH`` (or ``FABSTIR_CHAIN_CONFIG``) or
``--network base-sepolia``, with ``--rpc-url`` (or ``FABSTIR_RPC_URL``); your key comes from
``--key-file`` or ``FABSTIR_PRIVATE_KEY``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from langchain_fabstir.cli._common import (
    add_chain_options,
    chain_config,
    help_text,
    money,
    read_host_key,
    terminal_text,
    user_key,
)

if TYPE_CHECKING:
    from pydantic import SecretStr

    from langchain_fabstir.chain import ChainClient, SessionJob, Settlement

__all__ = ["add_jobs_parser", "job_view"]


def _job_id(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a job id (a number)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a job id (a number >= 0)")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a number of seconds > 0")
    return value


async def _token(client: ChainClient, job: SessionJob) -> tuple[str, int]:
    """The job's token name and decimals."""
    from langchain_fabstir.chain.marketplace import token_decimals

    if job.token == "ETH":
        return "ETH", 18
    if job.payment_token.lower() == client.config.usdc.lower():
        return "USDC", await token_decimals(client, "USDC")
    decimals = await client.call(
        client.token_contract(job.payment_token).functions.decimals(), "reading token decimals"
    )
    return job.payment_token, int(decimals)


async def job_view(
    client: ChainClient, job_id: int, settled: Settlement | None = None
) -> dict[str, Any]:
    """The job as ``jobs show`` prints it: amounts in whole tokens (decimal strings) and in
    base units, state, deadline against the chain's clock."""
    from langchain_fabstir.chain.marketplace import (
        PRICE_PRECISION,
        from_base_units,
        read_job,
        settlement,
    )

    state = settled or await settlement(client, job_id)
    job = await read_job(client, job_id)
    token, decimals = await _token(client, job)
    cost = job.tokens_used * job.price_per_token // PRICE_PRECISION

    def whole(units: int) -> str:
        return money(from_base_units(units, decimals))

    return {
        "job_id": job.id,
        "state": state.state,
        "settled": state.settled,
        "settled_by": state.settled_by,
        "depositor": job.depositor,
        "host": job.host,
        "payment_token": token,
        "deposit": whole(job.deposit),
        "price_per_1k_tokens": whole(job.price_per_token),
        "tokens_used": job.tokens_used,
        "cost": whole(cost),
        "refunded_to_user": whole(job.refunded_to_user),
        "base_units": {
            "deposit": job.deposit,
            "price_per_1k_tokens": job.price_per_token,
            "cost": cost,
            "refunded_to_user": job.refunded_to_user,
        },
        "deadline": state.deadline,
        "chain_time": state.chain_time,
        "past_deadline": state.chain_time is not None and state.chain_time > state.deadline,
        "chain_id": client.config.chain_id,
    }


def _print_view(view: dict[str, Any]) -> None:
    def print(line: str) -> None:  # what the chain says is peer text too
        sys.stdout.write(terminal_text(line) + "\n")

    t = view["payment_token"]
    by = f" (by the {view['settled_by']})" if view["settled_by"] else ""
    print(f"job {view['job_id']}: {view['state']}{by}")
    print(f"  paid by     {view['depositor']}")
    print(f"  host        {view['host']}")
    print(f"  deposit     {view['deposit']} {t}")
    print(f"  price       {view['price_per_1k_tokens']} {t} per 1,000 tokens")
    print(f"  used        {view['tokens_used']} tokens = {view['cost']} {t}")
    print(f"  refunded    {view['refunded_to_user']} {t}")
    if not view["settled"]:
        when = "passed: `fabstir jobs watch` settles it" if view["past_deadline"] else "not yet"
        print(f"  deadline    {view['deadline']} (chain time {view['chain_time']}; {when})")


def _client(args: argparse.Namespace, *, key_needed: str | None) -> ChainClient:
    from langchain_fabstir.chain import ChainClient, require_web3

    config = chain_config(args, required=True)
    assert config is not None
    require_web3()
    key: SecretStr | None = (
        user_key(args, what=key_needed)
        if key_needed is not None
        else read_host_key(args.key_file, env="FABSTIR_PRIVATE_KEY")
    )
    return ChainClient(config, key)


async def jobs_show(args: argparse.Namespace) -> int:
    async with _client(args, key_needed=None) as client:
        view = await job_view(client, args.job_id)
    if args.json:
        print(json.dumps(view))
    else:
        _print_view(view)
    return 0


async def jobs_watch(args: argparse.Namespace) -> int:
    from langchain_fabstir.chain.marketplace import SettlementWatcher

    async with _client(args, key_needed="settling a late job") as client:
        watcher = SettlementWatcher(client, poll_interval=args.poll_interval)
        settled = await watcher.wait(args.job_id, max_wait=args.max_wait)
        view = await job_view(client, args.job_id, settled)
    if args.json:
        print(json.dumps(view))
    else:
        _print_view(view)
        if view["settled_by"] != "host" and view["base_units"]["refunded_to_user"]:
            print("take the refund back with: fabstir jobs withdraw")
    return 0


async def jobs_withdraw(args: argparse.Namespace) -> int:
    from langchain_fabstir.chain.marketplace import (
        from_base_units,
        token_decimals,
        withdraw_refund,
    )

    async with _client(args, key_needed="withdrawing refunds") as client:
        taken = await withdraw_refund(client, args.payment_token)
        amount = money(from_base_units(taken, await token_decimals(client, args.payment_token)))
    if args.json:
        print(json.dumps({"withdrawn": amount, "payment_token": args.payment_token}))
    elif taken:
        print(f"withdrew {amount} {args.payment_token} to {client.address}")
    else:
        print(f"no {args.payment_token} refund to withdraw (nothing was sent)")
    return 0


async def jobs_audit(args: argparse.Namespace) -> int:
    from langchain_fabstir.s5.client import S5PortalClient
    from langchain_fabstir.sessions.audit import audit_job

    async with (
        _client(args, key_needed=None) as client,
        S5PortalClient(args.portal) as portal,
    ):
        audit = await audit_job(client, args.job_id, portal, block_range=args.block_range)
    if args.json:
        print(json.dumps({**audit.model_dump(mode="json"), "clean": audit.clean}))
    else:

        def say(line: str) -> None:  # CIDs and problems come from the chain and S5
            sys.stdout.write(terminal_text(line) + "\n")

        verdict = "clean" if audit.clean else f"SUSPECT proofs {audit.suspect}"
        say(f"job {audit.job_id}: {audit.state}, {len(audit.proofs)} proof(s), {verdict}")
        say(f"  host        {audit.host}")
        say(f"  paid by     {audit.depositor}")
        settled = "not settled" if audit.tokens_settled is None else audit.tokens_settled
        say(f"  tokens      claimed {audit.tokens_claimed}, settled {settled}")
        for p in audit.proofs:
            say(f"  proof {p.index}  {p.verdict:<20} {p.tokens_claimed} tokens  {p.proof_cid}")
            for problem in p.problems:
                say(f"      {problem}")
    return 0 if audit.clean else 1


def add_jobs_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    jobs = sub.add_parser(
        "jobs",
        parents=[common],
        help="show, watch and settle your session jobs on chain; withdraw refunds",
        description=help_text(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = jobs.add_subparsers(dest="jobs_command", required=True)
    show = what.add_parser("show", parents=[common], help="where a job stands on chain")
    watch = what.add_parser(
        "watch",
        parents=[common],
        help="wait until a job is settled; past its deadline, settle it with your key",
    )
    withdraw = what.add_parser(
        "withdraw", parents=[common], help="withdraw the refunds credited to your deposit balance"
    )
    audit = what.add_parser(
        "audit",
        parents=[common],
        help="check a job's proofs on chain against their bytes and deltas on S5",
    )
    audit.add_argument(
        "--portal", required=True, metavar="URL", help="the S5 portal holding the proofs"
    )
    audit.add_argument(
        "--block-range",
        type=int,
        default=9000,
        metavar="N",
        help="blocks per log request (default 9000, what RPCs allow)",
    )
    for p in (show, watch, audit):
        p.add_argument("job_id", type=_job_id, metavar="JOB_ID", help="the session job's id")
    for p in (show, watch, withdraw, audit):
        add_chain_options(p)
        p.add_argument(
            "--key-file",
            metavar="PATH",
            help="your Ethereum key (hex; eth.key of `fabstir keys new`); "
            "FABSTIR_PRIVATE_KEY otherwise",
        )
        p.add_argument("--json", action="store_true", help="print JSON")
    watch.add_argument(
        "--max-wait",
        type=_positive,
        default=600.0,
        metavar="S",
        help="give up after this many seconds (exit 1, RESPONSE_TIMEOUT; default 600)",
    )
    watch.add_argument(
        "--poll-interval",
        type=_positive,
        default=15.0,
        metavar="S",
        help="seconds between two looks at the job (default 15)",
    )
    withdraw.add_argument(
        "--payment-token",
        choices=["ETH", "USDC"],
        default="ETH",
        help="which balance to withdraw (ETH)",
    )
    show.set_defaults(run_async=jobs_show)
    watch.set_defaults(run_async=jobs_watch)
    withdraw.set_defaults(run_async=jobs_withdraw)
    audit.set_defaults(run_async=jobs_audit)

"""The client's view of the Fabstir contracts: ABIs for exactly what this package calls.

Written from the function and event signatures of the deployed contracts (NodeRegistry,
ModelRegistry, JobMarketplace, an ERC-20 for USDC); nothing else is needed to read, pay and
settle. The ABIs are plain JSON-style lists, built here from compact descriptions so each
entry reads like its Solidity signature; web3.py does all encoding and decoding.

>>> [f["name"] for f in NODE_REGISTRY_ABI][:3]
['getAllActiveNodes', 'getNodesForModel', 'getNodeFullInfo']
>>> signature(next(f for f in JOB_MARKETPLACE_ABI if f["name"] == "submitProofOfWork"))
'submitProofOfWork(uint256,uint256,bytes32,string,string)'
>>> len(next(f for f in JOB_MARKETPLACE_ABI if f["name"] == "sessionJobs")["outputs"])
18
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ERC20_ABI",
    "JOB_MARKETPLACE_ABI",
    "MODEL_REGISTRY_ABI",
    "NODE_REGISTRY_ABI",
    "SESSION_JOB_FIELDS",
    "signature",
]

Param = tuple[str, str] | tuple[str, str, list[Any]]


def _params(items: list[Param]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for item in items:
        kind, name = item[0], item[1]
        entry: dict[str, Any] = {"type": kind, "name": name, "internalType": kind}
        if len(item) == 3:
            entry["components"] = _params(item[2])
        out.append(entry)
    return out


def _fn(
    name: str,
    inputs: list[Param],
    outputs: list[Param] | None = None,
    *,
    mutability: str = "view",
) -> dict[str, Any]:
    return {
        "type": "function",
        "name": name,
        "inputs": _params(inputs),
        "outputs": _params(outputs or []),
        "stateMutability": mutability,
    }


def _event(name: str, fields: list[tuple[str, str, bool]]) -> dict[str, Any]:
    return {
        "type": "event",
        "name": name,
        "anonymous": False,
        "inputs": [
            {"type": kind, "name": field, "indexed": indexed, "internalType": kind}
            for kind, field, indexed in fields
        ],
    }


def signature(entry: dict[str, Any]) -> str:
    """The canonical ``name(type,...)`` of a function or event entry."""

    def kind(param: dict[str, Any]) -> str:
        if param["type"].startswith("tuple"):
            inner = ",".join(kind(c) for c in param["components"])
            return f"({inner})" + param["type"][len("tuple") :]
        return str(param["type"])

    return f"{entry['name']}({','.join(kind(p) for p in entry['inputs'])})"


NODE_REGISTRY_ABI: list[dict[str, Any]] = [
    _fn("getAllActiveNodes", [], [("address[]", "")]),
    _fn("getNodesForModel", [("bytes32", "modelId")], [("address[]", "")]),
    _fn(
        "getNodeFullInfo",
        [("address", "operator")],
        [
            ("address", "operator"),
            ("uint256", "stakedAmount"),
            ("bool", "active"),
            ("string", "metadata"),
            ("string", "apiUrl"),
            ("bytes32[]", "models"),
            ("uint256", "minPriceNative"),
            ("uint256", "minPriceStable"),
        ],
    ),
    _fn(
        "getModelPricing",
        [("address", "operator"), ("bytes32", "modelId"), ("address", "token")],
        [("uint256", "")],
    ),
    _fn(
        "getHostModelPrices",
        [("address", "operator"), ("address", "token")],
        [("bytes32[]", "modelIds"), ("uint256[]", "prices")],
    ),
    _fn("nodeSupportsModel", [("address", "operator"), ("bytes32", "modelId")], [("bool", "")]),
    _fn("isActiveNode", [("address", "operator")], [("bool", "")]),
]

MODEL_REGISTRY_ABI: list[dict[str, Any]] = [
    _fn("getAllModels", [], [("bytes32[]", "")]),
    _fn(
        "getModel",
        [("bytes32", "modelId")],
        [
            (
                "tuple",
                "",
                [
                    ("string", "huggingfaceRepo"),
                    ("string", "fileName"),
                    ("bytes32", "sha256Hash"),
                    ("uint256", "approvalTier"),
                    ("bool", "active"),
                    ("uint256", "timestamp"),
                ],
            )
        ],
    ),
    _fn("getModelId", [("string", "huggingfaceRepo"), ("string", "fileName")], [("bytes32", "")]),
    _fn("isModelApproved", [("bytes32", "modelId")], [("bool", "")]),
]

SESSION_JOB_FIELDS: list[Param] = [
    ("uint256", "id"),
    ("address", "depositor"),
    ("address", "host"),
    ("address", "paymentToken"),
    ("uint256", "deposit"),
    ("uint256", "pricePerToken"),
    ("uint256", "tokensUsed"),
    ("uint256", "maxDuration"),
    ("uint256", "startTime"),
    ("uint256", "lastProofTime"),
    ("uint256", "proofInterval"),
    ("uint256", "proofTimeoutWindow"),
    ("uint8", "status"),
    ("uint256", "withdrawnByHost"),
    ("uint256", "refundedToUser"),
    ("string", "conversationCID"),
    ("bytes32", "lastProofHash"),
    ("string", "lastProofCID"),
]
"""The 18 values of ``sessionJobs(uint256)``, in the contract's order (CHAIN.md section 4)."""

_SESSION_TERMS: list[Param] = [
    ("uint256", "pricePerToken"),
    ("uint256", "maxDuration"),
    ("uint256", "proofInterval"),
    ("uint256", "proofTimeoutWindow"),
]

JOB_MARKETPLACE_ABI: list[dict[str, Any]] = [
    _fn(
        "createSessionJobForModel",
        [("address", "host"), ("bytes32", "modelId"), *_SESSION_TERMS],
        [("uint256", "jobId")],
        mutability="payable",
    ),
    _fn(
        "createSessionJobForModelWithToken",
        [
            ("address", "host"),
            ("bytes32", "modelId"),
            ("address", "token"),
            ("uint256", "deposit"),
            *_SESSION_TERMS,
        ],
        [("uint256", "jobId")],
        mutability="nonpayable",
    ),
    _fn("depositNative", [], mutability="payable"),
    _fn("depositToken", [("address", "token"), ("uint256", "amount")], mutability="nonpayable"),
    _fn(
        "submitProofOfWork",
        [
            ("uint256", "jobId"),
            ("uint256", "tokensClaimed"),
            ("bytes32", "proofHash"),
            ("string", "proofCID"),
            ("string", "deltaCID"),
        ],
        mutability="nonpayable",
    ),
    _fn(
        "completeSessionJob",
        [("uint256", "jobId"), ("string", "conversationCID")],
        mutability="nonpayable",
    ),
    _fn("triggerSessionTimeout", [("uint256", "jobId")], mutability="nonpayable"),
    _fn("sessionJobs", [("uint256", "jobId")], SESSION_JOB_FIELDS),
    _fn("sessionModel", [("uint256", "jobId")], [("bytes32", "")]),
    _fn("tokenMinDeposits", [("address", "token")], [("uint256", "")]),
    _fn("disputeWindow", [], [("uint256", "")]),
    _fn("minTokensFee", [], [("uint256", "")]),
    _fn("userDepositsNative", [("address", "depositor")], [("uint256", "")]),
    _fn(
        "userDepositsToken",
        [("address", "depositor"), ("address", "token")],
        [("uint256", "")],
    ),
    _fn("withdrawNative", [("uint256", "amount")], mutability="nonpayable"),
    _fn("withdrawToken", [("address", "token"), ("uint256", "amount")], mutability="nonpayable"),
    # CHAIN.md section 6: the deposit balance, delegation, deposit limits, proofs.
    _fn(
        "createSessionFromDepositForModel",
        [
            ("bytes32", "modelId"),
            ("address", "host"),
            ("address", "paymentToken"),
            ("uint256", "deposit"),
            *_SESSION_TERMS,
        ],
        [("uint256", "sessionId")],
        mutability="nonpayable",
    ),
    _fn(
        "createSessionForModelAsDelegate",
        [
            ("address", "payer"),
            ("bytes32", "modelId"),
            ("address", "host"),
            ("address", "paymentToken"),
            ("uint256", "amount"),
            *_SESSION_TERMS,
        ],
        [("uint256", "sessionId")],
        mutability="nonpayable",
    ),
    _fn(
        "authorizeDelegate",
        [("address", "delegate"), ("bool", "authorized")],
        mutability="nonpayable",
    ),
    _fn(
        "isDelegateAuthorized",
        [("address", "depositor"), ("address", "delegate")],
        [("bool", "")],
    ),
    _fn("getLockedBalanceNative", [("address", "account")], [("uint256", "locked")]),
    _fn(
        "getLockedBalanceToken",
        [("address", "account"), ("address", "token")],
        [("uint256", "locked")],
    ),
    _fn("getTotalBalanceNative", [("address", "account")], [("uint256", "")]),
    _fn("getTotalBalanceToken", [("address", "account"), ("address", "token")], [("uint256", "")]),
    _fn("tokenMaxDeposits", [("address", "token")], [("uint256", "")]),
    _fn("MIN_DEPOSIT", [], [("uint256", "")]),
    _fn(
        "getProofSubmission",
        [("uint256", "sessionId"), ("uint256", "proofIndex")],
        [
            ("bytes32", "proofHash"),
            ("uint256", "tokensClaimed"),
            ("uint256", "timestamp"),
            ("bool", "verified"),
            ("string", "deltaCID"),
        ],
    ),
    _event(
        "SessionJobCreated",
        [
            ("uint256", "jobId", True),
            ("address", "depositor", True),
            ("address", "host", True),
            ("uint256", "deposit", False),
        ],
    ),
    _event(
        "SessionJobCreatedForModel",
        [
            ("uint256", "jobId", True),
            ("address", "depositor", True),
            ("address", "host", True),
            ("bytes32", "modelId", False),
            ("uint256", "deposit", False),
        ],
    ),
    _event(
        "ProofSubmitted",
        [
            ("uint256", "jobId", True),
            ("address", "host", True),
            ("uint256", "tokensClaimed", False),
            ("bytes32", "proofHash", False),
            ("string", "proofCID", False),
            ("string", "deltaCID", False),
        ],
    ),
    _event(
        "SessionCompleted",
        [
            ("uint256", "jobId", True),
            ("uint256", "totalTokensUsed", False),
            ("uint256", "hostEarnings", False),
            ("uint256", "userRefund", False),
        ],
    ),
    _event(
        "SessionTimedOut",
        [
            ("uint256", "jobId", True),
            ("uint256", "hostEarnings", False),
            ("uint256", "userRefund", False),
        ],
    ),
    _event(
        "RefundCreditedToDeposit",
        [
            ("uint256", "jobId", True),
            ("address", "depositor", True),
            ("uint256", "amount", False),
            ("address", "token", True),
        ],
    ),
]

JOB_MARKETPLACE_ABI += [
    _event(
        "SessionCreatedByDepositor",
        [
            ("uint256", "sessionId", True),
            ("address", "depositor", True),
            ("address", "host", True),
            ("uint256", "deposit", False),
        ],
    ),
    _event(
        "SessionCreatedByDelegate",
        [
            ("uint256", "sessionId", True),
            ("address", "payer", True),
            ("address", "delegate", True),
            ("address", "host", False),
            ("bytes32", "modelId", False),
            ("uint256", "amount", False),
        ],
    ),
    _event(
        "DelegateAuthorized",
        [
            ("address", "depositor", True),
            ("address", "delegate", True),
            ("bool", "authorized", False),
        ],
    ),
    _event(
        "SessionCompletedBy",
        [
            ("uint256", "jobId", True),
            ("address", "completedBy", True),
            ("uint256", "tokensUsed", False),
            ("uint256", "paymentAmount", False),
            ("uint256", "refundAmount", False),
        ],
    ),
    _event(
        "DepositReceived",
        [("address", "depositor", True), ("uint256", "amount", False), ("address", "token", True)],
    ),
    _event(
        "WithdrawalProcessed",
        [("address", "depositor", True), ("uint256", "amount", False), ("address", "token", True)],
    ),
]

ERC20_ABI: list[dict[str, Any]] = [
    _fn("balanceOf", [("address", "owner")], [("uint256", "")]),
    _fn("allowance", [("address", "owner"), ("address", "spender")], [("uint256", "")]),
    _fn("decimals", [], [("uint8", "")]),
    _fn(
        "approve",
        [("address", "spender"), ("uint256", "amount")],
        [("bool", "")],
        mutability="nonpayable",
    ),
]

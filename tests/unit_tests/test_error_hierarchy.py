"""One error hierarchy: every public exception class of the package lives in
``langchain_fabstir.errors``, is a :class:`FabstirError`, and has its own stable code."""

from __future__ import annotations

import importlib
import pkgutil

import langchain_fabstir
from langchain_fabstir import errors
from langchain_fabstir.errors import FabstirError

# Signals that never leave the module that raises them: each is caught there (or one
# call up, inside a private module) and turned into a FabstirError or an exit status.
INTERNAL = {
    "langchain_fabstir._http.ReplyTooLarge",  # read_capped's bound: callers re-raise typed
    "langchain_fabstir.cli._common.CliError",  # `fabstir` prints it and exits with its status
    "langchain_fabstir.discovery._http.FetchError",  # discovery turns it into typed errors
    "langchain_fabstir.s5._http.DeadlineExceeded",  # an httpx timeout for the retry policy
    "langchain_fabstir.s5._http.Transient",  # a retryable HTTP answer, for the retry policy
    "langchain_fabstir.s5.encoding.EncodingError",  # wrapped by the CID/registry parsers
}


def _exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    prefix = langchain_fabstir.__name__ + "."
    for info in pkgutil.walk_packages(langchain_fabstir.__path__, prefix):
        if info.name.endswith(".__main__"):  # runs the CLI
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                isinstance(value, type)
                and issubclass(value, BaseException)
                and value.__module__ == info.name
                and not name.startswith("_")
            ):
                found[f"{info.name}.{name}"] = value
    return found


def test_every_public_exception_is_in_errors_with_its_own_code() -> None:
    classes = _exception_classes()
    outside = {path for path, cls in classes.items() if cls.__module__ != errors.__name__}
    assert outside == INTERNAL
    ours = [cls for path, cls in classes.items() if path not in INTERNAL]
    assert all(issubclass(cls, FabstirError) for cls in ours)
    assert {cls.__name__ for cls in ours} <= set(errors.__all__)
    codes = [cls.code for cls in ours if issubclass(cls, FabstirError)]
    assert len(codes) == len(set(codes)), "two classes share a code"


def test_the_old_import_paths_still_work() -> None:
    from langchain_fabstir.discovery import HostRegistryError
    from langchain_fabstir.host import EngineContextOverflow, EngineError, EngineRateLimited
    from langchain_fabstir.host.embeddings import EmbeddingEngineError
    from langchain_fabstir.host.jobs import EngineStopped
    from langchain_fabstir.s5 import InvalidCIDError, InvalidSeedPhraseError

    for cls in (
        HostRegistryError,
        EngineContextOverflow,
        EngineError,
        EngineRateLimited,
        EmbeddingEngineError,
        EngineStopped,
        InvalidCIDError,
        InvalidSeedPhraseError,
    ):
        assert getattr(errors, cls.__name__) is cls


def test_a_host_side_error_reads_as_the_text_the_host_sends() -> None:
    # The host puts str(exc) on the wire, as a node does: no "[CODE]" prefix there.
    exc = errors.EngineRateLimited("upstream rate limit: slow down", retry_after=7)
    assert str(exc) == "upstream rate limit: slow down"
    assert (exc.code, exc.retry_after, isinstance(exc, RuntimeError)) == (
        "ENGINE_RATE_LIMITED",
        7,
        True,
    )

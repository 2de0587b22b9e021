"""llama.cpp's thread count: the caller's, else ``FABSTIR_LLAMA_THREADS``, else 2."""

from __future__ import annotations

import pytest

from langchain_fabstir.errors import EngineError
from langchain_fabstir.host.engines import default_threads


def test_two_threads_unless_the_environment_says(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FABSTIR_LLAMA_THREADS", raising=False)
    assert default_threads() == 2
    monkeypatch.setenv("FABSTIR_LLAMA_THREADS", " 1 ")
    assert default_threads() == 1
    monkeypatch.setenv("FABSTIR_LLAMA_THREADS", "")
    assert default_threads() == 2


@pytest.mark.parametrize("raw", ["0", "-1", "1.5", "lots", "257", "\x1b[2J", "\u00b2"])
def test_a_bad_value_is_refused_by_name(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("FABSTIR_LLAMA_THREADS", raw)
    with pytest.raises(EngineError, match="FABSTIR_LLAMA_THREADS must be a whole number"):
        default_threads()


def test_the_suite_runs_one_thread_per_model() -> None:
    # tests/conftest.py: two workers on two cores, one llama.cpp thread each.
    assert default_threads() == 1

"""The docstring examples of the S5 modules are part of the manual: run them."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "langchain_fabstir.s5.encoding",
    "langchain_fabstir.s5.cid",
    "langchain_fabstir.s5.registry",
    "langchain_fabstir.s5.crypto",
    "langchain_fabstir.s5.seed",
    "langchain_fabstir.s5.sdk",
    "langchain_fabstir.s5.dirv1",
    "langchain_fabstir.s5.collation",
    "langchain_fabstir.portal.store",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0
    assert result.failed == 0

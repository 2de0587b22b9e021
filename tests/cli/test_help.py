"""``--help`` is written for the terminal: no docstring markup, every command described."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from langchain_fabstir.cli import _parser
from langchain_fabstir.cli._common import help_text
from langchain_fabstir.discovery import parse_registry

MARKUP = ("``", ":class:", ":func:", ":meth:", ":mod:", ":data:", ":attr:", ":exc:")


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _parsers(child)


def test_no_command_help_shows_docstring_markup() -> None:
    found = {
        p.prog: [m for m in MARKUP if m in p.format_help()]
        for p in _parsers(_parser())
        if any(m in p.format_help() for m in MARKUP)
    }
    assert found == {}


def test_every_command_has_a_description() -> None:
    top = _parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    missing = [name for name, p in sub.choices.items() if not (p.description or "").strip()]
    assert missing == []
    assert "reference host" in (sub.choices["demo"].description or "")


def test_help_text_turns_roles_into_names() -> None:
    doc = "Uses :class:`~a.b.HostInfo` and :func:`x.load` on ``--host``.\n\n    code  kept"
    assert help_text(doc) == "Uses HostInfo and x.load on --host.\n\n    code  kept"


def test_host_sampling_seed_and_its_deprecated_alias(capsys: pytest.CaptureFixture[str]) -> None:
    parser = _parser()
    assert parser.parse_args(["host", "--sampling-seed", "7"]).sampling_seed == 7
    assert parser.parse_args(["host"]).sampling_seed == 42
    assert capsys.readouterr().err == ""
    assert parser.parse_args(["host", "--seed", "9"]).sampling_seed == 9
    assert "--seed is deprecated, use --sampling-seed" in capsys.readouterr().err
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    text = sub.choices["host"].format_help()
    assert "--sampling-seed" in text
    assert not re.search(r"--seed\b(?!-file)", text)


def test_registry_format_is_in_its_help_and_the_readme_example_parses() -> None:
    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    text = " ".join(sub.choices["hosts"].format_help().split())
    assert '{"hosts": [...]}' in text and '"url"' in text
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    made = re.search(r"echo '(\[.*\])' > hosts\.json", readme)
    assert made, "the README makes the hosts.json its --registry example reads"
    assert parse_registry(made.group(1), source="hosts.json")[0].price == 0.2

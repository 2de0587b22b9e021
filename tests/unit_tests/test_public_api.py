"""The public API is what the README documents: ``__all__`` equals the README's list, and every
import the README shows works."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import langchain_fabstir

README = Path(__file__).resolve().parents[2] / "README.md"


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_all_is_what_the_readme_lists() -> None:
    section = _section(README.read_text("utf-8"), "Public API")
    listed = set(re.findall(r"^\s*(?:- [\w ]+: |  )(.*)$", section, re.MULTILINE))
    names = {n for line in listed for n in re.findall(r"`(\w+)`", line)}
    assert names == set(langchain_fabstir.__all__)


def test_every_name_in_all_imports() -> None:
    for name in langchain_fabstir.__all__:
        assert getattr(langchain_fabstir, name) is not None, name


def test_every_import_in_the_readme_works() -> None:
    text = README.read_text("utf-8")
    imports = re.findall(
        r"^\s*from (langchain_fabstir[\w.]*) import \(?([\w, \n]+?)\)?$", text, re.MULTILINE
    )
    assert imports, "the README shows no import of the package"
    for module, names in imports:
        mod = importlib.import_module(module)
        for name in filter(None, (n.strip() for n in names.replace("\n", ",").split(","))):
            assert hasattr(mod, name), f"README: from {module} import {name}"


def test_readme_layout_names_every_folder() -> None:
    layout = _section(README.read_text("utf-8"), "Layout")
    root = Path(langchain_fabstir.__file__).parent
    folders = {p.parent.name for p in root.glob("*/__init__.py")}
    missing = {f for f in folders if not re.search(rf"^\s+{f}/\s", layout, re.MULTILINE)}
    assert folders and missing == set()

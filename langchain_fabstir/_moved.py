"""Old module paths keep working for now: ``import langchain_fabstir.session`` gives the
module's new home, :mod:`langchain_fabstir.sessions.manager`, with a ``DeprecationWarning``
that names it. Installed by the package ``__init__``; remove an entry a release after its
move."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
import warnings

__all__ = ["MOVED", "install"]

MOVED: dict[str, str] = {
    "langchain_fabstir.protocol": "langchain_fabstir.wire.frames",
    "langchain_fabstir.tool_protocol": "langchain_fabstir.wire.tools",
    "langchain_fabstir.models": "langchain_fabstir.sessions.models",
    "langchain_fabstir.transport": "langchain_fabstir.sessions.transport",
    "langchain_fabstir.stream": "langchain_fabstir.sessions.stream",
    "langchain_fabstir.recovery": "langchain_fabstir.sessions.recovery",
    "langchain_fabstir.session": "langchain_fabstir.sessions.manager",
    "langchain_fabstir.session_checkpoints": "langchain_fabstir.sessions.proofs",
    "langchain_fabstir.session_storage": "langchain_fabstir.sessions.persistence",
    "langchain_fabstir.persistence": "langchain_fabstir.storage.conversations",
    "langchain_fabstir.host_checkpoints": "langchain_fabstir.checkpoints.published",
    "langchain_fabstir.saver": "langchain_fabstir.langgraph.saver",
    "langchain_fabstir.checkpoints.chain": "langchain_fabstir.checkpoints.hashchain",
    "langchain_fabstir.host.s5_checkpoints": "langchain_fabstir.host.publishing",
}
"""Old module path -> new home."""


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(
        self,
        fullname: str,
        path: object = None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        new = MOVED[spec.name]
        warnings.warn(
            f"{spec.name} has moved to {new}: import it from there "
            "(the old path goes away in a later release)",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(new)

    def exec_module(self, module: types.ModuleType) -> None:
        """The new module is already executed."""


def install() -> None:
    """Put the finder on ``sys.meta_path`` once."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())

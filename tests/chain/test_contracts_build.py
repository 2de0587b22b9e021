"""The committed contract artifacts (contracts/build/*.json) are what the sources compile to."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.localchain import BUILD_DIR, CONTRACTS_DIR


def test_committed_artifacts_match_the_sources(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is needed to compile the test contracts (solc-js): install Node.js")
    if not (CONTRACTS_DIR / "node_modules" / "solc").is_dir():
        pytest.fail("solc-js is not installed: run `make install` (npm ci --prefix contracts)")
    done = subprocess.run(
        [node, str(CONTRACTS_DIR / "compile.mjs"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    fresh = {p.name: json.loads(p.read_text()) for p in sorted(tmp_path.glob("*.json"))}
    committed = {p.name: json.loads(p.read_text()) for p in sorted(BUILD_DIR.glob("*.json"))}
    assert set(fresh) == {
        "JobMarketplace.json",
        "ModelRegistry.json",
        "NodeRegistry.json",
        "TestUSDC.json",
    }
    assert set(committed) == set(fresh), "run `node contracts/compile.mjs` and commit build/"
    for name, artifact in fresh.items():
        assert committed[name] == artifact, (
            f"contracts/build/{name} is stale: run `node contracts/compile.mjs` and commit it"
        )

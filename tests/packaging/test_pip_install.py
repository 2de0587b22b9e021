"""What a pip user gets: the wheel is built, installed into a new virtualenv with the
README's one command (`pip install 'langchain-fabstir[host]'`, here the built wheel), and
then used as the README says: `pip check`, `fabstir demo`, the Quickstart's `fabstir host`
and its ChatFabstir snippet, and the errors of the extras it did not install.

Nothing of the checkout is importable there (the commands run from a temporary folder); the
only model is the `host` extra's. uv installs (its cache holds what `make install` fetched).
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from langchain_fabstir._extras import EXTRAS

pytestmark = [pytest.mark.slow, pytest.mark.packaging, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text("utf-8")


def _uv() -> str:
    for candidate in (os.environ.get("UV"), str(ROOT / ".tools" / "bin" / "uv"), "uv"):
        if candidate and shutil.which(candidate):
            return str(shutil.which(candidate))
    pytest.fail("uv is needed to build and install the wheel: run `make install`")


def _clean_env(**extra: str) -> dict[str, str]:
    """The user's environment, minus this checkout's venv and every FABSTIR_ setting."""
    drop = ("FABSTIR_", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "UV_PROJECT_ENVIRONMENT")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(PYTHONUNBUFFERED="1", UV_PYTHON_DOWNLOADS="never", UV_NO_PROGRESS="1")
    env.update(extra)
    return env


def _run(args: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    result = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist and the wheel, built from this checkout (the wheel from the sdist)."""
    out = tmp_path_factory.mktemp("dist")
    _run([_uv(), "build", "--quiet", "-o", str(out), str(ROOT)], cwd=out, env=_clean_env())
    return out


@pytest.fixture(scope="module")
def venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtualenv with `pip install 'langchain-fabstir[host]'` (the built wheel)."""
    base = tmp_path_factory.mktemp("user")
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=base, env=_clean_env())
    (wheel,) = dist.glob("*.whl")
    install = [_uv(), "pip", "install", "--python", str(venv / "bin" / "python")]
    try:  # what `make install` cached is enough, unless a newer release came out since
        _run([*install, "--offline", f"{wheel}[host]"], cwd=base, env=_clean_env())
    except AssertionError:
        _run([*install, f"{wheel}[host]"], cwd=base, env=_clean_env())
    return venv


def _user_env(venv: Path, home: Path) -> dict[str, str]:
    return _clean_env(
        PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        XDG_CACHE_HOME=str(home / "cache"),  # the model is joined here on the first start
    )


def _readme_block(section: str, lang: str) -> str:
    body = README.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(rf"```{lang}\n(.*?)```", body, re.S)
    assert match, f"no {lang} block under '## {section}'"
    return match.group(1)


# --- what the wheel carries ----------------------------------------------------------------


def test_the_wheel_and_sdist_carry_the_license_and_metadata(dist: Path) -> None:
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(zf.read(info).decode("utf-8"))
        license_file = next(n for n in names if n.endswith(".dist-info/licenses/LICENSE"))
        assert "MIT License" in zf.read(license_file).decode("utf-8")
    assert meta["License-Expression"] == "MIT"
    classifiers = meta.get_all("Classifier") or []
    assert "Programming Language :: Python :: 3.10" in classifiers
    assert "Typing :: Typed" in classifiers and any("Development Status" in c for c in classifiers)
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
    assert {"Homepage", "Repository", "Issues", "Changelog"} <= set(urls)
    assert set(meta.get_all("Provides-Extra") or []) == set(EXTRAS)  # every documented extra
    assert "langchain_fabstir/py.typed" in names
    assert not any("examples/" in n or n.startswith("tests/") for n in names)
    (sdist,) = dist.glob("*.tar.gz")
    listing = subprocess.run(
        ["tar", "tzf", str(sdist)], capture_output=True, text=True, check=True, timeout=60
    ).stdout.splitlines()
    top = {n.split("/", 1)[1] for n in listing if "/" in n}
    assert {"LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml"} <= top
    assert not any("node_modules" in n for n in listing)  # the test tools stay out
    changelog = (ROOT / "CHANGELOG.md").read_text("utf-8")
    assert "\n## Unreleased\n" in changelog and f"\n## {meta['Version']}\n" in changelog


# --- the pip user's first hour --------------------------------------------------------------


def test_pip_install_host_gives_a_working_host_demo_and_quickstart(
    venv: Path, tmp_path: Path
) -> None:
    env = _user_env(venv, tmp_path)
    python = str(venv / "bin" / "python")
    # pip's own check: every installed requirement is satisfied.
    assert "No broken requirements found" in _run(
        [python, "-m", "pip", "check"], cwd=tmp_path, env=env
    )
    where = _run(
        [python, "-c", "import langchain_fabstir; print(langchain_fabstir.__file__)"],
        cwd=tmp_path,
        env=env,
    )
    assert where.startswith(str(venv)), where  # the installed wheel, not the checkout

    # `fabstir demo`: a host with the extra's model, a portal, answers streamed.
    out = _run([str(venv / "bin" / "fabstir"), "demo", "--max-tokens", "12"], cwd=tmp_path, env=env)
    assert "(gemma-3-270m-q4_k_m)" in out, out
    answers = re.findall(r"^Assistant: (.*)$", out, re.M)
    assert len(answers) == 3 and all(a.strip() and a[0] != " " for a in answers), out
    assert "Conversation saved on S5: " in out

    # The README's Quickstart: its `fabstir host` command, then its Python snippet.
    shell = _readme_block("Quickstart", "sh")
    command = shell.split("#", 1)[0].split()
    assert command == ["fabstir", "host", "--port", "8080"], shell
    host = subprocess.Popen(
        [str(venv / "bin" / "fabstir"), *command[1:-1], "0"],  # any free port
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert host.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(host.stdout, selectors.EVENT_READ)
        assert sel.select(300), "the host did not start"
        ready = host.stdout.readline().strip()
        assert ready.startswith("READY http://127.0.0.1:"), ready
        url = ready.split(" ", 1)[1]
        snippet = _readme_block("Quickstart", "python")
        assert "http://127.0.0.1:8080" in snippet
        script = tmp_path / "quickstart.py"
        script.write_text(snippet.replace("http://127.0.0.1:8080", url), "utf-8")
        said = _run([python, str(script)], cwd=tmp_path, env=env)
        first, _, streamed = said.partition("\n")
        assert first.strip() and streamed.strip(), said
    finally:
        host.terminate()
        host.wait(30)


def test_extras_it_did_not_install_name_their_command(venv: Path, tmp_path: Path) -> None:
    env = _user_env(venv, tmp_path)
    python = str(venv / "bin" / "python")
    code = (
        "import sys\n"
        "try:\n    from langchain_fabstir import S5CheckpointSaver\n"
        "except ImportError as exc:\n    print(exc)\n"
        "try:\n    from langchain_fabstir.chain import ChainClient\n"
        "except Exception as exc:\n    print(exc)\n"
    )
    out = _run([python, "-c", code], cwd=tmp_path, env=env)
    assert "pip install 'langchain-fabstir[langgraph]'" in out, out
    assert "pip install 'langchain-fabstir[chain]'" in out, out

"""Key and seed files others may read are refused, as ssh refuses an unprotected private key;
``keys new --dir`` leaves no directory others may write to."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from langchain_fabstir.cli import main
from langchain_fabstir.cli._common import read_host_key, read_seed


def _err_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660], ids=lambda m: f"{m:04o}")
def test_a_key_or_seed_file_others_may_read_is_refused_with_the_fix(
    keys_dir: Path,
    mode: int,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for var in ("FABSTIR_PRIVATE_KEY", "FABSTIR_S5_SEED", "FABSTIR_HOST_KEY"):
        monkeypatch.delenv(var, raising=False)
    key, seed = keys_dir / "eth.key", keys_dir / "s5.seed"
    key.chmod(mode)
    seed.chmod(mode)
    unreachable = "http://127.0.0.1:9"  # nothing is contacted: the refusal comes first
    runs = [
        (["chat", "--host-url", unreachable, "--key-file", str(key)], key),
        (["chat", "--host-url", unreachable, "--portal-url", unreachable, "--seed-file",
          str(seed)], seed),
        (["host", "--engine", "echo", "--port", "0", "--host-key-file", str(key)], key),
        (["host", "--engine", "echo", "--port", "0", "--portal-url", unreachable,
          "--seed-file", str(seed)], seed),
        (["jobs", "show", "1", "--network", "base-sepolia", "--key-file", str(key)], key),
    ]  # fmt: skip
    for argv, path in runs:
        assert main(argv) == 1, argv
        line = _err_line(capsys)
        assert line.startswith(f"fabstir {argv[0]}: [UNPROTECTED_KEY_FILE] "), line
        assert f"permissions {mode:04o} are too open" in line
        assert f"chmod 600 {path}" in line
        secret = path.read_text().strip()
        # The secret, and no two of its words in a row (one word of a random phrase may be
        # an ordinary word of the message, such as "open").
        words = secret.split()
        pairs = [" ".join(words[i : i + 2]) for i in range(max(1, len(words) - 1))]
        assert secret not in line and not any(p in line for p in pairs)
    # `keys show` (public parts only) still works and says how to fix it.
    assert main(["keys", "show", "--dir", str(keys_dir)]) == 0
    out = capsys.readouterr().out
    assert f"chmod 600 {key}" in out and f"chmod 600 {seed}" in out
    # Fixed as told: accepted.
    key.chmod(0o600)
    seed.chmod(0o400)
    assert read_host_key(str(key)) is not None and read_seed(str(seed)) is not None


def test_keys_new_tightens_a_directory_others_may_write_and_refuses_a_shared_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    assert main(["keys", "new", "--dir", str(loose)]) == 0
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700
    err = capsys.readouterr().err
    assert f"{loose} was writable by others (mode 0777): tightened to 0700" in err
    for name in ("eth.key", "s5.seed"):
        assert stat.S_IMODE((loose / name).stat().st_mode) == 0o600

    shared = tmp_path / "shared"  # sticky and world-writable, as /tmp: not ours to change
    shared.mkdir()
    shared.chmod(0o1777)
    assert main(["keys", "new", "--dir", str(shared)]) == 1
    line = _err_line(capsys)
    assert "is a shared directory (mode 1777)" in line and "use a directory of your own" in line
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert list(shared.iterdir()) == []

    fresh = tmp_path / "a" / "b"
    assert main(["keys", "new", "--dir", str(fresh)]) == 0
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    assert "tightened" not in capsys.readouterr().err


def test_keys_delegate_writes_a_private_key_for_the_payer_and_never_replaces_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from langchain_fabstir.checkpoints import address_of

    payer = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"
    directory = tmp_path / "agent"
    assert main(["keys", "delegate", "--payer", payer, "--dir", str(directory), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    path = directory / "delegate.key"
    assert out["delegate_key_file"] == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    key = path.read_text().strip()
    assert out["delegate"] == address_of(key) and key not in json.dumps(out)
    assert out["payer"] == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"  # checksummed
    assert main(["keys", "delegate", "--payer", payer, "--dir", str(directory)]) == 1
    assert "exists: not replacing a key" in _err_line(capsys)
    assert path.read_text().strip() == key
    assert main(["keys", "delegate", "--payer", "0x12", "--dir", str(tmp_path / "b")]) == 1
    assert "--payer: not an address" in _err_line(capsys)

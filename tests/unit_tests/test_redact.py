"""The one URL redaction (``langchain_fabstir._redact``) on the forms providers use."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from langchain_fabstir._redact import SecretUrl, redact_text, redact_url
from langchain_fabstir.chain import BASE_SEPOLIA, ChainConfig


@pytest.mark.parametrize(
    ("url", "shown", "secret"),
    [
        (
            "https://mainnet.infura.io/v3/9aa3d95b3bc440fa88ea12eaa4456161",
            "https://mainnet.infura.io/v3/***",
            "9aa3d95b3bc440fa88ea12eaa4456161",
        ),
        (
            "https://base-sepolia.g.alchemy.com/v2/docs-Demo_9xKq2LmN0pQ",
            "https://base-sepolia.g.alchemy.com/v2/***",
            "docs-Demo_9xKq2LmN0pQ",
        ),
        (
            "https://a-b-c.base-sepolia.quiknode.pro/0123456789abcdef0123456789abcdef01234567/",
            "https://a-b-c.base-sepolia.quiknode.pro/***/",
            "0123456789abcdef0123456789abcdef01234567",
        ),
        ("https://:s3cretpw@rpc.example:8443/", "https://***@rpc.example:8443/", "s3cretpw"),
        (
            "https://rpc.example/?api-key=abc123&x=1",
            "https://rpc.example/?api-key=***&x=***",
            "abc123",
        ),
        ("https://rpc.example/rpc#tok3n", "https://rpc.example/rpc#***", "tok3n"),
    ],
)
def test_provider_credentials_are_redacted(url: str, shown: str, secret: str) -> None:
    assert redact_url(url) == shown
    assert secret not in redact_text(f"POST {url} failed: 401 for {secret}", url)


def test_plain_endpoints_stay_readable() -> None:
    for url in (
        "http://127.0.0.1:8545",
        "https://sepolia.base.org",
        "https://rpc.ankr.com/base_sepolia",
        "https://base-sepolia-rpc.publicnode.com",
    ):
        assert redact_url(url) == url


def test_chain_config_keeps_the_url_secret_and_its_api() -> None:
    url = "https://user:pw@rpc.example/v2/0123456789abcdef0123"
    for config in (
        ChainConfig(**{**BASE_SEPOLIA.model_dump(), "rpc_url": url}),
        BASE_SEPOLIA.model_copy(update={"rpc_url": url}),
        ChainConfig.from_env({"FABSTIR_RPC_URL": url}),
    ):
        assert isinstance(config.rpc_url, SecretUrl)
        assert config.rpc_url == url and config.rpc_url.get_secret_value() == url
        for text in (repr(config), str(config), config.model_dump_json()):
            assert "pw" not in text and "0123456789abcdef0123" not in text
        assert ChainConfig(**config.model_dump()).rpc_url == url  # a python round trip
    with pytest.raises(ValidationError):
        BASE_SEPOLIA.model_copy(update={"rpc_url": ""})

"""Credentials out of URLs: one redaction used wherever a URL is shown (repr, errors, logs, CLI).

An RPC or portal URL often carries a secret: ``https://user:pass@host/``, a provider's API key
as a path segment (``https://base-sepolia.g.alchemy.com/v2/<KEY>``,
``https://mainnet.infura.io/v3/<KEY>``) or in the query (``?apikey=...``).

>>> redact_url("https://user:pass@base-sepolia.g.alchemy.com/v2/Ab3dEf6hIj9kLm2nOp5qRs8t")
'https://***@base-sepolia.g.alchemy.com/v2/***'
>>> redact_url("https://rpc.example/eth?apikey=s3cret&chain=8453")
'https://rpc.example/eth?apikey=***&chain=***'
>>> redact_url("http://127.0.0.1:8545")
'http://127.0.0.1:8545'
>>> redact_text("GET https://u:p@h.example/v3/0123456789abcdef0123 failed")
'GET https://***@h.example/v3/*** failed'
>>> url = SecretUrl("https://u:pw@h.example/v2/0123456789abcdef0123")
>>> url, str(url), url.get_secret_value() == "https://u:pw@h.example/v2/0123456789abcdef0123"
(SecretUrl('https://***@h.example/v2/***'), 'https://***@h.example/v2/***', True)
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import Secret

__all__ = ["MASK", "SecretUrl", "redact_text", "redact_url", "url_secrets"]

MASK = "***"

_KEYISH = re.compile(r"[A-Za-z0-9._~+=%-]+")
_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")


def _looks_secret(segment: str) -> bool:
    """A path segment that looks like an API key: long, or letters and digits mixed (a
    provider key is 20 to 64 characters; ``v2``, ``eth``, ``rpc`` and ``base-sepolia`` are
    not keys)."""
    if len(segment) < 12 or not _KEYISH.fullmatch(segment):
        return False
    if len(segment) >= 20:
        return True
    return any(c.isdigit() for c in segment) and any(c.isalpha() for c in segment)


def _redact_query(query: str) -> str:
    parts = []
    for item in re.split(r"([&;])", query):
        if item in ("&", ";"):
            parts.append(item)
        elif "=" in item:
            name, _, value = item.partition("=")
            parts.append(f"{name}={MASK}" if value else item)
        else:
            parts.append(MASK if _looks_secret(item) else item)
    return "".join(parts)


def redact_url(url: str) -> str:
    """``url`` without its credentials: the user and password become ``***``, as do the
    values of the query, the fragment, and every path segment that looks like a key. The
    scheme, host, port and the other path segments stay (so a person can tell which
    endpoint it is)."""
    try:
        parts = urlsplit(url)
    except ValueError:  # not a URL at all: show nothing of it
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rpartition("@")[2]
    path = "/".join(MASK if _looks_secret(s) else s for s in parts.path.split("/"))
    out = f"{parts.scheme}://{netloc}" if parts.scheme or netloc else ""
    out += path
    if parts.query:
        out += "?" + _redact_query(parts.query)
    if parts.fragment:
        out += "#" + MASK
    return out


def url_secrets(url: str) -> list[str]:
    """The secret pieces of ``url`` (and their percent-decoded forms), longest first: what
    must not appear in any text about it."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    found: set[str] = set()
    if "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        found.update([userinfo, *userinfo.split(":")])
    found.update(s for s in parts.path.split("/") if _looks_secret(s))
    for item in re.split(r"[&;]", parts.query):
        value = item.partition("=")[2] if "=" in item else item
        if value and ("=" in item or _looks_secret(item)):
            found.add(value)
    if parts.fragment:
        found.add(parts.fragment)
    found.update([unquote(s) for s in found])
    return sorted((s for s in found if s), key=len, reverse=True)


def redact_text(text: str, *urls: str) -> str:
    """``text`` with every URL in it redacted (:func:`redact_url`), and every secret piece of
    ``urls`` masked wherever it appears (an error message may quote a host or a path
    without the whole URL)."""
    text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
    for url in urls:
        for secret in url_secrets(url):
            if len(secret) >= 4:  # shorter pieces would mask ordinary words
                text = text.replace(secret, MASK)
    return text


class SecretUrl(Secret[str]):
    """A URL that may carry credentials (a pydantic secret): ``str()`` and ``repr()`` show
    it redacted (:func:`redact_url`), ``get_secret_value()`` gives the URL itself. JSON
    serialization writes the redacted form. It equals the same URL given as a plain
    ``str`` (so ``config.rpc_url == "http://127.0.0.1:8545"`` keeps working)."""

    def _display(self) -> str:
        return redact_url(self.get_secret_value())

    def __eq__(self, other: Any) -> bool:
        if isinstance(other, str):
            return self.get_secret_value() == other
        if isinstance(other, Secret):
            return bool(self.get_secret_value() == other.get_secret_value())
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.get_secret_value())

    @property
    def redacted(self) -> str:
        """The URL as it may be shown (:func:`redact_url`)."""
        return self._display()

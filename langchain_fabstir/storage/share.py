"""Share codes: a capability naming one encrypted export on an S5 portal, and its key.

Format: ``fsc1`` + base64url(``body || blake3(body)[:4]``) where ``body`` is the CBOR array
``[1, portal_url, cid_bytes, key32]``. The checksum turns typos into "malformed" instead of
a confusing download or decryption failure.

>>> from langchain_fabstir.s5 import CID
>>> code = make_share_code("http://127.0.0.1:5050", CID.from_bytes(b"x"), bytes(32))
>>> code.startswith(SHARE_PREFIX)
True
>>> parsed = parse_share_code(code)
>>> parsed.portal_url, parsed.cid == CID.from_bytes(b"x"), "key" in repr(parsed)
('http://127.0.0.1:5050', True, False)
>>> try:
...     parse_share_code(code[:-2] + "AA")
... except ShareCodeError as exc:
...     exc.code
'INVALID_SHARE_CODE'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cbor2

from langchain_fabstir._json import loads_cbor_untrusted, loads_untrusted
from langchain_fabstir.errors import IntegrityError, ShareCodeError
from langchain_fabstir.s5 import CID, BlobNotFoundError, InvalidCIDError, S5PortalClient
from langchain_fabstir.s5.cid import blake3_hash
from langchain_fabstir.s5.crypto import decrypt_mutable
from langchain_fabstir.s5.encoding import EncodingError, b64url_decode, b64url_encode

__all__ = [
    "EXPORT_TYPE",
    "SHARE_PREFIX",
    "ShareCode",
    "fetch_share",
    "make_share_code",
    "parse_share_code",
]

SHARE_PREFIX = "fsc1"
EXPORT_TYPE = "fabstir-session-export"
_MAX_CODE = 4096


@dataclass(frozen=True)
class ShareCode:
    """A parsed share code (the key never appears in ``repr``)."""

    portal_url: str
    cid: CID
    key: bytes = field(repr=False)


def make_share_code(portal_url: str, cid: CID, key: bytes) -> str:
    """Encode a share code for the export at ``cid`` on ``portal_url``, opened by ``key``."""
    if len(key) != 32:
        raise ValueError("a share key must be 32 bytes")
    body = cbor2.dumps([1, portal_url, cid.to_bytes(), key])
    return SHARE_PREFIX + b64url_encode(body + blake3_hash(body)[:4])


def parse_share_code(code: str) -> ShareCode:
    """Decode a share code; :class:`ShareCodeError` if it is malformed in any way."""
    if not isinstance(code, str) or not code.strip().startswith(SHARE_PREFIX):
        raise ShareCodeError(f"a share code starts with {SHARE_PREFIX!r}")
    text = "".join(code.strip()[len(SHARE_PREFIX) :].split())
    if len(text) > _MAX_CODE:
        raise ShareCodeError("share code is too long")
    try:
        raw = b64url_decode(text)
    except (EncodingError, ValueError) as exc:
        raise ShareCodeError("share code is not base64url") from exc
    body, check = raw[:-4], raw[-4:]
    if len(raw) < 8 or blake3_hash(body)[:4] != check:
        raise ShareCodeError("share code checksum does not match (mistyped or truncated?)")
    try:
        version, portal_url, cid_bytes, key = loads_cbor_untrusted(body)
        if version != 1:
            raise ShareCodeError(f"share code version {version!r} is not supported")
        if not isinstance(portal_url, str) or not portal_url.startswith(("http://", "https://")):
            raise ShareCodeError("share code names no http(s) portal")
        if not isinstance(key, bytes) or len(key) != 32 or not isinstance(cid_bytes, bytes):
            raise ShareCodeError("share code holds no valid key or CID")
        cid = CID.from_cid_bytes(cid_bytes)
    except ShareCodeError:
        raise
    except (cbor2.CBORDecodeError, InvalidCIDError, TypeError, ValueError) as exc:
        raise ShareCodeError("share code body is malformed") from exc
    return ShareCode(portal_url, cid, key)


async def fetch_share(code: ShareCode) -> dict[str, Any]:
    """Download, verify and decrypt the export a share code names (no account needed)."""
    async with S5PortalClient(code.portal_url) as client:
        try:
            blob = await client.download(code.cid)
        except BlobNotFoundError as exc:
            raise ShareCodeError(
                f"nothing is stored at this share code's address on {code.portal_url}",
                host_url=code.portal_url,
            ) from exc
    try:
        export = loads_untrusted(decrypt_mutable(blob, code.key))
    except IntegrityError as exc:
        raise ShareCodeError("the share code's key does not open the shared export") from exc
    except ValueError as exc:
        raise ShareCodeError("the shared export is not JSON") from exc
    if not isinstance(export, dict) or export.get("type") != EXPORT_TYPE:
        raise ShareCodeError("the share code does not name a session export")
    if not isinstance(export.get("messages"), list) or not isinstance(export.get("session"), dict):
        raise ShareCodeError("the shared export lacks a session or its messages")
    return export

"""FS5 directory blobs (DirV1): ``5f 5d`` followed by deterministic CBOR (cbor2).

Layout (as the Rust S5 implementation and the Fabstir fork of s5.js write it)::

    ["S5.pro", header{}, dirs{name: DirRef}, files{name: FileRef}]
    DirRef  = {2: link33, 7: ts_seconds, 8: ts_nanos}
    FileRef = {3: hash32, 4: size, 6: media_type, 7: ts_seconds, 8: ts_nanos, 22: extra{}, ...}

Names are written in s5.js's order (``localeCompare``, see
:func:`~langchain_fabstir.s5.collation.s5js_sort_key`), so both clients write the same bytes
for the same directory; unknown integer keys are kept and written back, so a
round trip through this module never drops fields another client wrote.

>>> DirV1().encode().hex()
'5f5d846653352e70726fa0a0a0'
>>> d = DirV1(files={"a.txt": FileRef(hash=bytes(32), size=3, media_type="text/plain")})
>>> DirV1.decode(d.encode()) == d
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cbor2

from langchain_fabstir._json import loads_cbor_untrusted
from langchain_fabstir.errors import InvalidDirectoryError
from langchain_fabstir.s5.collation import s5js_sort_key

__all__ = [
    "DIRV1_MAGIC",
    "DIRV1_PREFIX",
    "LINK_BLAKE3",
    "LINK_ED25519",
    "DirRef",
    "DirV1",
    "FileRef",
    "InvalidDirectoryError",
]

DIRV1_PREFIX = b"\x5f\x5d"
DIRV1_MAGIC = "S5.pro"
LINK_BLAKE3 = 0x1E
LINK_ED25519 = 0xED

_F_HASH, _F_SIZE, _F_MEDIA, _F_TS, _F_NANOS, _F_EXTRA = 3, 4, 6, 7, 8, 22
_D_LINK, _D_TS, _D_NANOS = 2, 7, 8


def _opt_int(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidDirectoryError(f"{what} must be an integer")
    return value


@dataclass(frozen=True)
class FileRef:
    """A file entry: the blob's BLAKE3 ``hash`` (32 bytes) and ``size``, plus metadata.

    ``extra`` is the key-22 map (``None`` when absent); ``other`` keeps unknown keys.
    """

    hash: bytes
    size: int
    media_type: str | None = None
    timestamp: int | None = None
    timestamp_nanos: int | None = None
    extra: dict[str, Any] | None = None
    other: dict[int, Any] = field(default_factory=dict)

    def to_cbor(self) -> dict[int, Any]:
        out: dict[int, Any] = {_F_HASH: self.hash, _F_SIZE: self.size}
        if self.media_type is not None:
            out[_F_MEDIA] = self.media_type
        if self.timestamp is not None:
            out[_F_TS] = self.timestamp
        if self.timestamp_nanos is not None:
            out[_F_NANOS] = self.timestamp_nanos
        if self.extra is not None:
            out[_F_EXTRA] = self.extra
        out.update(self.other)
        return dict(sorted(out.items()))

    @classmethod
    def from_cbor(cls, obj: Any) -> FileRef:
        if not isinstance(obj, dict):
            raise InvalidDirectoryError("a file entry must be a map")
        hash_ = obj.get(_F_HASH)
        if not isinstance(hash_, bytes) or len(hash_) not in (32, 33):
            raise InvalidDirectoryError("a file entry needs a 32-byte hash")
        if len(hash_) == 33:  # tolerate a multihash-prefixed hash
            hash_ = hash_[1:]
        size = _opt_int(obj.get(_F_SIZE), "file size")
        if size is None or size < 0:
            raise InvalidDirectoryError("a file entry needs a non-negative size")
        media = obj.get(_F_MEDIA)
        if media is not None and not isinstance(media, str):
            raise InvalidDirectoryError("media type must be a string")
        extra = obj.get(_F_EXTRA)
        if extra is not None and not isinstance(extra, dict):
            # key 22 may also hold a bare hash-type integer: keep it verbatim
            other_extra: dict[int, Any] = {_F_EXTRA: extra}
            extra = None
        else:
            other_extra = {}
        known = {_F_HASH, _F_SIZE, _F_MEDIA, _F_TS, _F_NANOS, _F_EXTRA}
        other = {k: v for k, v in obj.items() if k not in known}
        other.update(other_extra)
        return cls(
            hash=hash_,
            size=size,
            media_type=media,
            timestamp=_opt_int(obj.get(_F_TS), "timestamp"),
            timestamp_nanos=_opt_int(obj.get(_F_NANOS), "timestamp nanos"),
            extra=extra,
            other=other,
        )


@dataclass(frozen=True)
class DirRef:
    """A sub-directory entry: a 33-byte ``link`` (``0xed || pubkey`` or ``0x1e || hash``)."""

    link: bytes
    timestamp: int | None = None
    timestamp_nanos: int | None = None
    other: dict[int, Any] = field(default_factory=dict)

    @property
    def public_key(self) -> bytes | None:
        """The directory's 32-byte ed25519 key when the link is a registry link."""
        return self.link[1:] if self.link[0] == LINK_ED25519 else None

    def to_cbor(self) -> dict[int, Any]:
        out: dict[int, Any] = {_D_LINK: self.link}
        if self.timestamp is not None:
            out[_D_TS] = self.timestamp
        if self.timestamp_nanos is not None:
            out[_D_NANOS] = self.timestamp_nanos
        out.update(self.other)
        return dict(sorted(out.items()))

    @classmethod
    def from_cbor(cls, obj: Any) -> DirRef:
        if not isinstance(obj, dict):
            raise InvalidDirectoryError("a directory entry must be a map")
        link = obj.get(_D_LINK)
        if (
            not isinstance(link, bytes)
            or len(link) != 33
            or link[0] not in (LINK_BLAKE3, LINK_ED25519)
        ):
            raise InvalidDirectoryError("a directory link must be 33 bytes (0x1e or 0xed type)")
        other = {k: v for k, v in obj.items() if k not in (_D_LINK, _D_TS, _D_NANOS)}
        return cls(
            link=link,
            timestamp=_opt_int(obj.get(_D_TS), "timestamp"),
            timestamp_nanos=_opt_int(obj.get(_D_NANOS), "timestamp nanos"),
            other=other,
        )


@dataclass
class DirV1:
    """A directory: ``header``, sub-directories ``dirs`` and ``files``, keyed by name."""

    header: dict[Any, Any] = field(default_factory=dict)
    dirs: dict[str, DirRef] = field(default_factory=dict)
    files: dict[str, FileRef] = field(default_factory=dict)

    def encode(self) -> bytes:
        """``5f 5d`` + CBOR, names sorted as s5.js sorts them (``localeCompare``)."""
        body = [
            DIRV1_MAGIC,
            self.header,
            {name: self.dirs[name].to_cbor() for name in sorted(self.dirs, key=s5js_sort_key)},
            {name: self.files[name].to_cbor() for name in sorted(self.files, key=s5js_sort_key)},
        ]
        return DIRV1_PREFIX + cbor2.dumps(body)

    @classmethod
    def decode(cls, blob: bytes) -> DirV1:
        """Parse a DirV1 blob (prefix optional); raise :class:`InvalidDirectoryError`."""
        raw = blob[2:] if blob[:2] == DIRV1_PREFIX else blob
        try:
            obj = loads_cbor_untrusted(raw)
        except Exception as exc:  # cbor2 raises several types on garbage
            raise InvalidDirectoryError(f"directory blob is not valid CBOR: {exc}") from exc
        if not isinstance(obj, list) or len(obj) != 4 or obj[0] != DIRV1_MAGIC:
            raise InvalidDirectoryError("directory blob is not a DirV1 array")
        _, header, dirs, files = obj
        if not isinstance(header, dict) or not isinstance(dirs, dict):
            raise InvalidDirectoryError("DirV1 header and dirs must be maps")
        if not isinstance(files, dict):
            raise InvalidDirectoryError("DirV1 files must be a map")
        if not all(isinstance(k, str) for k in (*dirs, *files)):
            raise InvalidDirectoryError("DirV1 entry names must be strings")
        return cls(
            header=header,
            dirs={k: DirRef.from_cbor(v) for k, v in dirs.items()},
            files={k: FileRef.from_cbor(v) for k, v in files.items()},
        )

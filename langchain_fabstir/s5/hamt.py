"""Reading s5.js's sharded directories (HAMT), read-only.

s5.js (Enhanced s5.js, ``src/fs/hamt``) moves a directory's entries into a hash array mapped
trie once it holds 1,000 entries. The DirV1 blob then keeps empty ``dirs``/``files`` maps and
a header::

    {"sharding": {"type": "hamt",
                  "config": {"bitsPerLevel": 5, "maxInlineEntries": 1000, "hashFunction": 0},
                  "root": {"cid": 0x1e || blake3(root blob), "totalEntries": n, "depth": d}}}

The root blob is plain CBOR (no ``5f 5d`` prefix, never encrypted, string-keyed maps)::

    {"version": 1, "config": {...}, "root": node}
    node  = {"bitmap": u32, "children": [child...], "count": n, "depth": d}
    child = {"type": "leaf", "entries": [[key, value], ...]}
          | {"type": "node", "cid": 0x1e || blake3(node blob)}     (node blob = CBOR of node)

Keys are ``"f:" + name`` for files (value ``{"hash": 32 bytes, "size": n}``) and
``"d:" + name`` for directories (value ``{"link": {"type": ..., "hash": ...}}``; s5.js leaves
the public key of a registry link out, the reader derives it from the path). A child's slot
is ``(h >> (depth * bitsPerLevel)) & 31`` of the key's 64-bit hash (xxhash64 for
``hashFunction`` 0, the first 8 bytes of BLAKE3 read big-endian for 1); a fresh root holds all
entries in a single leaf at slot 0 until it splits.

This reader walks every node, so it needs no hash function; the walk is bounded (nodes,
depth, entries). Writing a sharded directory is not supported (:class:`ShardedDirectoryError`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from langchain_fabstir._json import loads_cbor_untrusted
from langchain_fabstir.errors import ShardedDirectoryError, StorageError
from langchain_fabstir.s5.dirv1 import (
    LINK_BLAKE3,
    LINK_ED25519,
    FileRef,
    InvalidDirectoryError,
)

__all__ = [
    "MAX_HAMT_DEPTH",
    "MAX_HAMT_ENTRIES",
    "MAX_HAMT_NODES",
    "HamtEntries",
    "ShardedDirectoryError",
    "read_hamt",
    "sharding_root",
]

MAX_HAMT_NODES = 4096
MAX_HAMT_ENTRIES = 250_000
MAX_HAMT_DEPTH = 13  # 64-bit hash, 5 bits per level

_LINK_TYPES = {
    "fixed_hash_blake3": LINK_BLAKE3,
    "mutable_registry_ed25519": LINK_ED25519,
    "resolver_registry": LINK_ED25519,
}


@dataclass
class HamtEntries:
    """What a HAMT holds: files by name, and directories by name with their 33-byte link
    (``None`` when s5.js left the link's key out)."""

    files: dict[str, FileRef] = field(default_factory=dict)
    dirs: dict[str, bytes | None] = field(default_factory=dict)


def sharding_root(header: dict[Any, Any]) -> bytes | None:
    """The 32-byte hash of the HAMT root blob named by a DirV1 header, or ``None`` when the
    directory is not sharded. A ``sharding`` header this reader does not understand raises
    :class:`InvalidDirectoryError` (never read as an empty directory)."""
    sharding = header.get("sharding")
    if sharding is None:
        return None
    if not isinstance(sharding, dict) or sharding.get("type") != "hamt":
        raise InvalidDirectoryError("unsupported directory sharding header")
    root = sharding.get("root")
    if root is None:  # declared but empty (s5.js only reads sharded dirs with a root cid)
        return None
    cid = root.get("cid") if isinstance(root, dict) else None
    return _blob_hash(cid, "the HAMT root")


def _blob_hash(cid: Any, what: str) -> bytes:
    if isinstance(cid, bytes) and len(cid) == 33 and cid[0] in (0x1E, 0x1F):
        return cid[1:]
    if isinstance(cid, bytes) and len(cid) == 32:
        return cid
    raise InvalidDirectoryError(f"{what} must be referenced by a 32-byte BLAKE3 hash")


def _decode(blob: bytes, what: str) -> Any:
    try:
        return loads_cbor_untrusted(blob)
    except Exception as exc:  # cbor2 raises several types on garbage
        raise InvalidDirectoryError(f"{what} is not valid CBOR: {exc}") from exc


def _file_ref(value: Any) -> FileRef:
    if not isinstance(value, dict):
        raise InvalidDirectoryError("a HAMT file entry must be a map")
    media = value.get("media_type")
    return FileRef.from_cbor(
        {3: value.get("hash"), 4: value.get("size")}
        | ({6: media} if isinstance(media, str) else {})
    )


def _dir_link(value: Any) -> bytes | None:
    link = value.get("link") if isinstance(value, dict) else None
    if isinstance(link, bytes) and len(link) == 33 and link[0] in (LINK_BLAKE3, LINK_ED25519):
        return link
    if isinstance(link, dict):
        kind = _LINK_TYPES.get(str(link.get("type")))
        key = link.get("publicKey", link.get("hash"))
        if kind is not None and isinstance(key, bytes) and len(key) == 32:
            return bytes([kind]) + key
        if kind is not None:
            return None
    raise InvalidDirectoryError("a HAMT directory entry needs a link")


async def read_hamt(
    fetch: Callable[[bytes], Awaitable[bytes]],
    root_hash: bytes,
    *,
    max_nodes: int = MAX_HAMT_NODES,
    max_entries: int = MAX_HAMT_ENTRIES,
) -> HamtEntries:
    """All entries of the HAMT whose root blob hashes to ``root_hash``.

    ``fetch(hash32)`` returns a verified blob. Raises :class:`InvalidDirectoryError` on a
    malformed tree and :class:`StorageError` past the node or entry bounds.
    """
    top = _decode(await fetch(root_hash), "the HAMT root")
    if not isinstance(top, dict) or not isinstance(top.get("root"), dict):
        raise InvalidDirectoryError("the HAMT root blob has no root node")
    out = HamtEntries()
    stack: list[tuple[Any, int]] = [(top["root"], 0)]
    nodes = 1
    while stack:
        node, depth = stack.pop()
        children = node.get("children") if isinstance(node, dict) else None
        if not isinstance(children, list):
            raise InvalidDirectoryError("a HAMT node needs a list of children")
        for child in children:
            kind = child.get("type") if isinstance(child, dict) else None
            if kind == "leaf":
                entries = child.get("entries")
                if not isinstance(entries, list):
                    raise InvalidDirectoryError("a HAMT leaf needs a list of entries")
                for entry in entries:
                    if not (isinstance(entry, list) and len(entry) == 2):
                        raise InvalidDirectoryError("a HAMT entry must be a [key, value] pair")
                    key, value = entry
                    if not isinstance(key, str) or key[:2] not in ("f:", "d:") or len(key) < 3:
                        raise InvalidDirectoryError("a HAMT key must be 'f:name' or 'd:name'")
                    if key[0] == "f":
                        out.files[key[2:]] = _file_ref(value)
                    else:
                        out.dirs[key[2:]] = _dir_link(value)
                    if len(out.files) + len(out.dirs) > max_entries:
                        raise StorageError(
                            f"sharded directory holds over {max_entries} entries",
                            details={"limit": max_entries},
                        )
            elif kind == "node":
                nodes += 1
                if nodes > max_nodes or depth + 1 > MAX_HAMT_DEPTH:
                    raise StorageError(
                        f"sharded directory exceeds {max_nodes} nodes or depth {MAX_HAMT_DEPTH}",
                        details={"nodes": nodes, "depth": depth + 1},
                    )
                sub = _decode(await fetch(_blob_hash(child.get("cid"), "a HAMT node")), "a node")
                if not isinstance(sub, dict):
                    raise InvalidDirectoryError("a HAMT node blob must be a map")
                stack.append((sub, depth + 1))
            else:
                raise InvalidDirectoryError("a HAMT child must be a leaf or a node")
    return out

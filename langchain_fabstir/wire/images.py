"""Images sent with a prompt: :class:`ImageInput`, the node's limits, and LangChain's image
content blocks turned into the node's ``images`` entries. No I/O beyond reading a file.

>>> img = ImageInput.from_bytes(b"GIF89a" + bytes(20))
>>> img.format, img.to_wire()["data"][:8], img
('gif', 'R0lGODlh', ImageInput(format='gif', base64_chars=36))
>>> try:
...     ImageInput.from_base64("bm90IGFuIGltYWdl", "image/png")
... except InvalidImageError as e:
...     print(e.code)
INVALID_IMAGE_DATA
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union

from langchain_fabstir.errors import (
    ImageTooLargeError,
    InvalidImageError,
    InvalidImageFormatError,
)

__all__ = [
    "FORMATS",
    "MAX_BASE64_CHARS",
    "NODE_MAX_MESSAGE_BYTES",
    "VISION_FEATURE",
    "ImageFormat",
    "ImageInput",
    "ImageLike",
    "check_message_size",
    "from_content_block",
    "host_vision",
    "is_image_block",
    "to_images",
]

ImageFormat = Literal["png", "jpeg", "webp", "gif"]
FORMATS: tuple[str, ...] = ("png", "jpeg", "webp", "gif")
"""The formats hosts take (the SDK's ``image-validation.ts``)."""
MAX_BASE64_CHARS = 13_333_334
"""The most base64 characters one image may have (about 10 MB), as the SDK checks."""
NODE_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""The largest WebSocket frame a node accepts (its library's default, 16 MiB): a prompt
whose frame is larger never arrives."""
VISION_FEATURE = "vision"
"""The extension a host announces (greeting and ``/v1/version``) when it reads images."""

_MIME = {
    "png": "png",
    "jpeg": "jpeg",
    "jpg": "jpeg",
    "pjpeg": "jpeg",
    "webp": "webp",
    "gif": "gif",
}
_OTHER_KINDS = (
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"%PDF", "PDF"),
    (b"<svg", "SVG"),
    (b"<?xml", "SVG/XML"),
)


def _sniff(head: bytes) -> str | None:
    """The format of image bytes from their first bytes: one of :data:`FORMATS`, or
    ``None``."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def _not_an_image(head: bytes) -> InvalidImageError:
    for magic, kind in _OTHER_KINDS:
        if head.startswith(magic):
            return InvalidImageFormatError(
                f"the image is a {kind} file; hosts take png, jpeg, webp and gif: convert it"
            )
    if head[4:8] == b"ftyp":
        return InvalidImageFormatError(
            "the image is a HEIC/AVIF (ISO media) file; hosts take png, jpeg, webp and gif: "
            "convert it"
        )
    return InvalidImageError(
        f"the image data is not a PNG, JPEG, WebP or GIF image (it starts with {head[:8]!r})"
    )


def _format(value: str) -> str:
    """``png`` from ``png``, ``image/png``, ``PNG``; ``image/jpg`` -> ``jpeg``."""
    name = value.strip().lower()
    name = name.split(";", 1)[0].strip()
    if name.startswith("image/"):
        name = name[len("image/") :]
    fmt = _MIME.get(name)
    if fmt is None:
        raise InvalidImageFormatError(
            f"unsupported image format {value!r}: hosts take png, jpeg, webp and gif"
        )
    return fmt


def _too_large(chars: int) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"the image is {chars:,} base64 characters (about {chars * 3 / 4 / 1e6:.1f} MB); "
        f"hosts take at most {MAX_BASE64_CHARS:,} (about 10 MB): send a smaller image",
        details={"base64_chars": chars, "limit": MAX_BASE64_CHARS},
    )


class ImageInput:
    """One image for a prompt: raw base64 data and its format, checked as hosts need it.

    Build one with :meth:`from_bytes`, :meth:`from_path`, :meth:`from_base64` or
    :meth:`from_data_url` (or let ``images=[...]`` of ``SessionManager.prompt`` take
    ``bytes``, a :class:`~pathlib.Path` or a ``data:`` URL). Every constructor checks, before
    anything is sent: the format is png, jpeg, webp or gif (``INVALID_IMAGE_FORMAT``;
    ``image/jpg`` is read as jpeg), the base64 has at most :data:`MAX_BASE64_CHARS`
    characters (``IMAGE_TOO_LARGE``), and it decodes to an image of one of those formats
    (``INVALID_IMAGE_DATA``). The format sent is the one the bytes have (a PNG labelled
    ``image/jpeg`` goes as png). Its ``repr`` shows the format and size, never the data.
    """

    __slots__ = ("data", "format")

    data: str
    """The image as base64 (no ``data:`` prefix), as the node's ``images[].data``."""
    format: str
    """``png``, ``jpeg``, ``webp`` or ``gif``."""

    def __init__(self, data: str, format: str) -> None:
        # The constructors below check the data; this checks what is cheap to check.
        if not isinstance(data, str) or not data:
            raise InvalidImageError("the image data must be a non-empty base64 string")
        if len(data) > MAX_BASE64_CHARS:
            raise _too_large(len(data))
        self.data = data
        self.format = _format(format)

    def __repr__(self) -> str:
        return f"ImageInput(format={self.format!r}, base64_chars={len(self.data)})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ImageInput)
            and other.format == self.format
            and other.data == self.data
        )

    def __hash__(self) -> int:
        return hash((self.format, len(self.data), self.data[:64]))

    @classmethod
    def from_bytes(
        cls, data: bytes | bytearray | memoryview, format: str | None = None
    ) -> ImageInput:
        """An image from its bytes (``format`` is read from the bytes; a given one is only
        checked to be a format hosts take)."""
        raw = bytes(data)
        if format is not None:
            _format(format)
        if not raw:
            raise InvalidImageError("the image is empty")
        chars = 4 * ((len(raw) + 2) // 3)
        if chars > MAX_BASE64_CHARS:
            raise _too_large(chars)
        fmt = _sniff(raw[:16])
        if fmt is None:
            raise _not_an_image(raw[:16])
        return cls(base64.b64encode(raw).decode("ascii"), fmt)

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> ImageInput:
        """An image read from a file (its format from its bytes, not its name)."""
        p = Path(path)
        try:
            size = p.stat().st_size
            if 4 * ((size + 2) // 3) > MAX_BASE64_CHARS:
                raise _too_large(4 * ((size + 2) // 3))
            raw = p.read_bytes()
        except OSError as exc:
            raise InvalidImageError(
                f"cannot read the image file {str(p)!r}: {exc.strerror or exc}"
            ) from None
        return cls.from_bytes(raw)

    @classmethod
    def from_base64(cls, data: str, format: str | None = None) -> ImageInput:
        """An image from base64 text (``format``: ``png`` or a MIME type such as
        ``image/png``; read from the bytes when ``None``)."""
        if not isinstance(data, str) or not data:
            raise InvalidImageError("the image data must be a non-empty base64 string")
        if data.startswith("data:"):
            return cls.from_data_url(data)
        if format is not None:
            _format(format)
        text = "".join(data.split()) if any(c.isspace() for c in data[:4096]) else data
        if len(text) > MAX_BASE64_CHARS:
            raise _too_large(len(text))
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidImageError(
                "the image data is not valid base64 (give raw base64, without a data: prefix, "
                "or a data: URL)"
            ) from None
        if not raw:
            raise InvalidImageError("the image is empty")
        fmt = _sniff(raw[:16])
        if fmt is None:
            raise _not_an_image(raw[:16])
        return cls(text, fmt)

    @classmethod
    def from_data_url(cls, url: str) -> ImageInput:
        """An image from a ``data:image/...;base64,...`` URL. Any other URL is refused
        (``INVALID_IMAGE_DATA``): images are never fetched."""
        if not url.startswith("data:"):
            shown = url if len(url) <= 80 else url[:77] + "..."
            raise InvalidImageError(
                f"image URL {shown!r} is not a data: URL; images are never fetched: download "
                "it yourself and pass the bytes (or a base64 image block)"
            )
        header, sep, body = url.partition(",")
        if not sep or not header.endswith(";base64"):
            raise InvalidImageError(
                "the data: URL is not base64 (expected data:image/<format>;base64,<data>)"
            )
        mime = header[len("data:") : -len(";base64")]
        return cls.from_base64(body, mime or None)

    @classmethod
    def coerce(cls, value: ImageLike) -> ImageInput:
        """An :class:`ImageInput` from what ``images=[...]`` accepts: an ``ImageInput``,
        ``bytes``, a :class:`~pathlib.Path` (or ``os.PathLike``), or a ``str`` that is a
        ``data:`` URL (a ``str`` that is not is read as a file path; ``http(s)://`` URLs
        are refused, never fetched)."""
        if isinstance(value, ImageInput):
            return value
        if isinstance(value, (bytes, bytearray, memoryview)):
            return cls.from_bytes(value)
        if isinstance(value, str):
            if value.startswith("data:"):
                return cls.from_data_url(value)
            if "://" in value[:16]:
                return cls.from_data_url(value)  # (refused: not fetched)
            if len(value) > 4096:
                raise InvalidImageError(
                    "a long str is not a file path: for base64 data use "
                    "ImageInput.from_base64(data, 'png') or a data: URL"
                )
            return cls.from_path(value)
        if isinstance(value, os.PathLike):
            return cls.from_path(value)
        raise InvalidImageError(
            f"an image must be an ImageInput, bytes, a Path or a data: URL, not "
            f"{type(value).__name__}"
        )

    def to_wire(self) -> dict[str, str]:
        """The node's ``images`` entry: ``{"data": <base64>, "format": <format>}``."""
        return {"data": self.data, "format": self.format}


ImageLike = Union[ImageInput, bytes, bytearray, memoryview, str, "os.PathLike[str]"]
"""What ``images=[...]`` accepts (see :meth:`ImageInput.coerce`)."""


def to_images(values: Iterable[ImageLike] | None) -> list[ImageInput]:
    """``images=`` as a checked list (raises the ``INVALID_IMAGE_*`` /
    ``IMAGE_TOO_LARGE`` errors; nothing is sent before this returns)."""
    if values is None:
        return []
    if isinstance(values, (str, bytes, bytearray, memoryview, ImageInput, os.PathLike)):
        values = [values]
    images = [ImageInput.coerce(v) for v in values]
    check_message_size(images, encrypted=False)
    return images


def check_message_size(images: Sequence[ImageInput], *, encrypted: bool, text: int = 0) -> None:
    """Refuse images that cannot reach a node in one WebSocket message
    (:data:`NODE_MAX_MESSAGE_BYTES`): plaintext carries their base64 once, encrypted mode
    as hex of the sealed JSON, i.e. twice. ``text``: characters of the rest of the frame
    (prompt, context) when known."""
    total = sum(len(i.data) + 32 for i in images) + text
    size = 2 * total if encrypted else total
    if images and size > NODE_MAX_MESSAGE_BYTES - 64 * 1024:
        mode = "an encrypted" if encrypted else "a"
        raise ImageTooLargeError(
            f"the images make {mode} prompt frame of about {size / 2**20:.1f} MiB; a node "
            f"takes WebSocket messages of at most {NODE_MAX_MESSAGE_BYTES // 2**20} MiB "
            + ("(encryption sends them as hex, twice their base64 size)" if encrypted else "")
            + ": send fewer or smaller images",
            details={"frame_bytes": size, "limit": NODE_MAX_MESSAGE_BYTES},
        )


def is_image_block(block: object) -> bool:
    """Whether a LangChain content block is an image (``image`` or ``image_url``)."""
    return isinstance(block, Mapping) and block.get("type") in ("image", "image_url")


def from_content_block(block: Mapping[str, Any]) -> ImageInput:
    """An :class:`ImageInput` from a LangChain image content block:

    - v1 standard ``{"type": "image", "base64": ..., "mime_type": "image/png"}``;
    - the older ``{"type": "image", "source_type": "base64", "data": ..., "mime_type"}``;
    - OpenAI's ``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}``
      (or ``"image_url": "<url>"``);
    - Anthropic's ``{"type": "image", "source": {"type": "base64", "media_type", "data"}}``.

    URLs that are not ``data:`` URLs (``{"type": "image", "url": "https://..."}``) and file
    ids are refused (``INVALID_IMAGE_DATA``): images are never fetched.
    """
    kind = block.get("type")
    if kind == "image_url":
        ref = block.get("image_url")
        url = ref.get("url") if isinstance(ref, Mapping) else ref
        if not isinstance(url, str):
            raise InvalidImageError("an image_url block without a url")
        return ImageInput.from_data_url(url)
    mime = block.get("mime_type")
    mime = mime if isinstance(mime, str) and mime else None
    if isinstance(block.get("base64"), str):
        return ImageInput.from_base64(block["base64"], mime)
    source_type = block.get("source_type")
    if source_type == "base64" and isinstance(block.get("data"), str):
        return ImageInput.from_base64(block["data"], mime)
    source = block.get("source")
    if isinstance(source, Mapping) and source.get("type") == "base64":
        media = source.get("media_type")
        return ImageInput.from_base64(
            str(source.get("data") or ""), media if isinstance(media, str) else None
        )
    url = block.get("url")
    if isinstance(url, str):
        return ImageInput.from_data_url(url)
    if isinstance(source, Mapping) and isinstance(source.get("url"), str):
        return ImageInput.from_data_url(source["url"])
    if block.get("file_id") is not None or source_type == "id":
        raise InvalidImageError(
            "an image given by file id cannot be sent: hosts take the image's data (base64)"
        )
    raise InvalidImageError(
        'an image block without data: give base64 ("base64" and "mime_type") or a data: URL'
    )


def host_vision(features: Sequence[str]) -> bool | None:
    """What a host announced about images: ``True`` (it announced ``vision``), ``False``
    (it announces its extensions and ``vision`` is not one: it would drop images), or
    ``None`` (it announces nothing, as deployed nodes: known only from its answer, by the
    ``vlm_tokens`` it reports)."""
    if VISION_FEATURE in features:
        return True
    return False if features else None

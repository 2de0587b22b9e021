"""``ImageInput`` and LangChain image blocks: what hosts take, refused with typed codes."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from langchain_fabstir.errors import ImageTooLargeError, InvalidImageError
from langchain_fabstir.wire.images import (
    MAX_BASE64_CHARS,
    ImageInput,
    from_content_block,
    host_vision,
    to_images,
)
from tests.sidecars import png

PNG = png(3, 2)
B64 = base64.b64encode(PNG).decode()
HEADS = {
    "png": PNG,
    "jpeg": b"\xff\xd8\xff\xe0" + bytes(16),
    "gif": b"GIF87a" + bytes(16),
    "webp": b"RIFF\x10\x00\x00\x00WEBPVP8 " + bytes(8),
}


@pytest.mark.parametrize("fmt", sorted(HEADS))
def test_the_format_is_the_one_the_bytes_have(fmt: str) -> None:
    data = HEADS[fmt]
    for image in (
        ImageInput.from_bytes(data),
        ImageInput.from_base64(base64.b64encode(data).decode(), "image/jpg"),
        from_content_block(
            {
                "type": "image_url",
                "image_url": {"url": "data:image/png;base64," + base64.b64encode(data).decode()},
            }
        ),
    ):
        assert image.format == fmt
        assert base64.b64decode(image.to_wire()["data"]) == data


def test_inputs_images_accepts(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(PNG)
    wrapped = "\n".join(B64[i : i + 76] for i in range(0, len(B64), 76))
    images = to_images([PNG, path, str(path), "data:image/png;base64," + B64])
    images.append(ImageInput.from_base64(wrapped))
    images.append(from_content_block({"type": "image", "source_type": "base64", "data": B64}))
    images.append(
        from_content_block(
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": B64}}
        )
    )
    assert {i.data for i in images} == {B64} and {i.format for i in images} == {"png"}
    assert to_images(PNG) == [images[0]] and to_images(None) == []
    assert "iVBOR" not in repr(images[0])  # the data is never shown


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("https://example.org/a.png", "INVALID_IMAGE_DATA"),
        ("data:image/png,rawtext", "INVALID_IMAGE_DATA"),
        ("/nonexistent/a.png", "INVALID_IMAGE_DATA"),
        ("x" * 5000, "INVALID_IMAGE_DATA"),
        (b"", "INVALID_IMAGE_DATA"),
        (b"\x00\x00\x00\x18ftypheic" + bytes(8), "INVALID_IMAGE_FORMAT"),
        (b"%PDF-1.7" + bytes(8), "INVALID_IMAGE_FORMAT"),
        (b"\x89PNG\r\n\x1a\n" + bytes(MAX_BASE64_CHARS * 3 // 4 + 3), "IMAGE_TOO_LARGE"),
    ],
)
def test_what_hosts_cannot_take_is_refused(value: object, code: str) -> None:
    with pytest.raises(InvalidImageError) as info:
        to_images([value])  # type: ignore[list-item]
    assert info.value.code == code


def test_blocks_without_data_and_direct_construction_are_checked() -> None:
    for block in ({"type": "image", "file_id": "f-1"}, {"type": "image"}):
        with pytest.raises(InvalidImageError):
            from_content_block(block)
    with pytest.raises(InvalidImageError, match="unsupported image format 'bmp'"):
        ImageInput(B64, "bmp")
    with pytest.raises(ImageTooLargeError):
        ImageInput("A" * (MAX_BASE64_CHARS + 1), "png")


def test_what_a_host_announced_about_vision() -> None:
    assert host_vision(["seed", "vision"]) is True
    assert host_vision(["seed"]) is False  # it announces extensions, not vision
    assert host_vision([]) is None  # a deployed node: known from its answer only

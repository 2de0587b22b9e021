""":class:`FabstirImageGenerationTool`: a LangChain tool generating images through the
``POST /v1/images/generate`` of Fabstir hosts."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import struct
from pathlib import Path
from typing import Any, Literal, get_args

from langchain_core.callbacks import AsyncCallbackManagerForToolRun, CallbackManagerForToolRun
from langchain_core.tools import BaseTool, ToolException
from pydantic import BaseModel, ConfigDict, Field

from langchain_fabstir._host_http import (
    HostRoutes,
    NodeAnswer,
    error_message,
    service_error,
)
from langchain_fabstir._sync import run_sync
from langchain_fabstir.errors import (
    DiffusionUnavailableError,
    FabstirError,
    ImageGenerationError,
    InvalidRequestError,
    PromptBlockedError,
    ProtocolError,
)

__all__ = ["IMAGE_SIZES", "FabstirImageGenerationTool", "ImageGenerationInput"]

ImageSize = Literal["256x256", "512x512", "768x768", "1024x1024", "1024x768", "768x1024"]
IMAGE_SIZES: tuple[str, ...] = get_args(ImageSize)
"""The sizes nodes generate (PROTOCOL.md section 6.3)."""
MAX_PROMPT_CHARS = 2000
"""Longest prompt the SDK sends (nodes take longer ones; the tool keeps the SDK's bound)."""
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/webp": "webp"}
_METADATA = (
    "model",
    "size",
    "steps",
    "seed",
    "processingTimeMs",
    "safety",
    "billing",
    "provider",
    "chainId",
    "chainName",
    "nativeToken",
)


class ImageGenerationInput(BaseModel):
    """What a model passes to the tool."""

    prompt: str = Field(
        min_length=1,
        max_length=MAX_PROMPT_CHARS,
        description="What the image should show: subject, style, composition, lighting.",
    )
    size: ImageSize | None = Field(
        default=None, description="Width x height in pixels (default: the tool's size)."
    )
    negative_prompt: str | None = Field(default=None, description="What the image should not show.")
    seed: int | None = Field(
        default=None,
        ge=0,
        lt=2**64,
        description="A seed, for the same image again from the same prompt.",
    )


class FabstirImageGenerationTool(HostRoutes, BaseTool):
    """Generate an image from a text prompt on a Fabstir host (``POST /v1/images/generate``).

    The host runs the prompt through its keyword safety check and its diffusion sidecar
    (FLUX.2 klein on deployed nodes). The tool answers in LangChain's
    ``content_and_artifact`` form: called with a ``ToolCall`` (as an agent does) it
    returns a ``ToolMessage`` whose ``content`` is a text block and the image as a
    standard content block ``{"type": "image", "base64": ..., "mime_type":
    "image/png"}``, and whose ``artifact`` is the host's metadata (``model``, ``size``,
    ``steps``, ``seed``, ``processingTimeMs``, ``safety``, ``billing``, ``provider``,
    ``chainId``, ``chainName``, ``nativeToken``) plus ``host_url``, ``mime_type``,
    ``bytes``, ``width``/``height`` (read from the image) and ``sha256``. Called with
    plain arguments (``tool.invoke({"prompt": ...})``) it returns the content only.

    With ``output_dir`` the image is written there instead (``fabstir-<sha256
    prefix>.<ext>``, created if missing) and the content is a text block naming the
    file; the artifact then has ``path``. Use that for models that cannot take images in
    tool results, or to keep large images out of the conversation.

    The tool checks the answer: the image must be valid base64 of at most
    ``max_image_bytes`` bytes and start like a PNG, JPEG, GIF or WebP file.

    Cost: ``POST /v1/images/generate`` is free on nodes (no job, no billing; the
    ``billing`` block says what the same image costs inside a paid session), so a retry
    spends nothing. Hosts and failover work as for
    :class:`~langchain_fabstir.FabstirSearchRetriever` (``host_url``, a list, or
    ``discovery``); a host without a diffusion sidecar (503) is not asked twice; a
    blocked or invalid prompt (400) is not retried.

    Privacy: the prompt travels as plain JSON over HTTP(S), readable by the host (it is
    not end-to-end encrypted like chat sessions): use an ``https://`` host URL.

    Errors (all :class:`~langchain_fabstir.errors.FabstirError`, with stable codes):
    ``INVALID_REQUEST`` (a blank prompt, a size or steps nodes refuse, the host's 400),
    ``PROMPT_BLOCKED`` (the host's safety check), ``DIFFUSION_SERVICE_UNAVAILABLE``
    (503, or no route there), ``IMAGE_GENERATION_FAILED`` (500: the sidecar failed),
    ``PROTOCOL_ERROR`` (not the node's shape, not an image, too large),
    ``RATE_LIMITED``, ``HOST_UNREACHABLE``, ``RESPONSE_TIMEOUT``. With
    ``handle_tool_error`` set, these become LangChain's ``ToolException`` (the typed
    error as its ``__cause__``), so an agent receives the error text (``[CODE]
    message``) as the tool's answer instead.

    Example::

        from langchain_fabstir import FabstirImageGenerationTool

        tool = FabstirImageGenerationTool(host_url="http://127.0.0.1:8080", size="512x512")
        message = tool.invoke(
            {"type": "tool_call", "id": "1", "name": tool.name,
             "args": {"prompt": "a lighthouse at dusk, oil painting"}}
        )
        message.content[1]["mime_type"], message.artifact["size"]  # 'image/png', '512x512'
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str = "fabstir_image_generation"
    description: str = (
        "Generate an image from a text description. Input: a detailed prompt (subject, "
        "style, composition); optionally size, negative_prompt, seed. Returns the image."
    )
    args_schema: type[BaseModel] = ImageGenerationInput
    response_format: Literal["content", "content_and_artifact"] = "content_and_artifact"

    model: str | None = Field(default=None, description="Diffusion model id (default: the host's).")
    size: ImageSize = Field(default="1024x1024", description="Size when the call names none.")
    steps: int = Field(default=4, ge=1, le=100, description="Diffusion steps (1..100).")
    guidance_scale: float | None = Field(
        default=None, description="Classifier-free guidance (nodes default to 3.5)."
    )
    safety_level: Literal["strict", "moderate", "permissive"] = Field(
        default="strict", description="Safety level sent to the host (echoed back)."
    )
    chain_id: int = Field(default=84532, ge=0, description="chainId sent to the host.")
    output_dir: str | Path | None = Field(
        default=None, description="Write images here instead of returning them inline."
    )
    timeout: float = Field(
        default=180.0,
        gt=0,
        description="Seconds one request may take (nodes give their sidecar 120 s).",
    )
    max_retries: int = Field(
        default=1, ge=0, description="Further attempts after a retryable failure."
    )
    max_image_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="Largest image accepted, in bytes."
    )
    # --- BaseTool ---------------------------------------------------------------------

    def _run(
        self,
        prompt: str,
        size: str | None = None,
        negative_prompt: str | None = None,
        seed: int | None = None,
        run_manager: CallbackManagerForToolRun | None = None,
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        return run_sync(self._agenerate(prompt, size, negative_prompt, seed))

    async def _arun(
        self,
        prompt: str,
        size: str | None = None,
        negative_prompt: str | None = None,
        seed: int | None = None,
        run_manager: AsyncCallbackManagerForToolRun | None = None,
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        return await self._agenerate(prompt, size, negative_prompt, seed)

    async def _agenerate(
        self, prompt: str, size: str | None, negative_prompt: str | None, seed: int | None
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        try:
            return await self._generate(prompt, size, negative_prompt, seed)
        except FabstirError as exc:
            if self.handle_tool_error:  # LangChain hands only ToolException to the agent
                raise ToolException(str(exc)) from exc
            raise

    # --- one image --------------------------------------------------------------------

    async def _generate(
        self, prompt: str, size: str | None, negative_prompt: str | None, seed: int | None
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        if not prompt.strip():
            raise InvalidRequestError("the prompt is blank: describe the image to generate")
        size = size or self.size
        if size not in IMAGE_SIZES:
            raise InvalidRequestError(f"size {size!r} is not one of {', '.join(IMAGE_SIZES)}")
        body: dict[str, Any] = {
            "prompt": prompt,
            "size": size,
            "steps": self.steps,
            "safetyLevel": self.safety_level,
            "chainId": self.chain_id,
        }
        for key, value in (
            ("model", self.model),
            ("seed", seed),
            ("negativePrompt", negative_prompt),
            ("guidanceScale", self.guidance_scale),
        ):
            if value is not None:
                body[key] = value
        # The base64 of the largest image accepted, and the metadata around it.
        cap = (self.max_image_bytes + 2) // 3 * 4 + 64 * 1024
        async with self._connect(self.timeout) as (client, hosts):
            image, metadata = await self._post(
                client,
                hosts,
                "/v1/images/generate",
                body,
                max_bytes=cap,
                refused=_image_error,
                parse=self._parse,
            )
        if self.output_dir is not None:  # file I/O off the event loop
            return await asyncio.to_thread(self._output, image, metadata)
        return self._output(image, metadata)

    def _parse(self, answer: NodeAnswer, host: str) -> tuple[bytes, dict[str, Any]]:
        data = answer.json(host)
        encoded = data.get("image") if isinstance(data, dict) else None
        if not isinstance(encoded, str) or not encoded:
            raise ProtocolError(f"{answer.url} answered without an 'image'", host_url=host)
        try:
            image = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError(
                f"{answer.url}: 'image' is not valid base64 ({exc})", host_url=host
            ) from exc
        if len(image) > self.max_image_bytes:
            raise ProtocolError(
                f"{answer.url}: the image is {len(image)} bytes, more than max_image_bytes="
                f"{self.max_image_bytes}",
                host_url=host,
                details={"limit": self.max_image_bytes},
            )
        mime = _sniff(image)
        if mime is None:
            raise ProtocolError(
                f"{answer.url}: 'image' is not a PNG, JPEG, GIF or WebP file",
                host_url=host,
                details={"head": image[:8].hex()},
            )
        metadata = {k: data[k] for k in _METADATA if k in data}
        metadata.update(
            host_url=host,
            mime_type=mime,
            bytes=len(image),
            sha256=hashlib.sha256(image).hexdigest(),
        )
        dimensions = _png_dimensions(image) if mime == "image/png" else None
        if dimensions is not None:
            metadata["width"], metadata["height"] = dimensions
        return image, metadata

    def _output(
        self, image: bytes, metadata: dict[str, Any]
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        mime = metadata["mime_type"]
        what = f"{metadata.get('size', '?')} {_EXTENSIONS[mime].upper()} image"
        if self.output_dir is not None:
            folder = Path(self.output_dir).expanduser()
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"fabstir-{metadata['sha256'][:16]}.{_EXTENSIONS[mime]}"
            tmp = path.with_name(path.name + ".part")
            tmp.write_bytes(image)
            tmp.replace(path)  # never a half-written file under the final name
            metadata["path"] = str(path)
            return [{"type": "text", "text": f"Generated a {what}, saved to {path}"}], metadata
        block = {
            "type": "image",
            "base64": base64.b64encode(image).decode("ascii"),
            "mime_type": mime,
        }
        return [{"type": "text", "text": f"Generated a {what}."}, block], metadata


def _sniff(image: bytes) -> str | None:
    for magic, mime in _MAGIC:
        if image.startswith(magic):
            return mime
    if image[:4] == b"RIFF" and image[8:12] == b"WEBP":
        return "image/webp"
    return None


def _png_dimensions(image: bytes) -> tuple[int, int] | None:
    if len(image) < 24 or image[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", image[16:24])
    return int(width), int(height)


def _image_error(answer: NodeAnswer, host: str) -> FabstirError:
    message = error_message(answer)
    details: dict[str, Any] = {"status": answer.status}
    if answer.status == 400 and message.startswith(("Blocked keyword", "Custom blocked term")):
        return PromptBlockedError(
            f"{answer.url}: the host's safety check refused the prompt ({message}); rephrase it",
            host_url=host,
            details=details,
        )
    return service_error(
        answer,
        host,
        service="image generation",
        unavailable=DiffusionUnavailableError,
        failed=ImageGenerationError,
    )

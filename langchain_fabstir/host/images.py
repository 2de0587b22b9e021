"""The reference host's ``POST /v1/images/generate``: a node's image generation over a
diffusion sidecar speaking OpenAI's images API.

Deployed nodes call an SGLang Diffusion sidecar (``DIFFUSION_ENDPOINT``) with
``response_format: b64_json`` (PROTOCOL.md sections 6.3 and 6.4). The reference host calls
the sidecar given on the command line (``fabstir host --diffusion-upstream URL``), applies
the node's validation and keyword prompt-safety check first, and answers as a node does;
without a sidecar it answers 503 ``Diffusion service not available``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from langchain_fabstir._json import loads_untrusted
from langchain_fabstir.host._routes import error as _error
from langchain_fabstir.host._routes import read_json
from langchain_fabstir.host._upstream import UpstreamError, call_upstream

__all__ = [
    "ALLOWED_SIZES",
    "BLOCKED_KEYWORDS",
    "DEFAULT_DIFFUSION_MODEL",
    "ImageRoute",
    "generation_units",
]

ALLOWED_SIZES = ("256x256", "512x512", "768x768", "1024x1024", "1024x768", "768x1024")
"""The sizes a node generates (diffusion/client.rs)."""
DEFAULT_DIFFUSION_MODEL = "flux2-klein-4b"
"""The model a node names when the request names none (``DIFFUSION_MODEL_NAME``'s default)."""
BLOCKED_KEYWORDS = (
    "nude",
    "naked",
    "pornographic",
    "explicit sexual",
    "gore",
    "dismember",
    "graphic violence",
    "suicide",
    "self-harm",
    "bomb making",
    "illegal drugs",
    "child exploitation",
)
"""The node's prompt-safety keywords (all in categories its default config blocks)."""

_U32 = 2**32
_U64 = 2**64
_OPTIONAL_STRINGS = ("model", "size", "negativePrompt", "safetyLevel", "sessionId")
_OPTIONAL_UINTS = {"steps": _U32, "seed": _U64, "chainId": _U64, "jobId": _U64}


def generation_units(size: str, steps: int) -> tuple[float, float]:
    """``(units, megapixels)`` a node bills: megapixels x steps/20 x 1.0 (billing.rs)."""
    width, height = (int(n) for n in size.split("x"))
    megapixels = width * height / 1_048_576
    return megapixels * steps / 20.0, megapixels


class ImageRoute:
    """``POST /v1/images/generate`` as a deployed node answers it (PROTOCOL.md section 6.4).

    ``upstream`` is the base URL of an OpenAI-compatible images API, or ``None`` (503
    ``Diffusion service not available``). For a valid, safe request the host sends, as a
    node does::

        POST {upstream}/v1/images/generations
        {"prompt", "model": <request's model or diffusion_model>, "size", "n": 1,
         "response_format": "b64_json", "guidance_scale", "num_inference_steps",
         "seed"?, "negative_prompt"?}

    and takes ``data[0].b64_json`` from the answer. The reply is the node's
    ``GenerateImageResponse`` (``image``, ``model``, ``size``, ``steps``, ``seed`` (0
    when none was asked), ``processingTimeMs``, ``safety``, ``billing``, ``provider``,
    ``chainId``, ``chainName``, ``nativeToken``). Errors are the node's: 400 with the
    validation message (``prompt must not be empty``, ``invalid size '...'; allowed:
    ...``, ``steps must be between 1 and 100, got N``) or ``Blocked keyword detected:
    <keyword>``; 503 without a sidecar; 500 ``Image generation failed: <reason>`` when
    the sidecar fails, answers another shape, takes more than ``timeout`` seconds in
    all (nodes: 120) or sends more than ``max_upstream_bytes``. At most
    ``max_concurrent`` generations run at once (a bound of the reference host, invisible
    in the protocol: it caps the memory held by answers in flight; the others wait, within the same
    ``timeout``). Like a node it neither checks nor re-encodes the image.
    """

    def __init__(
        self,
        upstream: str | None = None,
        *,
        diffusion_model: str = DEFAULT_DIFFUSION_MODEL,
        timeout: float = 120.0,
        max_upstream_bytes: int = 32 * 1024 * 1024,
        max_concurrent: int = 4,
    ) -> None:
        self.upstream = upstream.rstrip("/") if upstream else None
        self.diffusion_model = diffusion_model
        self.timeout = timeout
        self.max_upstream_bytes = max_upstream_bytes
        self._slots = asyncio.Semaphore(max(1, max_concurrent))
        self.generated = 0
        """How many images were generated (tests read this)."""

    async def handle(self, request: web.Request) -> web.Response:
        body = await read_json(request, _shape_problem)
        if isinstance(body, web.Response):
            return body
        prompt: str = body["prompt"]
        if not prompt.strip():
            return _error(400, "prompt must not be empty")
        size = body.get("size")
        if size is not None and size not in ALLOWED_SIZES:
            return _error(400, f"invalid size '{size}'; allowed: {', '.join(ALLOWED_SIZES)}")
        steps = body.get("steps")
        if steps is not None and not 1 <= steps <= 100:
            return _error(400, f"steps must be between 1 and 100, got {steps}")
        if self.upstream is None:
            return _error(503, "Diffusion service not available")
        lowered = prompt.lower()
        blocked = next((k for k in BLOCKED_KEYWORDS if k in lowered), None)
        if blocked is not None:
            return _error(400, f"Blocked keyword detected: {blocked}")
        size = size or "1024x1024"
        steps = steps or 4
        guidance = body.get("guidanceScale")
        model = self.diffusion_model if body.get("model") is None else body["model"]
        sidecar: dict[str, Any] = {
            "prompt": prompt,
            "model": model,
            "size": size,
            "n": 1,
            "response_format": "b64_json",
            "guidance_scale": 3.5 if guidance is None else guidance,
            "num_inference_steps": steps,
        }
        if body.get("seed") is not None:
            sidecar["seed"] = body["seed"]
        if body.get("negativePrompt") is not None:
            sidecar["negative_prompt"] = body["negativePrompt"]
        started = time.monotonic()
        try:
            image = await asyncio.wait_for(self._in_slot(sidecar), self.timeout)
        except UpstreamError as exc:
            return _error(500, f"Image generation failed: {exc}")
        except (TimeoutError, asyncio.TimeoutError):  # waited for a slot all that time
            return _error(500, f"Image generation failed: no answer within {self.timeout:g} s")
        elapsed = int((time.monotonic() - started) * 1000)
        units, megapixels = generation_units(size, steps)
        chain_id = body.get("chainId")
        chain_id = 84532 if chain_id is None else chain_id
        chain_name, token = (
            ("opBNB Testnet", "BNB") if chain_id == 5611 else ("Base Sepolia", "ETH")
        )
        self.generated += 1
        return web.json_response(
            {
                "image": image,
                "model": model,
                "size": size,
                "steps": steps,
                "seed": 0 if body.get("seed") is None else body["seed"],
                "processingTimeMs": elapsed,
                "safety": {
                    "promptSafe": True,
                    "outputSafe": True,  # nodes do not check the output yet
                    "safetyLevel": (
                        "strict" if body.get("safetyLevel") is None else body["safetyLevel"]
                    ),
                },
                "provider": "host",
                "chainId": chain_id,
                "chainName": chain_name,
                "nativeToken": token,
                "billing": {
                    "generationUnits": units,
                    "modelMultiplier": 1.0,
                    "megapixels": megapixels,
                    "steps": steps,
                },
            }
        )

    async def _in_slot(self, sidecar: dict[str, Any]) -> str:
        async with self._slots:
            return await self._generate(sidecar)

    async def _generate(self, sidecar: dict[str, Any]) -> str:
        assert self.upstream is not None
        status, reason, raw = await call_upstream(
            "POST",
            f"{self.upstream}/v1/images/generations",
            json_body=sidecar,
            timeout=self.timeout,
            max_bytes=self.max_upstream_bytes,
        )
        if not 200 <= status < 300:
            text = " ".join(raw[:500].decode("utf-8", "replace").split())
            raise UpstreamError(f"diffusion sidecar returned {status} {reason}: {text}")
        try:
            data = await asyncio.to_thread(loads_untrusted, raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise UpstreamError(f"error decoding response body: {exc}") from exc
        items = data.get("data") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise UpstreamError("error decoding response body: no `data` list")
        if not items:
            raise UpstreamError("empty response from diffusion sidecar")
        first = items[0]
        image = first.get("b64_json") if isinstance(first, dict) else None
        if not isinstance(image, str):
            raise UpstreamError("no b64_json in response")
        return image


def _shape_problem(body: Any) -> str | None:
    """Why ``body`` does not deserialize into the node's ``GenerateImageRequest`` (422)."""
    if not isinstance(body, dict):
        return "invalid type: expected struct GenerateImageRequest"
    if "prompt" not in body:
        return "missing field `prompt`"
    if not isinstance(body["prompt"], str):
        return "prompt: invalid type: expected a string"
    for name in _OPTIONAL_STRINGS:
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            return f"{name}: invalid type: expected a string"
    for name, bound in _OPTIONAL_UINTS.items():
        value = body.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < bound
        ):
            return f"{name}: invalid type: expected u{bound.bit_length() - 1}"
    guidance = body.get("guidanceScale")
    if guidance is not None and (
        isinstance(guidance, bool) or not isinstance(guidance, int | float)
    ):
        return "guidanceScale: invalid type: expected f32"
    return None

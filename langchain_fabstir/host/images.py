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
import math
import re
import time
from collections import OrderedDict, deque
from typing import Any

from aiohttp import web

from langchain_fabstir.errors import HostImageError
from langchain_fabstir.host._routes import error as _error
from langchain_fabstir.host._routes import read_json
from langchain_fabstir.host._upstream import UpstreamError, call_upstream, upstream_json

__all__ = [
    "ALLOWED_SIZES",
    "BLOCKED_KEYWORDS",
    "DEFAULT_DIFFUSION_MODEL",
    "IMAGE_RESPONSE_AAD",
    "TRIGGER_PHRASES",
    "ImageFailure",
    "ImageRoute",
    "SocketImages",
    "extract_last_user_query",
    "generation_units",
    "image_tokens",
    "request_problem",
    "wants_image",
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


ImageFailure = HostImageError
"""The node's refusal of an image request (its code, HTTP status and message)."""


def _unavailable() -> ImageFailure:
    return ImageFailure("DIFFUSION_SERVICE_UNAVAILABLE", 503, "Diffusion service not available")


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
        try:
            return web.json_response(await self.generate(body))
        except ImageFailure as exc:
            return _error(exc.status, exc.message)

    async def generate(self, body: dict[str, Any], *, safety_first: bool = False) -> dict[str, Any]:
        """The node's ``GenerateImageResponse`` for a request body that deserialized
        (:func:`request_problem` is ``None``); raises :class:`ImageFailure` with the node's
        code, status and message. The HTTP route checks for a sidecar before the prompt's
        safety, the socket's ``image_generation`` (``safety_first``) after it, as nodes do."""
        prompt: str = body["prompt"]
        if not prompt.strip():
            raise ImageFailure("VALIDATION_FAILED", 400, "prompt must not be empty")
        size = body.get("size")
        if size is not None and size not in ALLOWED_SIZES:
            msg = f"invalid size '{size}'; allowed: {', '.join(ALLOWED_SIZES)}"
            raise ImageFailure("VALIDATION_FAILED", 400, msg)
        steps = body.get("steps")
        if steps is not None and not 1 <= steps <= 100:
            msg = f"steps must be between 1 and 100, got {steps}"
            raise ImageFailure("VALIDATION_FAILED", 400, msg)
        if not safety_first and self.upstream is None:
            raise _unavailable()
        lowered = prompt.lower()
        blocked = next((k for k in BLOCKED_KEYWORDS if k in lowered), None)
        if blocked is not None:
            raise ImageFailure("PROMPT_BLOCKED", 400, f"Blocked keyword detected: {blocked}")
        if self.upstream is None:
            raise _unavailable()
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
            raise ImageFailure(
                "IMAGE_GENERATION_FAILED", 500, f"Image generation failed: {exc}"
            ) from None
        except (TimeoutError, asyncio.TimeoutError):  # waited for a slot all that time
            msg = f"Image generation failed: no answer within {self.timeout:g} s"
            raise ImageFailure("IMAGE_GENERATION_FAILED", 500, msg) from None
        elapsed = int((time.monotonic() - started) * 1000)
        units, megapixels = generation_units(size, steps)
        chain_id = body.get("chainId")
        chain_id = 84532 if chain_id is None else chain_id
        chain_name, token = (
            ("opBNB Testnet", "BNB") if chain_id == 5611 else ("Base Sepolia", "ETH")
        )
        self.generated += 1
        return {
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
        data = await upstream_json(raw, "error decoding response body")
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
    return request_problem(body)


def request_problem(body: Any) -> str | None:
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


# --- image generation over the encrypted socket (PROTOCOL.md 6.3) --------------------------

IMAGE_RESPONSE_AAD = b"encrypted_image_response"
"""The AAD of the one ``encrypted_response`` answering an image request (PROTOCOL.md 6.3)."""

IMAGE_RATE_LIMIT = 5
"""Successful image generations per session id in :data:`IMAGE_RATE_WINDOW` seconds
(the node's ``IMAGE_GEN_RATE_LIMIT`` default)."""
IMAGE_RATE_WINDOW = 60.0

TRIGGER_PHRASES = (
    "generate an image",
    "generate a picture",
    "generate a photo",
    "generate image",
    "create an image",
    "create a picture",
    "create a photo",
    "create image",
    "make an image",
    "make a picture",
    "make a photo",
    "make image",
    "draw me",
    "draw a ",
    "paint a ",
    "paint me",
    "sketch a ",
    "sketch me",
    "illustrate a ",
    "illustrate me",
)
"""What routes an encrypted prompt to image generation (query_extractor.rs:131-169)."""

_LEADING_PHRASES = ("can you ", "could you ", "please ", "help me ", "tell me ", "what is ")
_HARMONY_USER = re.compile(r"<\|start\|>user<\|message\|>(.*?)(?:<\|end\|>|\Z)", re.S)
_HARMONY_MARKERS = ("<|start|>", "<|end|>", "<|message|>", "<|channel|>")
_ROLE_WORDS = ("system", "user", "assistant", "final")


def extract_last_user_query(prompt: str) -> str:
    """The last user query of a prompt, as a node extracts it before auto image routing.

    The content of the last Harmony ``<|start|>user<|message|>...<|end|>``; without
    Harmony markers the whole text with the markers and the substrings ``system``,
    ``user``, ``assistant``, ``final`` replaced by spaces; whitespace collapsed, then the
    leading ``can you ``, ``could you ``, ``please ``, ``help me ``, ``tell me ``,
    ``what is `` removed (PROTOCOL.md 6.3 lists these; the node has a few more).

    >>> extract_last_user_query("Please   draw a cat")
    'draw a cat'
    >>> extract_last_user_query("<|start|>user<|message|>Can you draw me a dog?<|end|>")
    'draw me a dog?'
    """
    found = _HARMONY_USER.findall(prompt)
    if found:
        query = found[-1]
    else:
        query = prompt
        for word in (*_HARMONY_MARKERS, *_ROLE_WORDS):
            query = query.replace(word, " ")
    query = " ".join(query.split())
    lowered = query.lower()
    stripped = True
    while stripped:
        stripped = False
        for phrase in _LEADING_PHRASES:
            if lowered.startswith(phrase):
                query, lowered = query[len(phrase) :].lstrip(), lowered[len(phrase) :].lstrip()
                stripped = True
    return query


def wants_image(query: str) -> bool:
    """Whether a node routes this query to image generation (:data:`TRIGGER_PHRASES`).

    >>> wants_image("Draw a cat"), wants_image("what is a drawing")
    (True, False)
    """
    lowered = query.lower()
    return any(phrase in lowered for phrase in TRIGGER_PHRASES)


def image_tokens(billing: dict[str, Any]) -> int:
    """Tokens an image adds to its job: ``ceil(generationUnits * 1000)`` (1024x1024 at 4
    steps: 200)."""
    return math.ceil(float(billing["generationUnits"]) * 1000)


class SocketImages:
    """``action: "image_generation"`` and auto image routing on encrypted sessions, as a
    node answers them (PROTOCOL.md 6.3), over the host's :class:`ImageRoute`.

    :meth:`answer` runs the node's pipeline: a rate limit per session id
    (:data:`IMAGE_RATE_LIMIT` successes in :data:`IMAGE_RATE_WINDOW` seconds; failures do
    not count), validation (``VALIDATION_FAILED``: a field of the wrong type, a blank
    prompt, a size not in :data:`ALLOWED_SIZES`, steps outside 1..100), the keyword
    prompt-safety check (``PROMPT_BLOCKED``: a prompt containing one of
    :data:`BLOCKED_KEYWORDS`, compared in lower case; nodes keep their own list, this is
    ours), the diffusion sidecar (``DIFFUSION_SERVICE_UNAVAILABLE`` without one,
    ``IMAGE_GENERATION_FAILED`` when it fails), and returns the plaintext JSON of the
    reply (``image_generation_result``, the node's ``GenerateImageResponse`` with
    ``type``, or ``image_generation_error`` with ``{"code", "message"}``) and the tokens
    to bill into the job (:func:`image_tokens`; 0 for an error). The host seals it into
    one ``encrypted_response`` with AAD :data:`IMAGE_RESPONSE_AAD`.
    """

    def __init__(
        self,
        route: ImageRoute,
        *,
        rate_limit: int = IMAGE_RATE_LIMIT,
        window: float = IMAGE_RATE_WINDOW,
        max_sessions: int = 4096,
    ) -> None:
        self.route = route
        self.rate_limit = rate_limit
        self.window = window
        self.max_sessions = max_sessions
        self._successes: OrderedDict[str, deque[float]] = OrderedDict()

    def _limited(self, session_id: str) -> bool:
        times = self._successes.get(session_id)
        if times is None:
            return False
        now = time.monotonic()
        while times and now - times[0] >= self.window:
            times.popleft()
        return len(times) >= self.rate_limit

    def _count(self, session_id: str) -> None:
        times = self._successes.setdefault(session_id, deque())
        self._successes.move_to_end(session_id)
        times.append(time.monotonic())
        while len(self._successes) > self.max_sessions:
            self._successes.popitem(last=False)

    async def answer(self, session_id: str, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """The reply JSON and the tokens to bill for one image request (see the class)."""
        try:
            if self._limited(session_id):
                raise ImageFailure(
                    "RATE_LIMIT_EXCEEDED",
                    429,
                    f"Rate limit exceeded: at most {self.rate_limit} images per "
                    f"{self.window:g} seconds per session",
                )
            fields = {k: v for k, v in body.items() if k != "action"}
            problem = request_problem(fields)
            if problem is not None:
                raise ImageFailure("VALIDATION_FAILED", 400, problem)
            result = await self.route.generate(fields, safety_first=True)
        except ImageFailure as exc:
            error = {"code": exc.node_code, "message": exc.message}
            return {"type": "image_generation_error", "error": error}, 0
        self._count(session_id)
        return {"type": "image_generation_result", **result}, image_tokens(result["billing"])

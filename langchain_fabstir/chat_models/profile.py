"""``ChatFabstir.profile``: the model profile LangChain's middleware reads
(summarisation, context trimming, agents choosing a structured-output strategy).

Partner packages fill profiles from bundled model data. A Fabstir host serves whatever
model its operator loaded, so the honest source is what the host announces:

- ``GET /v1/version`` ``features``: ``response_format`` means native (grammar-constrained)
  structured output; ``tools`` means grammar-constrained tool calls (tool calling works on
  every host: elsewhere through a validated prompt protocol);
- ``GET /v1/models``: the model's id and name, and its context window when the entry
  carries one (``context_window``, ``context_length`` or ``max_context_length``; the
  reference host does, deployed hosts do not);
- ``usage.context_window_size`` in every ``stream_end`` that has usage;
- ``vision`` in ``features``: the host reads images (``image_inputs`` ``True``). Deployed
  nodes announce nothing: ``image_inputs`` stays ``False`` (unknown), images are still
  sent to them and an answer that shows they were not read raises
  ``IMAGE_INPUTS_NOT_SUPPORTED``.

What no host announces is fixed: image URLs are never fetched (``image_url_inputs``
``False``), and the other media flags are ``False`` (such content is refused with a
``ValueError``).

>>> p = base_profile()
>>> p["tool_calling"], p["image_inputs"], "max_input_tokens" in p
(True, False, False)
>>> learn(p, features=["tools", "response_format", "vision"], context_window=8192)
>>> p["structured_output"], p["max_input_tokens"], p["max_output_tokens"], p["image_inputs"]
(True, 8192, 8192, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
from langchain_core.language_models import ModelProfile

from langchain_fabstir import _http
from langchain_fabstir.discovery import normalize_host_url
from langchain_fabstir.discovery._http import FetchError, get_json
from langchain_fabstir.errors import ConnectionFailedError, ProtocolError
from langchain_fabstir.wire.images import VISION_FEATURE

__all__ = ["WINDOW_KEYS", "base_profile", "fetch_profile", "learn"]

WINDOW_KEYS = ("context_window", "context_length", "max_context_length")
"""Keys of a ``/v1/models`` entry read as the model's context window, in this order."""


def base_profile() -> ModelProfile:
    """What holds on every Fabstir host, before any host was asked."""
    return ModelProfile(
        text_inputs=True,
        image_inputs=False,
        image_url_inputs=False,
        pdf_inputs=False,
        audio_inputs=False,
        video_inputs=False,
        image_tool_message=False,
        pdf_tool_message=False,
        text_outputs=True,
        image_outputs=False,
        audio_outputs=False,
        video_outputs=False,
        tool_calling=True,
        tool_choice=True,
        tool_call_streaming=True,
        structured_output=False,
        temperature=True,
    )


def learn(
    profile: ModelProfile,
    *,
    features: Sequence[str] | None = None,
    context_window: int | None = None,
    name: str | None = None,
) -> None:
    """Update ``profile`` in place with what a host announced.

    ``max_output_tokens`` is the context window too: a host bounds an answer only by the
    window (prompt plus answer) and the request's ``max_tokens``.
    """
    if features is not None:
        profile["structured_output"] = "response_format" in features
        profile["image_inputs"] = VISION_FEATURE in features
    if isinstance(context_window, int) and context_window > 0:
        profile["max_input_tokens"] = context_window
        profile["max_output_tokens"] = context_window
    if name:
        profile["name"] = name


async def fetch_profile(
    host_url: str,
    model: str | None,
    profile: ModelProfile,
    *,
    timeout: float = 5.0,
    client: httpx.AsyncClient | None = None,
) -> ModelProfile:
    """Ask ``host_url`` (``/v1/version``, ``/v1/models``) and update ``profile`` in place.

    ``/v1/models`` may be absent (404): the rest is still learnt. Raises
    :class:`~langchain_fabstir.errors.ConnectionFailedError` when the host cannot be
    reached and :class:`~langchain_fabstir.errors.ProtocolError` for replies of the
    wrong shape.
    """
    base = normalize_host_url(host_url)
    limits = httpx.Timeout(timeout)
    owned = client is None
    http = client or _http.client()
    try:
        try:
            version = await get_json(http, base + "/v1/version", timeout=limits, max_bytes=256_000)
        except FetchError as exc:
            raise ConnectionFailedError(
                f"could not read the host's features: {exc.message}", host_url=base
            ) from exc
        try:
            models_reply: Any = (
                await get_json(http, base + "/v1/models", timeout=limits, max_bytes=256_000)
            ).body
        except FetchError as exc:
            if exc.status != 404:
                raise ConnectionFailedError(
                    f"could not read the host's models: {exc.message}", host_url=base
                ) from exc
            models_reply = {"models": []}
    finally:
        if owned:
            await http.aclose()
    features = version.body.get("features") if isinstance(version.body, dict) else None
    models = models_reply.get("models") if isinstance(models_reply, dict) else None
    if not isinstance(features, list) or not isinstance(models, list):
        raise ProtocolError(
            "the host's /v1/version or /v1/models reply has an unexpected shape", host_url=base
        )
    entries = [m for m in models if isinstance(m, dict) and isinstance(m.get("id"), str)]
    # The requested model when the host serves it, else the host's first (its default).
    entry = next((m for m in entries if m["id"] == model), entries[0] if entries else None)
    window = None
    if entry is not None:
        window = next((entry[k] for k in WINDOW_KEYS if isinstance(entry.get(k), int)), None)
    learn(
        profile,
        features=[str(f) for f in features],
        context_window=window,
        name=None if entry is None else str(entry.get("name") or entry["id"]),
    )
    return profile

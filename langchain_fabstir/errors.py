"""One error hierarchy for the whole package, with stable codes.

Every error raised by ``langchain_fabstir`` is a :class:`FabstirError`. Each class has a
stable ``code`` (a string that never changes between releases, safe to branch on), a
message a person can act on, and the facts needed to act: ``host_url``, ``session_id``,
``retry_after`` (seconds) and free-form ``details``.

Details and examples: :class:`FabstirError`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from langchain_core.exceptions import (
    ContextOverflowError,
    ModelAPIError,
    ModelAuthenticationError,
    ModelConnectionError,
    ModelError,
    ModelInvalidRequestError,
    ModelNotFoundError,
    ModelRateLimitError,
    ModelTimeoutError,
)

__all__ = [
    "ENCRYPTION_ERRORS",
    "AnswerTooLargeError",
    "AnswerTruncatedError",
    "AuthenticationError",
    "BlobNotFoundError",
    "BudgetExceededError",
    "ChainError",
    "ChainUnavailableError",
    "CheckpointError",
    "ChunkOrderError",
    "ChunkReplayError",
    "ConnectionFailedError",
    "DecryptionFailedError",
    "DecryptionKeyRequiredError",
    "DelegateAllowanceInsufficientError",
    "DelegateBalanceInsufficientError",
    "DelegateError",
    "DelegateNotAuthorizedError",
    "DelegateRevokeIncompleteError",
    "DelegateUsdcRequiredError",
    "DepositLimitError",
    "DiffusionUnavailableError",
    "DimensionMismatchError",
    "EmbeddingEngineError",
    "EmbeddingError",
    "EncryptionError",
    "EncryptionFailedError",
    "EncryptionModeError",
    "EncryptionUnavailableError",
    "EngineContextOverflow",
    "EngineError",
    "EngineRateLimited",
    "EngineStopped",
    "FabstirError",
    "HostDisconnectedError",
    "HostError",
    "HostIdentityError",
    "HostImageError",
    "HostRegistryError",
    "HostSideError",
    "ImageGenerationError",
    "ImageInputsNotSupportedError",
    "ImageTooLargeError",
    "InsufficientDepositError",
    "InsufficientFundsError",
    "IntegrityError",
    "InvalidCIDError",
    "InvalidDirectoryError",
    "InvalidEncryptedPayloadError",
    "InvalidHexError",
    "InvalidImageError",
    "InvalidImageFormatError",
    "InvalidKeyError",
    "InvalidNonceSizeError",
    "InvalidPathError",
    "InvalidRegistryEntryError",
    "InvalidRequestError",
    "InvalidSeedPhraseError",
    "InvalidUtf8Error",
    "LoneSurrogateError",
    "MessageReplayError",
    "MissingPayloadError",
    "MissingPayloadFieldsError",
    "MissingSessionIdError",
    "ModelNotAvailableError",
    "NoHostAvailableError",
    "NoHostForModelError",
    "PlaintextFramesRefusedError",
    "PortalRequestError",
    "PriceLimitError",
    "PromptBlockedError",
    "ProtocolError",
    "RateLimitedError",
    "ResponseTimeoutError",
    "RevisionConflictError",
    "SearchError",
    "SearchUnavailableError",
    "SessionAuthDeniedError",
    "SessionKeyExhaustedError",
    "SessionKeyNotFoundError",
    "SessionKeyReusedError",
    "SessionNotFoundError",
    "SessionTimeoutError",
    "ShardedDirectoryError",
    "ShareCodeError",
    "SpendLedgerError",
    "StorageError",
    "StreamChunkTimeoutError",
    "TokenLimitExceededError",
    "TransactionRevertedError",
    "UpstreamError",
    "ValueTooDeepError",
    "VectorStoreError",
    "WrongChainError",
]


class FabstirError(Exception):
    """Base of every error this package raises.

    Errors that describe a model call are *also* the matching ``langchain_core.exceptions``
    type, so code written against LangChain's provider-neutral errors keeps working, and
    ``is_retryable`` is right for both:

    >>> from langchain_core.exceptions import ModelRateLimitError
    >>> err = RateLimitedError("Rate limit exceeded", retry_after=60.0)
    >>> isinstance(err, ModelRateLimitError), err.code, err.is_retryable
    (True, 'RATE_LIMITED', True)
    >>> str(err)
    '[RATE_LIMITED] Rate limit exceeded (retry after 60.0s)'

    Branching on codes, as in the seed API's error-handling example:

    >>> try:
    ...     raise SessionTimeoutError("idle for 3700 s", session_id="s-1")
    ... except FabstirError as e:
    ...     e.code
    'SESSION_TIMEOUT'

    Attributes:
        code: stable machine-readable code (class attribute, overridable per instance).
        message: what happened and, where possible, what to do about it.
        host_url: the host involved, when there is one.
        session_id: the session involved, when there is one.
        retry_after: seconds after which a retry may succeed, when known.
        details: any further facts (e.g. ``attempts``, ``prompt_tokens``).
    """

    code: ClassVar[str] = "FABSTIR_ERROR"
    is_retryable = False

    def __init__(
        self,
        message: str,
        *,
        host_url: str | None = None,
        session_id: str | None = None,
        retry_after: float | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.host_url = host_url
        self.session_id = session_id
        self.retry_after = retry_after
        self.details: dict[str, Any] = dict(details or {})

    def __str__(self) -> str:
        text = f"[{self.code}] {self.message}"
        if self.retry_after is not None:
            text += f" (retry after {self.retry_after}s)"
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly view of the error (for logs and APIs)."""
        return {
            "code": self.code,
            "message": self.message,
            "host_url": self.host_url,
            "session_id": self.session_id,
            "retry_after": self.retry_after,
            "details": self.details,
        }


# --- Sessions -------------------------------------------------------------------------


class SessionNotFoundError(FabstirError, ModelInvalidRequestError):
    """No session with that id is known to this manager (or it has ended)."""

    code = "SESSION_NOT_FOUND"


class SessionTimeoutError(FabstirError, ModelError):
    """The session was idle longer than ``SessionConfig.session_timeout``.

    Not retryable on the same session: create or resume a session instead.
    """

    code = "SESSION_TIMEOUT"
    is_retryable = False


# --- Host connection ------------------------------------------------------------------


class ConnectionFailedError(FabstirError, ModelConnectionError):
    """The host could not be reached (refused, DNS, TLS, open/handshake timeout)."""

    code = "HOST_UNREACHABLE"
    is_retryable = True


class HostDisconnectedError(FabstirError, ModelConnectionError):
    """The host closed the connection or went away, and reconnecting did not help."""

    code = "HOST_DISCONNECTED"
    is_retryable = True


class NoHostAvailableError(FabstirError, ModelConnectionError):
    """Discovery found no healthy host that serves the requested model."""

    code = "NO_HOST_AVAILABLE"
    is_retryable = True


class ProtocolError(FabstirError, ModelAPIError):
    """A peer sent a frame that does not follow the Fabstir protocol.

    ``details["excerpt"]`` holds a bounded excerpt of the offending frame.
    """

    code = "PROTOCOL_ERROR"
    is_retryable = True


class AuthenticationError(FabstirError, ModelAuthenticationError):
    """Credentials were refused (a portal token, a signature)."""

    code = "AUTH_FAILED"
    is_retryable = False


class SessionAuthDeniedError(AuthenticationError):
    """A host refused the encrypted session init of a job whose deposit belongs to a
    vault, for a client the vault did not authorise (its ``SESSION_AUTH_DENIED``)."""

    code = "SESSION_AUTH_DENIED"


class InvalidKeyError(AuthenticationError):
    """Key material is malformed (a private key that is not 32 bytes of hex, an address or
    a signature in the wrong form); the message says which form is expected."""

    code = "INVALID_KEY"


class InvalidSeedPhraseError(AuthenticationError):
    """A seed phrase has the wrong length, an unknown word, or a bad checksum."""

    code = "INVALID_SEED_PHRASE"


# --- Responses ------------------------------------------------------------------------


class ResponseTimeoutError(FabstirError, ModelTimeoutError, TimeoutError):
    """The host did not answer in time (ack, first token, or the whole response)."""

    code = "RESPONSE_TIMEOUT"
    is_retryable = True


class StreamChunkTimeoutError(ResponseTimeoutError):
    """No chunk arrived within the inactivity timeout in the middle of a stream."""

    code = "STREAM_CHUNK_TIMEOUT"


class TokenLimitExceededError(FabstirError, ContextOverflowError):
    """The prompt plus context does not fit the model's context window."""

    code = "TOKEN_LIMIT_EXCEEDED"
    is_retryable = False


class RateLimitedError(FabstirError, ModelRateLimitError):
    """The host refused the prompt for now; ``retry_after`` says for how long."""

    code = "RATE_LIMITED"
    is_retryable = True


class ModelNotAvailableError(FabstirError, ModelNotFoundError):
    """The requested model is not served by the host (or by any known host)."""

    code = "MODEL_NOT_AVAILABLE"
    is_retryable = False


class InvalidRequestError(FabstirError, ModelInvalidRequestError):
    """The host (or this client) rejected the request as invalid (e.g. an empty prompt)."""

    code = "INVALID_REQUEST"
    is_retryable = False


class LoneSurrogateError(InvalidRequestError, ValueError):
    """Text to send or store holds a lone surrogate (U+D800 to U+DFFF alone), which UTF-8
    cannot carry: refused before anything is sent or written. Such text usually comes from
    bytes decoded with ``errors="surrogateescape"``; decode them with
    ``errors="replace"``. (A lone surrogate in a host's or portal's JSON, escaped as
    ``\\ud800`` or encoded in its bytes, is read as U+FFFD.)"""

    code = "LONE_SURROGATE"


class HostRegistryError(InvalidRequestError):
    """A host list (registry file or URL, ``FABSTIR_HOSTS``, an explicit entry) is malformed.

    ``details`` says where (``source``, ``entry`` index) and what was wrong.
    """

    code = "INVALID_HOST_REGISTRY"


class AnswerTooLargeError(FabstirError, ModelAPIError):
    """A host sent more text for one answer than ``SessionConfig.max_answer_chars`` allows
    (a broken or hostile host). Not retried: the client stopped it and closed the socket."""

    code = "ANSWER_TOO_LARGE"
    is_retryable = False


class HostError(FabstirError, ModelAPIError):
    """The host reported a failure of its own (engine error, internal error)."""

    code = "HOST_ERROR"
    is_retryable = True


class EmbeddingError(HostError):
    """A host could not embed (``POST /v1/embed`` answered 500, or 503: no embedding model
    loaded there). Retryable: another host may serve embeddings."""

    code = "EMBEDDING_FAILED"


class VectorStoreError(HostError):
    """A host refused or failed a host-RAG request (``uploadVectors``/``searchVectors``:
    its bare ``error`` frame, or an upload answered ``status: "error"``). ``details`` has
    the host's text and, for uploads, its per-vector ``errors``."""

    code = "VECTOR_STORE_ERROR"
    is_retryable = False


class SearchError(HostError):
    """A host's web search failed (``POST /v1/search`` answered 500: its search provider
    failed). Retryable: another host, or a later try, may succeed."""

    code = "SEARCH_FAILED"


class SearchUnavailableError(SearchError):
    """The host offers no web search (``POST /v1/search`` answered 503 ``Search service
    not available`` / ``Web search is disabled on this host``, or 404). Another host may
    offer it; asking this one again will not help."""

    code = "SEARCH_UNAVAILABLE"


class ImageGenerationError(HostError):
    """A host could not generate the image (``POST /v1/images/generate`` answered 500
    ``Image generation failed: ...``: its diffusion sidecar failed). Retryable."""

    code = "IMAGE_GENERATION_FAILED"


class DiffusionUnavailableError(ImageGenerationError):
    """The host has no diffusion sidecar (503 ``Diffusion service not available``, or
    404). Another host may have one; asking this one again will not help."""

    code = "DIFFUSION_SERVICE_UNAVAILABLE"


class PromptBlockedError(InvalidRequestError):
    """The host's prompt-safety check refused the image prompt (400 ``Blocked keyword
    detected: ...``). Not retried: change the prompt."""

    code = "PROMPT_BLOCKED"


class InvalidImageError(InvalidRequestError):
    """An image given with a prompt cannot be sent: not base64, not an image, a URL that
    is not a ``data:`` URL (never fetched), or a file that cannot be read. Raised before
    anything is sent."""

    code = "INVALID_IMAGE_DATA"


class InvalidImageFormatError(InvalidImageError):
    """An image in a format hosts do not take (they take ``png``, ``jpeg``, ``webp`` and
    ``gif``). Raised before anything is sent."""

    code = "INVALID_IMAGE_FORMAT"


class ImageTooLargeError(InvalidImageError):
    """An image over the hosts' limit (13,333,334 base64 characters, about 10 MB), or
    images that together do not fit in one WebSocket message of a node (16 MiB; twice
    the size in encrypted mode, as hex). Raised before anything is sent."""

    code = "IMAGE_TOO_LARGE"


class ImageInputsNotSupportedError(InvalidRequestError):
    """The host cannot read images: it announced no ``vision`` (refused before sending), or
    it answered a prompt with images without reporting ``vlm_tokens`` (a node without a
    vision sidecar drops images silently, or its vision calls all failed). In the second
    case the answer, which ignored the images, is in ``details["partial_text"]``. Not
    retried: use a host with vision."""

    code = "IMAGE_INPUTS_NOT_SUPPORTED"


class DimensionMismatchError(ProtocolError):
    """A host's embeddings do not have the dimensions asked for (``dimensions``), or not
    all the same: a different model, or a broken or hostile host. Not retried."""

    code = "DIMENSION_MISMATCH"
    is_retryable = False


# --- Encryption (PROTOCOL.md section 4) -------------------------------------------------


class EncryptionError(FabstirError, ModelAPIError):
    """Encrypted mode failed. The subclasses name what failed; none is retried (a
    tampered or misordered stream is not a network hiccup), and none quotes plaintext."""

    code = "ENCRYPTION_ERROR"
    is_retryable = False


class EncryptionUnavailableError(EncryptionError):
    """``SessionConfig(encryption="required")`` and the host cannot encrypt (no known
    public key, or it answered ``ENCRYPTION_NOT_SUPPORTED``): no prompt was sent."""

    code = "ENCRYPTION_UNAVAILABLE"


class HostIdentityError(EncryptionError):
    """The host at a URL does not hold the key of the address the session trusts (its
    on-chain record, the paid job's host, or the key the caller gave): a forged registry
    record, or a relay between client and host. Refused before paying (or, on the socket,
    before any prompt is sent)."""

    code = "HOST_IDENTITY_MISMATCH"


class DecryptionFailedError(EncryptionError):
    """A frame did not authenticate: a wrong key, or its bytes were changed on the way."""

    code = "DECRYPTION_FAILED"


class DecryptionKeyRequiredError(EncryptionError):
    """Encrypted data (an encrypted session's S5 checkpoint deltas) and no key to open it:
    pass the session's recovery key (``Session.recovery_key``)."""

    code = "DECRYPTION_KEY_REQUIRED"


class InvalidEncryptedPayloadError(EncryptionError):
    """An encrypted frame's payload is not what section 4 describes."""

    code = "INVALID_PAYLOAD"


class MissingPayloadError(InvalidEncryptedPayloadError):
    code = "MISSING_PAYLOAD"


class InvalidHexError(InvalidEncryptedPayloadError):
    code = "INVALID_HEX_ENCODING"


class InvalidNonceSizeError(InvalidEncryptedPayloadError):
    """A nonce that is not 24 bytes."""

    code = "INVALID_NONCE_SIZE"


class ChunkOrderError(EncryptionError):
    """An encrypted chunk arrived out of order: replayed, dropped or reordered."""

    code = "CHUNK_OUT_OF_ORDER"


class ChunkReplayError(ChunkOrderError):
    """An encrypted chunk (or final frame) whose nonce this session key already carried:
    a frame of an earlier answer played again (by a relay) as part of this one."""

    code = "CHUNK_REPLAYED"


class AnswerTruncatedError(EncryptionError):
    """An encrypted answer that ended without all of its chunks: fewer chunks than the
    host's sealed count, or a complete ``stream_end`` without the sealed final frame."""

    code = "ANSWER_TRUNCATED"


class SessionKeyExhaustedError(EncryptionError):
    """One session key carried more chunks than the client remembers nonces for; the
    client re-keys (a new socket and init) before that in normal use."""

    code = "SESSION_KEY_EXHAUSTED"


class SessionKeyReusedError(EncryptionError):
    """A host refused an ``encrypted_session_init`` whose session key it has seen before
    (a replayed init)."""

    code = "SESSION_KEY_REUSED"


class MessageReplayError(EncryptionError):
    """A host refused an ``encrypted_message`` whose counter (AAD ``message_<n>``) does
    not increase under its session key (a replayed message)."""

    code = "MESSAGE_REPLAYED"


class EncryptionModeError(EncryptionError):
    """An encrypted frame in a plaintext session, or answer text in clear in an
    encrypted one (a downgrade): refused, never shown."""

    code = "ENCRYPTION_MODE_MISMATCH"


class MissingSessionIdError(EncryptionError):
    """A host got an encrypted prompt without a session id it could use (its
    ``MISSING_SESSION_ID``, PROTOCOL.md 6.7)."""

    code = "MISSING_SESSION_ID"


class SessionKeyNotFoundError(EncryptionError):
    """A host holds no session key for the session id of an encrypted prompt (its
    ``SESSION_KEY_NOT_FOUND``: it restarted, or never took the encrypted init)."""

    code = "SESSION_KEY_NOT_FOUND"


class MissingPayloadFieldsError(InvalidEncryptedPayloadError):
    """A host found an encrypted payload without ``ciphertextHex``, ``nonceHex`` or
    ``aadHex`` (its ``MISSING_PAYLOAD_FIELDS``)."""

    code = "MISSING_PAYLOAD_FIELDS"


class InvalidUtf8Error(InvalidEncryptedPayloadError):
    """A host decrypted a prompt that is not UTF-8 (its ``INVALID_UTF8``)."""

    code = "INVALID_UTF8"


class EncryptionFailedError(EncryptionError):
    """A host could not encrypt a chunk of its answer or its reply (its
    ``ENCRYPTION_FAILED``): the answer stopped there, nothing went out in clear."""

    code = "ENCRYPTION_FAILED"


class PlaintextFramesRefusedError(EncryptionError):
    """A request whose frames travel in clear (host RAG's ``uploadVectors`` and
    ``searchVectors``: no encrypted variant exists) was refused on an encrypted session,
    because the caller did not opt in (``allow_plaintext=True``). Nothing was sent."""

    code = "PLAINTEXT_FRAMES_REFUSED"


ENCRYPTION_ERRORS: dict[str, type[EncryptionError]] = {
    cls.code: cls
    for cls in (
        EncryptionUnavailableError,
        DecryptionFailedError,
        DecryptionKeyRequiredError,
        InvalidEncryptedPayloadError,
        MissingPayloadError,
        InvalidHexError,
        InvalidNonceSizeError,
        ChunkOrderError,
        ChunkReplayError,
        AnswerTruncatedError,
        SessionKeyExhaustedError,
        SessionKeyReusedError,
        MessageReplayError,
        EncryptionModeError,
        MissingSessionIdError,
        SessionKeyNotFoundError,
        MissingPayloadFieldsError,
        InvalidUtf8Error,
        EncryptionFailedError,
    )
}
"""The encryption errors by code (what a host's ``error`` frame names)."""


# --- Chain ----------------------------------------------------------------------------


class ChainError(FabstirError):
    """Something on chain failed (reading a contract, paying, settling).

    ``details`` carries what is known: ``job_id``, ``tx_hash``, ``rpc_url`` (never a key).
    """

    code = "CHAIN_ERROR"


class ChainUnavailableError(ChainError, ModelConnectionError):
    """The RPC endpoint cannot be reached, or did not answer in time. Nothing was sent."""

    code = "CHAIN_UNAVAILABLE"
    is_retryable = True


class WrongChainError(ChainError):
    """The RPC endpoint serves another chain than the configuration names (its chain id
    differs). Nothing was sent: fix ``rpc_url`` or ``chain_id``."""

    code = "WRONG_CHAIN"


class TransactionRevertedError(ChainError):
    """A transaction (or its dry run) was reverted by the contract; ``details["reason"]`` is
    the contract's reason string when it gave one."""

    code = "TRANSACTION_REVERTED"


class InsufficientFundsError(ChainError):
    """The account cannot pay the deposit and the gas (or has no such token balance)."""

    code = "INSUFFICIENT_FUNDS"


class PriceLimitError(ChainError):
    """Every host for the model asks more per token than the user's ``max_price_per_token``.
    Nothing was paid."""

    code = "PRICE_ABOVE_LIMIT"


class DepositLimitError(ChainError):
    """The deposit the session needs is outside what the user allowed or the contract
    accepts (below the minimum, or too small for one proof interval at the host's price)."""

    code = "DEPOSIT_LIMIT"


class InsufficientDepositError(InsufficientFundsError):
    """The in-contract deposit balance is smaller than the session's deposit
    (``create_session(from_deposit=True)``). Nothing was sent: ``deposit()`` more first."""

    code = "INSUFFICIENT_DEPOSIT"


class BudgetExceededError(ChainError):
    """Paying this deposit would take what this manager committed in the token past its
    ``max_spend``. Nothing was sent; ``details`` has ``token``, ``spent``, ``limit`` and
    ``amount`` (whole tokens, as strings)."""

    code = "BUDGET_EXCEEDED"


class SpendLedgerError(ChainError):
    """The ``spend_ledger`` file cannot be read or written (corrupt, another format, no
    permission). Nothing was sent: a budget that cannot remember a payment does not pay."""

    code = "SPEND_LEDGER_INVALID"


class DelegateError(ChainError):
    """A delegated payment (a hot key creating sessions for a payer) cannot be made.
    Nothing was sent."""

    code = "DELEGATE_ERROR"


class DelegateNotAuthorizedError(DelegateError):
    """The payer has not authorized this key (``authorizeDelegate``), or revoked it."""

    code = "DELEGATE_NOT_AUTHORIZED"


class DelegateAllowanceInsufficientError(DelegateError):
    """The payer's ERC-20 allowance to the marketplace is below the deposit."""

    code = "DELEGATE_ALLOWANCE_INSUFFICIENT"


class DelegateBalanceInsufficientError(DelegateError):
    """The payer's wallet holds less of the token than the deposit."""

    code = "DELEGATE_BALANCE_INSUFFICIENT"


class DelegateUsdcRequiredError(DelegateError):
    """Delegated sessions are paid in an ERC-20 (USDC), never in ETH."""

    code = "DELEGATE_USDC_REQUIRED"


class DelegateRevokeIncompleteError(DelegateError):
    """The delegate was de-authorized but resetting the allowance to 0 failed (or the other
    way round): ``details["step"]`` says which step is missing; run ``revoke_delegate`` again."""

    code = "DELEGATE_REVOKE_INCOMPLETE"


class NoHostForModelError(NoHostAvailableError):
    """No active host on chain is registered for the model (or none is reachable)."""

    code = "NO_HOST_FOR_MODEL"
    is_retryable = False


# --- Checkpoints ----------------------------------------------------------------------


class CheckpointError(FabstirError):
    """A checkpoint could not be made, stored or verified (seed: ``CHECKPOINT_FAILED``).

    By default a warning: the stream goes on. With ``require_verified_checkpoints`` it
    is raised.
    """

    code = "CHECKPOINT_FAILED"


# --- Storage --------------------------------------------------------------------------


class StorageError(FabstirError):
    """The S5 portal or storage layer failed (unreachable, refused, malformed reply)."""

    code = "STORAGE_ERROR"
    is_retryable = True


class IntegrityError(StorageError):
    """Downloaded bytes do not match their content hash, or a signature does not verify."""

    code = "INTEGRITY_ERROR"
    is_retryable = False


class RevisionConflictError(StorageError):
    """A registry write lost a compare-and-swap race (a newer revision exists)."""

    code = "REVISION_CONFLICT"
    is_retryable = True


class ValueTooDeepError(StorageError, ValueError):
    """A value to store nests containers deeper than a reader can decode; refused before
    anything is written, so the values already stored stay readable."""

    code = "VALUE_TOO_DEEP"
    is_retryable = False


class BlobNotFoundError(StorageError):
    """The portal does not have the requested blob (HTTP 404)."""

    code = "BLOB_NOT_FOUND"
    is_retryable = False


class PortalRequestError(StorageError):
    """The portal refused a request for a reason other than auth, revision or integrity."""

    code = "PORTAL_REQUEST_REJECTED"
    is_retryable = False


class InvalidCIDError(StorageError):
    """A CID string or byte sequence is malformed (wrong prefix, hash length, size field)."""

    code = "INVALID_CID"
    is_retryable = False


class InvalidPathError(StorageError):
    """A path is outside ``home/`` and ``archive/``, malformed, or names the wrong kind."""

    code = "INVALID_PATH"
    is_retryable = False


class InvalidDirectoryError(StorageError):
    """A directory blob is not valid DirV1 (bad prefix, CBOR, or field types)."""

    code = "INVALID_DIRECTORY"
    is_retryable = False


class ShardedDirectoryError(StorageError):
    """A change to a directory that s5.js sharded into a HAMT (read-only in this client)."""

    code = "SHARDED_DIRECTORY"
    is_retryable = False


class InvalidRegistryEntryError(StorageError):
    """A registry entry is malformed (key, revision, data length, signature length)."""

    code = "INVALID_REGISTRY_ENTRY"
    is_retryable = False


class ShareCodeError(FabstirError):
    """A share code is malformed, or its key does not open the shared export."""

    code = "INVALID_SHARE_CODE"


# --- Reference host (raised inside the host, answered there) -------------------------


class HostSideError(FabstirError):
    """Raised inside the reference host (an engine, a sidecar, an answer job) and answered
    there with an ``error`` frame or an HTTP error; never raised to a client.

    Its ``str()`` is the bare message, without the ``[CODE]`` prefix: that text is what
    the host sends to the client, as a deployed node does.
    """

    code = "HOST_SIDE_ERROR"

    def __str__(self) -> str:
        return self.message


class EngineError(HostSideError, RuntimeError):
    """The engine failed; the host reports it as an ``Error: ...`` chunk (mid-answer) or
    as an ``error`` frame (before the first token, see
    :meth:`~langchain_fabstir.host.engines.Generation.opened`)."""

    code = "ENGINE_FAILED"


class EngineRateLimited(EngineError):
    """The engine refused for now: the host answers with its rate-limit error."""

    code = "ENGINE_RATE_LIMITED"
    is_retryable = True
    retry_after: float

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message, retry_after=retry_after)


class EngineContextOverflow(EngineError):
    """The prompt does not fit the model: the host answers ``TOKEN_LIMIT_EXCEEDED``."""

    code = "ENGINE_CONTEXT_OVERFLOW"

    def __init__(
        self,
        message: str,
        *,
        prompt_tokens: int | None = None,
        context_window: int | None = None,
    ) -> None:
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.context_window = context_window


class EngineStopped(HostSideError, RuntimeError):
    """The host stopped an answer that nobody read."""

    code = "ENGINE_STOPPED"


class EmbeddingEngineError(HostSideError, RuntimeError):
    """The embedding model is missing, unreadable or failed on a batch."""

    code = "EMBEDDING_ENGINE_FAILED"


class HostImageError(HostSideError):
    """An image request the reference host refuses as a node does: ``node_code`` is the
    node's code (``VALIDATION_FAILED``, ``PROMPT_BLOCKED``, ``DIFFUSION_SERVICE_UNAVAILABLE``,
    ``IMAGE_GENERATION_FAILED``, ``RATE_LIMIT_EXCEEDED``) that goes on the wire, ``status``
    the HTTP status ``POST /v1/images/generate`` answers with."""

    code = "HOST_IMAGE_REFUSED"

    def __init__(self, node_code: str, status: int, message: str) -> None:
        super().__init__(message)
        self.node_code, self.status = node_code, status


class UpstreamError(HostSideError):
    """A sidecar (search API, diffusion) could not be reached, was too slow, or sent too
    much or something malformed."""

    code = "UPSTREAM_FAILED"

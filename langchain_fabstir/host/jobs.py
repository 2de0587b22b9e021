"""An answer being generated, independent of the socket that asked for it.

The reference host runs each prompt as an :class:`AnswerJob`: a producer task turns the
engine's tokens into ready-to-send frames, and any number of consumers (the socket that
asked, or a later socket that *resumes* it) send those frames from a position. A
dropped socket does not stop the job at once: it stays ready for a client that
reconnects (at most ``unread_limit`` tokens ahead, for at most ``unread_wait`` seconds),
then closes its engine (an upstream stops generating); what it generated is kept for a
grace period so that a client can continue from the token it last received (the
``resume`` extension).

Details and examples: :class:`AnswerJob`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from langchain_fabstir.errors import EngineStopped

__all__ = ["AnswerJob", "EngineStopped"]


class AnswerJob:
    """Frames of one answer, produced once, consumable from any token offset.

    >>> import asyncio
    >>> async def demo():
    ...     async def tokens():
    ...         for t in ["a", "b", "c"]:
    ...             yield t
    ...     job = AnswerJob("r1", chunk_frame=lambda t, n: t, end_frames=lambda job: ["END"])
    ...     job.start(tokens())
    ...     await job.finished.wait()
    ...     return job.frames[job.start_of_token(1):]
    >>> asyncio.run(demo())
    ['b', 'c', 'END']

    Once the answer is over, the job keeps only its frames: the callbacks (and whatever
    they hold, such as the prompt and the engine's generator) are let go, so that a job
    kept for a resume pins no more memory than the answer it sends.

    A job nobody reads (:meth:`detach`, when its last consumer left) waits for a reader
    for ``unread_wait`` seconds: it generates at most ``unread_limit`` tokens ahead, then
    pauses (no more tokens are pulled from the engine). A consumer that comes back in
    time (:meth:`attach`, a resume) gets the whole answer, as if nothing happened.
    Otherwise the job stops: its engine is closed (an upstream request is closed, so the
    upstream stops generating), and its frames end with an ``Error: ...`` chunk saying
    so, then the usual end frames; they are kept for the host's ``resume_grace``.

    Args:
        request_id: the prompt's id (a resume names it).
        owner: a secret that only the socket that asked holds (its resume token); a
            resume must present it.
        tracker: the checkpoint tracker of this answer, if it has one.
        chunk_frame: ``chunk_frame(token, index)`` -> the frame text for one token.
        end_frames: ``end_frames(job)`` -> frames sent after the last token (called once
            when the engine is done: checkpoint, final empty chunk, ``stream_end``).
        on_token: optional ``on_token(token)`` -> extra frames to send *before* the token
            (checkpoint frames).
    """

    def __init__(
        self,
        request_id: str,
        *,
        owner: str | None = None,
        tracker: Any = None,
        chunk_frame: Callable[[str, int], str],
        end_frames: Callable[[AnswerJob], list[str]],
        on_token: Callable[[str], list[str]] | None = None,
        on_error: Callable[[Exception], str] | None = None,
        unread_limit: int = 256,
        unread_wait: float = 5.0,
    ) -> None:
        if unread_limit < 1:
            raise ValueError(f"unread_limit must be at least 1, not {unread_limit}")
        if unread_wait < 0:
            raise ValueError(f"unread_wait must not be negative, not {unread_wait}")
        self.request_id = request_id
        self.owner = owner
        """The resume token of the socket that asked for it (or that resumed it last):
        only a client that presents it may resume the answer."""
        self.tracker = tracker
        self.consumers = 0
        """Sockets sending this answer right now."""
        self.frames: list[str] = []
        self.chunk_at: list[int] = []  # frame index of token i's chunk
        self.tokens = 0
        self.finished = asyncio.Event()
        self.cancelled = False
        self.unread_limit = unread_limit
        self.unread_wait = unread_wait
        self._reader: asyncio.Event | None = None  # set when a reader is back
        self._give_up_at = 0.0  # loop time at which an unread job stops
        self._give_up: asyncio.TimerHandle | None = None
        self.stopped_unread = False
        """The job stopped because nobody read it (see :meth:`detach`)."""
        self._stop_at: int | None = None  # the token count at which an unread job stops
        self._chunk_frame: Callable[[str, int], str] | None = chunk_frame
        self._end_frames: Callable[[AnswerJob], list[str]] | None = end_frames
        self._on_token = on_token
        self._on_error = on_error
        self._waiters: list[asyncio.Future[None]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self, tokens: AsyncIterator[str]) -> None:
        self._task = asyncio.ensure_future(self._produce(tokens))

    async def _produce(self, tokens: AsyncIterator[str]) -> None:
        frames = self.frames
        chunk_frame, on_token = self._chunk_frame, self._on_token
        assert chunk_frame is not None
        try:
            async for token in tokens:
                if on_token is not None:
                    frames.extend(on_token(token))
                self.chunk_at.append(len(frames))
                frames.append(chunk_frame(token, self.tokens))
                self.tokens += 1
                if self._waiters:
                    self._wake()
                if (
                    self._stop_at is not None
                    and self.tokens >= self._stop_at
                    and not await self._reader_back()
                ):
                    self.stopped_unread = True
                    if self._on_error is not None:
                        frames.append(
                            self._on_error(
                                EngineStopped(
                                    f"the answer was stopped after {self.tokens} tokens: "
                                    "no client read it"
                                )
                            )
                        )
                    break
        except asyncio.CancelledError:
            self.cancelled = True
        except Exception as exc:  # an engine failure becomes an "Error: ..." chunk
            if self._on_error is None:
                raise
            frames.append(self._on_error(exc))
        finally:
            closer = getattr(tokens, "aclose", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()
            if not self.cancelled and self._end_frames is not None:
                frames.extend(self._end_frames(self))
            # Let go of everything but the frames (the closures hold the prompt).
            self._chunk_frame = self._end_frames = self._on_token = self._on_error = None
            del chunk_frame, on_token, tokens
            self._task = None
            if self._give_up is not None:
                self._give_up.cancel()
                self._give_up = None
            self.finished.set()
            self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def start_of_token(self, offset: int) -> int:
        """Frame index from which a client that received ``offset`` tokens continues."""
        if offset <= 0:
            return 0
        if offset <= len(self.chunk_at):
            return self.chunk_at[offset - 1] + 1
        return len(self.frames)

    async def wait_beyond(self, position: int) -> None:
        """Return once there are frames past ``position`` or the job is finished."""
        if position < len(self.frames) or self.finished.is_set():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        await fut

    @property
    def paused(self) -> bool:
        """Nobody reads it and it is ``unread_limit`` tokens ahead: it waits for a reader."""
        return (
            self._stop_at is not None
            and self.tokens >= self._stop_at
            and not self.finished.is_set()
        )

    async def _reader_back(self) -> bool:
        """Paused (nobody reads, ``unread_limit`` tokens ahead): wait for a reader until
        ``unread_wait`` seconds after the last one left. False: nobody came back."""
        reader = self._reader
        remaining = self._give_up_at - asyncio.get_running_loop().time()
        if reader is None or remaining <= 0:
            return reader is None
        try:
            await asyncio.wait_for(reader.wait(), remaining)
        except asyncio.TimeoutError:
            return False
        return True

    def _time_is_up(self) -> None:
        self._give_up = None
        if self._reader is not None:  # still nobody: stop at the next token
            self._stop_at = self.tokens

    def detach(self) -> None:
        """Nobody reads the job now: it stops unless a reader is back within
        ``unread_wait`` seconds (it runs at most ``unread_limit`` tokens ahead)."""
        if self.finished.is_set():
            return
        loop = asyncio.get_running_loop()
        self._stop_at = self.tokens + self.unread_limit
        self._reader = asyncio.Event()
        self._give_up_at = loop.time() + self.unread_wait
        if self._give_up is not None:
            self._give_up.cancel()
        self._give_up = loop.call_at(self._give_up_at, self._time_is_up)

    def attach(self) -> None:
        """A consumer reads the job again: it goes on unbounded."""
        self._stop_at = None
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.set()
        if self._give_up is not None:
            self._give_up.cancel()
            self._give_up = None

    def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

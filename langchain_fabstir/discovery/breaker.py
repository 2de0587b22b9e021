"""A circuit breaker per host, fed by the session layer.

States: ``closed`` (normal), ``open`` (resting after ``failure_threshold`` consecutive
failures), ``half_open`` (``reset_timeout`` has passed: one trial is allowed). The session layer
reports outcomes with :meth:`record_failure` / :meth:`record_success`; discovery asks
:meth:`try_acquire` before offering a host. The clock is injectable, so tests need no sleeps:

>>> now = [0.0]
>>> b = CircuitBreaker(failure_threshold=2, reset_timeout=10.0, clock=lambda: now[0])
>>> b.record_failure("boom"); b.record_failure("boom again"); b.state
'open'
>>> b.try_acquire()
False
>>> now[0] = 10.0; b.state, b.try_acquire(), b.try_acquire()
('half_open', True, False)
>>> b.record_success(); b.state
'closed'

A half-open trial that is handed out but never reported (the session layer succeeded with an
earlier host and never tried this one) expires after another ``reset_timeout``, so a host can
never be locked out forever.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

__all__ = ["BreakerState", "CircuitBreaker"]

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Consecutive-failure circuit breaker for one host (see the module docstring)."""

    def __init__(
        self,
        *,
        failure_threshold: int = 3,
        reset_timeout: float = 30.0,
        clock: Callable[[], float],
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        if reset_timeout < 0:
            raise ValueError("reset_timeout must be >= 0")
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._clock = clock
        self.failures = 0
        self.last_error: str | None = None
        self._opened_at: float | None = None
        self._trial_at: float | None = None

    @property
    def state(self) -> BreakerState:
        """``closed``, ``open`` or ``half_open`` at the clock's current time."""
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self.reset_timeout:
            return "half_open"
        return "open"

    def rest_remaining(self) -> float:
        """Seconds until an open breaker turns half-open (0 when not open)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self.reset_timeout - self._clock())

    def available(self) -> bool:
        """Whether the host may be offered now (does not claim a half-open trial)."""
        state = self.state
        if state == "closed":
            return True
        if state == "open":
            return False
        return self._trial_at is None or self._clock() - self._trial_at >= self.reset_timeout

    def try_acquire(self) -> bool:
        """Like :meth:`available`, and in the half-open state claim the single trial."""
        if not self.available():
            return False
        if self.state == "half_open":
            self._trial_at = self._clock()
        return True

    def record_failure(self, error: BaseException | str | None = None) -> None:
        """Count one failure; open (or re-open, after a failed trial) the breaker."""
        self.last_error = None if error is None else _describe(error)
        self.failures += 1
        if self.state == "half_open" or self.failures >= self.failure_threshold:
            self._opened_at = self._clock()
            self._trial_at = None

    def record_success(self) -> None:
        """Close the breaker and forget past failures."""
        self.failures = 0
        self._opened_at = None
        self._trial_at = None

    def describe(self) -> str:
        """A short human explanation of why the host is not offered (for error reasons)."""
        last = f" (last: {self.last_error})" if self.last_error else ""
        if self.state == "open":
            return (
                f"circuit open after {self.failures} consecutive failures{last}; "
                f"resting {self.rest_remaining():.1f} s more"
            )
        if self.state == "half_open":
            return f"circuit half-open: a trial connection is already in progress{last}"
        return "circuit closed"


def _describe(error: BaseException | str) -> str:
    if isinstance(error, str):
        return error[:300]
    text = str(error) or type(error).__name__
    return f"{type(error).__name__}: {text}"[:300]

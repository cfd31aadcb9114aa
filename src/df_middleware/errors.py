"""The two failures a handler or connector may raise; the worker alone turns them into outcomes.

- `RetryableError`: try again later (network error, timeout, 5xx, 429, database conflict).
  `retry_after` (seconds), when the remote said so, is a lower bound for the next attempt.
- `PermanentError`: retrying cannot help (4xx other than 408/409/429, validation); the event
  is dead-lettered at once.
"""

from __future__ import annotations


class SyncError(Exception):
    """Base of the failures the worker knows how to classify."""


class RetryableError(SyncError):
    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(SyncError):
    pass


class NotAttempted(PermanentError):
    """A remote write refused before any request left (an invalid number, a person who opted
    out): nothing was changed anywhere, so the write is certainly not made (R-IDEM-2)."""


class InvalidPhoneNumber(NotAttempted):
    """A phone number that is not a valid number (R-ID-1); raised before any request is made."""


class OptedOut(NotAttempted):
    """An SMS to a number whose SMS consent is `opted_out` (R-OPT-4): never sent."""


class UnexpectedResponse(PermanentError):
    """A 2xx whose body does not have the documented shape: retrying the call cannot fix it."""

"""Errors of the serving layer; the method's own errors live in `e4t.errors`."""

from e4t.errors import Cancelled


class ServeError(Exception):
    """Base class of the errors raised by the engine itself (not by `e4t`)."""


class QueueFull(ServeError):
    """The model worker's queue is full; the client should retry later."""


class DeadlineExceeded(Cancelled):
    """The request's deadline passed before it finished (a Cancelled with a reason)."""


class NotReady(ServeError):
    """The server is still loading its models."""


class StoreCorrupt(ServeError):
    """A stored concept fails its checksum or does not parse: DATA_LOSS, never served."""


class StoreUnavailable(ServeError):
    """The concept store cannot be reached (object storage down, volume unmounted)."""


class Unauthenticated(ServeError):
    """No bearer token, or one the server does not know."""


class PermissionDenied(ServeError):
    """A valid tenant asked for something only another tenant may do."""


class FailedPrecondition(ServeError):
    """The request does not fit the state of what it names (cancelling an operation that is done)."""


class RateLimited(ServeError):
    """A tenant is over its rate or quota; `retry_after_s` says when to try again (None: not by waiting)."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


__all__ = [
    "Cancelled",
    "DeadlineExceeded",
    "FailedPrecondition",
    "NotReady",
    "PermissionDenied",
    "QueueFull",
    "RateLimited",
    "ServeError",
    "StoreCorrupt",
    "StoreUnavailable",
    "Unauthenticated",
]

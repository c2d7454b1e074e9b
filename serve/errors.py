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


__all__ = ["Cancelled", "DeadlineExceeded", "NotReady", "QueueFull", "ServeError"]

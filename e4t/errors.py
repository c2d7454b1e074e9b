"""Errors the method raises on bad input; callers (the server) map them to status codes."""


class E4TError(Exception):
    """Base class of the errors a caller can fix."""


class InvalidInput(E4TError, ValueError):
    """An image, prompt or parameter the method cannot accept."""


class NotFound(E4TError, KeyError):
    """A concept, domain or model that does not exist."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class Cancelled(E4TError):
    """The caller withdrew the request (gRPC cancellation or deadline) while it ran."""

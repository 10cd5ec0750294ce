"""Domain errors raised by the runtime and mapped to HTTP status codes in one place (`app.py`).

Torch-free, so routers, schemas and the client's tests can import it.
"""

from __future__ import annotations

from typing import Any


class HeadscopeError(Exception):
    """An error whose message is safe to show to the caller."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, detail: Any = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.headers = headers or {}


class EmptyText(HeadscopeError):
    status_code = 400
    code = "empty_text"


class BadRequest(HeadscopeError):
    status_code = 400
    code = "bad_request"


class Unauthorized(HeadscopeError):
    status_code = 401
    code = "unauthorized"


class NotFound(HeadscopeError):
    status_code = 404
    code = "not_found"


class InputTooLong(HeadscopeError):
    status_code = 413
    code = "input_too_long"


class BodyTooLarge(HeadscopeError):
    status_code = 413
    code = "body_too_large"


class UnknownHead(HeadscopeError):
    status_code = 422
    code = "unknown_head"


class InvalidRequest(HeadscopeError):
    status_code = 422
    code = "invalid_request"


class ResponseTooLarge(HeadscopeError):
    status_code = 413
    code = "response_too_large"


class Overloaded(HeadscopeError):
    status_code = 429
    code = "overloaded"


class NotReady(HeadscopeError):
    status_code = 503
    code = "not_ready"


class ProbesNotLoaded(HeadscopeError):
    status_code = 503
    code = "probes_not_loaded"


class CorpusUnavailable(HeadscopeError):
    status_code = 503
    code = "corpus_unavailable"


class ClientGone(HeadscopeError):
    """The client closed its connection before its answer was ready (nobody reads this one)."""

    status_code = 499
    code = "client_closed_request"

    def __init__(self) -> None:
        super().__init__("The client closed the connection before the answer was ready.")


class StartupError(Exception):
    """Raised while loading; the CLI prints the message and exits non-zero."""

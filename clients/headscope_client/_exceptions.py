"""The client's exceptions, and the one function that maps an error response to one of them.

The tree is drawn in the package docstring (`headscope_client.__doc__`).
"""

from __future__ import annotations

from typing import Any

import httpx

__all__ = [
    "APIConnectionError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "HeadscopeError",
    "NotFoundError",
    "PayloadTooLargeError",
    "RateLimitError",
    "ServerError",
    "UnavailableError",
    "UnprocessableEntityError",
    "make_status_error",
]


class HeadscopeError(Exception):
    """Base of every error the client raises."""


class APIConnectionError(HeadscopeError):
    """No response: the server could not be reached, or the connection broke."""

    def __init__(self, message: str, *, request: httpx.Request) -> None:
        super().__init__(message)
        self.message = message
        self.request = request


class APITimeoutError(APIConnectionError):
    """The server did not answer within the client's timeout."""


class APIResponseValidationError(HeadscopeError):
    """A success response whose body does not match the expected schema (client/server skew)."""

    def __init__(self, message: str, *, response: httpx.Response) -> None:
        super().__init__(message)
        self.message = message
        self.response = response
        self.status_code = response.status_code


class APIStatusError(HeadscopeError):
    """The server answered with a 4xx or 5xx status.

    `code`, `message` and `detail` come from the error envelope
    `{"error": {"code", "message", "detail"}}`; for a body that is not one (a proxy's HTML page),
    `code` is `http_<status>` and `message` the start of the body.
    """

    def __init__(
        self, message: str, *, response: httpx.Response, code: str, detail: Any = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.response = response
        self.status_code = response.status_code
        self.code = code
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.status_code} {self.code}: {self.message}"


class BadRequestError(APIStatusError):
    """400: e.g. empty text or a body that is not JSON."""


class AuthenticationError(APIStatusError):
    """401: the server has an API key and the request's was missing or wrong."""


class NotFoundError(APIStatusError):
    """404: no such route (an older server?) or resource."""


class PayloadTooLargeError(APIStatusError):
    """413: the text has more tokens than the server allows, or the body is too large."""


class UnprocessableEntityError(APIStatusError):
    """422: an unknown layer or head, or a field that fails validation."""


class RateLimitError(APIStatusError):
    """429: the server's analysis queue is full (retried by default)."""


class ServerError(APIStatusError):
    """5xx: the server failed; 502 and 504 are retried by default."""


class UnavailableError(ServerError):
    """503: the model is still loading, or the probes are not loaded (retried by default)."""


_STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    413: PayloadTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    503: UnavailableError,
}

_BODY_EXCERPT_CHARS = 200


def make_status_error(response: httpx.Response) -> APIStatusError:
    """The exception for an error response, parsed from the envelope where there is one."""
    status = response.status_code
    code, message, detail = f"http_{status}", "", None
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        code = str(error.get("code") or code)
        message = error["message"]
        detail = error.get("detail")
    else:
        message = response.text[:_BODY_EXCERPT_CHARS].strip() or response.reason_phrase
    if status in _STATUS_ERRORS:
        error_class = _STATUS_ERRORS[status]
    elif status >= 500:
        error_class = ServerError
    else:
        error_class = APIStatusError
    return error_class(message, response=response, code=code, detail=detail)

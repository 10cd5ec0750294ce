"""The one error envelope, `{"error": {"code", "message", "detail"}}`, and the one mapping from an
exception to it. FastAPI's exception handlers (app.py), the ASGI guards and the HTTP protocol
all answer through these, so an error reads the same whichever layer met it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from headscope.errors import HeadscopeError

log = logging.getLogger("headscope")

STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "overloaded",
    503: "unavailable",
}

# FastAPI's words when the body is not parseable JSON at all (bad UTF-8, nesting deeper than the
# parser's recursion limit, an integer of thousands of digits).
FASTAPI_BODY_PARSE_ERROR = "There was an error parsing the body"


def error_body(code: str, message: str, detail: Any = None) -> bytes:
    """The envelope's bytes, written as Starlette's JSONResponse writes JSON."""
    return json.dumps(
        {"error": {"code": code, "message": message, "detail": detail}},
        ensure_ascii=False,
        allow_nan=False,
        separators=(",", ":"),
    ).encode("utf-8")


def error_response(
    status: int,
    code: str,
    message: str,
    detail: Any = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """The envelope as a response; also an ASGI app (`await response(scope, receive, send)`)."""
    return Response(
        error_body(code, message, detail),
        status_code=status,
        headers=dict(headers) if headers else None,
        media_type="application/json",
    )


def _printable(part: object, limit: int = 100) -> str:
    # A location can hold a caller's field name: keep it short and encodable (a lone surrogate
    # in it would otherwise break the UTF-8 response and turn a 422 into a 500).
    text = str(part)[:limit]
    return text.encode("utf-8", errors="backslashreplace").decode("utf-8")


def _validation_detail(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Only location, message and type: echoing the input could be huge or not JSON-safe.
    return [
        {
            "loc": [_printable(part) for part in item.get("loc", ())],
            "msg": item.get("msg", ""),
            "type": item.get("type", ""),
        }
        for item in errors
    ]


def _validation_response(errors: list[dict[str, Any]]) -> Response:
    detail = _validation_detail(errors)
    if any(item["type"] == "json_invalid" for item in detail):
        return error_response(400, "invalid_json", "Request body is not valid JSON.", detail)
    if any(item["type"] == "model_attributes_type" and item["loc"] == ["body"] for item in detail):
        return error_response(
            422,
            "invalid_request",
            "Request body must be a JSON object (send Content-Type: application/json).",
            detail,
        )
    summary = "; ".join(f"{'.'.join(item['loc'])}: {item['msg']}" for item in detail[:5])
    return error_response(422, "invalid_request", f"Invalid request: {summary}", detail)


def response_for(error: BaseException) -> Response:
    """The envelope for any exception met while answering a request."""
    if isinstance(error, HeadscopeError):
        return error_response(
            error.status_code, error.code, error.message, error.detail, error.headers
        )
    if isinstance(error, RequestValidationError):
        return _validation_response(list(error.errors()))
    if isinstance(error, HTTPException):
        if error.status_code == 400 and error.detail == FASTAPI_BODY_PARSE_ERROR:
            return error_response(
                400,
                "invalid_json",
                "Request body is not valid JSON (invalid UTF-8, nested too deeply, or a number "
                "too long to parse).",
            )
        # Guards raising from inside the body stream attach their own code and detail.
        code = getattr(error, "error_code", None) or STATUS_CODES.get(
            error.status_code, "http_error"
        )
        detail = getattr(error, "error_detail", None)
        return error_response(error.status_code, code, str(error.detail), detail, error.headers)
    log.error("Unhandled error", exc_info=error)
    return error_response(500, "internal_error", "Internal server error; see the server log.")

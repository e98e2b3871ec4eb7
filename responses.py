"""JSON responses (serialised with orjson) and errors in OpenAI's shape, so the SDK raises its
usual exceptions with our message. On the lowest floor, beside no package: the proxy's routes
and the reports' routes (/metrics, /stats) both answer with them."""

from __future__ import annotations

import httpx
import orjson
from fastapi.responses import Response


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")


def openai_error(status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> Response:
    return json_response({"error": {"message": message, "type": type, "param": param, "code": code}}, status)


def bad_gateway(message: str) -> Response:
    return openai_error(502, message, type="backend_error", code="backend_unreachable")


def backend_failed(backend: str, exc: httpx.HTTPError) -> Response:
    """504 when the backend went silent past its timeout, 502 when it could not be reached or broke off,
    400 when the client's request cannot be sent on at all (a header value HTTP does not allow)."""
    if isinstance(exc, httpx.LocalProtocolError):
        # Not the exception's text: it quotes the offending header value, which may be an API key.
        return openai_error(400, "catcache cannot forward this request: a header value is not allowed in HTTP",
                            code="unforwardable_request")
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
        return openai_error(504, f"the {backend} backend sent nothing for longer than its timeout ({exc!r})",
                            type="backend_error", code="backend_timeout")
    return bad_gateway(f"catcache could not reach the {backend} backend: {exc!r}")

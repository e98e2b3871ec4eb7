"""Errors in OpenAI's JSON shape, so the SDK raises its usual exceptions with our message."""

from __future__ import annotations

from fastapi.responses import ORJSONResponse


def openai_error(status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> ORJSONResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return ORJSONResponse(body, status_code=status)


def bad_gateway(message: str) -> ORJSONResponse:
    return openai_error(502, message, type="backend_error", code="backend_unreachable")

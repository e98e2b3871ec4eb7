"""A bearer token in front of the operator's routes: /admin/*, /stats and /metrics.

These routes reload policies, purge entries and tell per-tenant traffic, so once a token is
configured they answer only to `Authorization: Bearer <token>` (compared in constant time). The
OpenAI routes keep their own API keys, which catcache only forwards; /healthz stays open for probes.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from catcache.responses import openai_error

PROTECTED = ("/admin/", "/stats", "/metrics")


def is_protected(path: str) -> bool:
    return path.startswith(PROTECTED[0]) or path.rstrip("/") in PROTECTED[1:]


class AdminAuth:
    def __init__(self, app: ASGIApp, token: str | None):
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token is None or scope["type"] != "http" or not is_protected(scope["path"]):
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer" or not given.strip():
            response = openai_error(401, "This route needs the admin token: Authorization: Bearer <token>.",
                                    code="admin_token_required")
            response.headers["www-authenticate"] = "Bearer"
        elif not hmac.compare_digest(given.strip(), self.token):
            response = openai_error(403, "The admin token is not valid.", code="invalid_admin_token")
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)

"""The optional bearer token: when VAE_API_TOKEN is set, every route but health needs it."""

from __future__ import annotations

import secrets

from fastapi import Request

from service.core.errors import UnauthorizedError


async def require_token(request: Request) -> None:
    expected = request.app.state.service.settings.token
    if expected is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise UnauthorizedError("Authorization: expected 'Bearer <token>', got " + ("nothing" if not header else "another scheme"))
    if not secrets.compare_digest(token.strip().encode(), expected.encode()):
        raise UnauthorizedError("Authorization: the bearer token is not the configured one")

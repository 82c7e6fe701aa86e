"""The optional bearer token: when VAE_API_TOKEN is set, every route but health needs it.

Programs send `Authorization: Bearer <token>`. A browser cannot add that header when it navigates, so
the results page (`service.http.ui`) signs its user in once with the token and sets a session cookie,
as Jupyter does: an HMAC of an expiry time keyed with the token (so it never reveals the token and dies
when the token changes), HttpOnly (page scripts cannot read it), SameSite=Strict. The cookie stands in
for the token only on requests that also carry `X-VAE-UI`, a header a page on another site cannot send
here without a CORS preflight this server never grants: no cross-site request forgery.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time

from fastapi import Request

from service.core.errors import UnauthorizedError

SESSION_COOKIE = "vae_session"
SESSION_HEADER = "X-VAE-UI"
SESSION_SECONDS = 8 * 3600


async def require_token(request: Request) -> None:
    settings = request.app.state.service.settings
    expected = settings.token
    if expected is None:
        return
    header = request.headers.get("authorization", "")
    if not header and settings.ui and SESSION_HEADER in request.headers and has_session(request, expected):
        return
    problem = bearer_problem(header, expected)
    if problem is not None:
        raise UnauthorizedError(problem)


def bearer_problem(header: str, expected: str) -> str | None:
    """What is wrong with an `Authorization` header given the expected token; None if nothing."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return "Authorization: expected 'Bearer <token>', got " + ("nothing" if not header else "another scheme")
    if not secrets.compare_digest(token.strip().encode(), expected.encode()):
        return "Authorization: the bearer token is not the configured one"
    return None


def session_cookie(token: str, now: float | None = None) -> str:
    """A session cookie's value, valid for SESSION_SECONDS from `now`: `<expiry>.<signature>`."""
    expires = int(time.time() if now is None else now) + SESSION_SECONDS
    return f"{expires}.{_signature(token, expires)}"


def has_session(request: Request, token: str) -> bool:
    """Whether the request carries an unexpired session cookie signed with `token`."""
    expires, _, signature = request.cookies.get(SESSION_COOKIE, "").partition(".")
    if not re.fullmatch(r"[0-9]{1,12}", expires) or int(expires) < time.time():
        return False
    return secrets.compare_digest(signature.encode(), _signature(token, int(expires)).encode())


def _signature(token: str, expires: int) -> str:
    return hmac.new(token.encode(), f"vae-ui session until {expires}".encode(), hashlib.sha256).hexdigest()

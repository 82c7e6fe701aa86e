"""The results page, `GET /ui`: pick a model, drop images, and see each one's anomaly score,
percentile, flag and heatmap beside it. Off with VAE_UI=0.

The page is static HTML, CSS and JS from `service/http/ui/`; its script calls the REST API
(`GET /models`, `POST /models/{name}/anomaly`) from the same origin, so nothing comes from another
host and a strict Content-Security-Policy holds. When VAE_API_TOKEN is set, `/ui` answers 401 with a
sign-in form instead; posting the token to `/ui/session` sets the session cookie that
`service.http.auth` describes, and `DELETE /ui/session` (the page's "Sign out") clears it. The CSS
and JS are served to anyone: they are the package's own files and hold no data.
"""

from __future__ import annotations

import html
import secrets
from functools import cache
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from service.http.auth import SESSION_COOKIE, SESSION_SECONDS, bearer_problem, has_session, session_cookie

ASSETS = Path(__file__).with_name("ui")
MEDIA_TYPES = {"ui.css": "text/css", "ui.js": "text/javascript"}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

router = APIRouter(include_in_schema=False)


@cache
def _asset(name: str) -> str:
    return (ASSETS / name).read_text(encoding="utf-8")


def _root(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/")  # behind a proxy that strips a prefix


def _sign_in_form(message: str = "") -> HTMLResponse:
    body = _asset("sign-in.html").replace("<!-- message -->", html.escape(message))
    return HTMLResponse(body, status_code=401, headers={**HEADERS, "WWW-Authenticate": "Bearer",
                                                          "Cache-Control": "no-store"})


@router.get("/ui")
async def page(request: Request) -> Response:
    token = request.app.state.service.settings.token
    header = request.headers.get("authorization", "")
    if token is None or has_session(request, token) or (header and bearer_problem(header, token) is None):
        body = _asset("page.html")
        if token is not None:  # "Sign out" only means something with a token; the page shows it then
            body = body.replace('data-auth="none"', 'data-auth="token"', 1)
        return HTMLResponse(body, headers={**HEADERS, "Cache-Control": "no-store"})
    return _sign_in_form()


@router.post("/ui/session")
async def sign_in(request: Request) -> Response:
    token = request.app.state.service.settings.token
    if token is None:
        return RedirectResponse(_root(request) + "/ui", status_code=303)
    given = (await request.form()).get("token")
    if not isinstance(given, str) or not secrets.compare_digest(given.strip().encode(), token.encode()):
        return _sign_in_form("That is not the server's token (VAE_API_TOKEN).")
    response = RedirectResponse(_root(request) + "/ui", status_code=303)
    response.set_cookie(SESSION_COOKIE, session_cookie(token), max_age=SESSION_SECONDS, path=_root(request) + "/",
                        httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


@router.delete("/ui/session", status_code=204)
async def sign_out(request: Request) -> Response:
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path=_root(request) + "/", httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")
    return response


@router.get("/ui/{asset}")  # not {name}: metrics would count it as describing a model of that name
async def asset(asset: str) -> Response:
    if asset not in MEDIA_TYPES:
        raise HTTPException(404)
    return Response(_asset(asset), media_type=MEDIA_TYPES[asset], headers={"X-Content-Type-Options": "nosniff"})

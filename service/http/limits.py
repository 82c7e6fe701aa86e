"""The request-size limit, enforced before any byte of an oversized body is parsed."""

from __future__ import annotations

from service.core.errors import PayloadTooLargeError
from service.http.errors import error_response


class BodySizeLimit:
    """ASGI middleware: 413 when Content-Length, or the bytes actually streamed, exceed `max_bytes`."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _message(self, got: str) -> str:
        return f"body: expected at most {self.max_bytes} bytes (VAE_MAX_BODY_BYTES), got {got}"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    return await error_response(400, f"Content-Length: expected an integer, got {value!r}")(scope, receive, send)
                if length > self.max_bytes:
                    return await error_response(413, self._message(f"{length}"))(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise PayloadTooLargeError(self._message(f"more ({seen} so far)"))
            return message

        await self.app(scope, limited_receive, send)

"""`uvicorn service.main:app`: the app is built from the environment on first access, not at import."""

from __future__ import annotations

from service.app import create_app


def __getattr__(name: str):
    if name == "app":
        app = create_app()
        globals()["app"] = app  # later lookups find it without coming back here
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""`vae serve`: registered into the `vae` command through the "vae.commands" entry point."""

from __future__ import annotations

import argparse


def register(commands) -> None:
    serve = commands.add_parser("serve", help="serve every run under a model directory over HTTP")
    serve.add_argument("--model-dir", default=None, help="directory of run directories (env VAE_MODEL_DIR)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    raise NotImplementedError("vae serve: the service is being built (issue 3)")

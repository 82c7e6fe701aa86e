"""`vae serve`: registered into the `vae` command through the "vae.commands" entry point."""

from __future__ import annotations

import argparse
import logging
import signal


def register(commands) -> None:
    serve = commands.add_parser("serve", help="serve every run under a model directory over HTTP")
    serve.add_argument("--model-dir", default=None, help="directory of run directories (env VAE_MODEL_DIR)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.settings import Settings

    settings = Settings(**({"model_dir": args.model_dir} if args.model_dir is not None else {}))
    # uvicorn stops accepting on SIGTERM or SIGINT, waits for requests in flight (at most the
    # timeout), runs the lifespan's shutdown (which drains the batchers), restores the handlers it
    # found and re-raises the signal. The handlers below receive that re-raised signal, so a
    # graceful shutdown ends with exit status 0 instead of death by signal.
    stopped_by = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, frame: stopped_by.append(signal.Signals(number).name))
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=settings.log_level.lower(),
                timeout_graceful_shutdown=settings.shutdown_timeout_s)
    if stopped_by:
        logging.getLogger("service").info("stopped by %s after a graceful shutdown", stopped_by[0])
    return 0

"""`vae serve`: registered into the `vae` command through the "vae.commands" entry point."""

from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path


def register(commands) -> None:
    serve = commands.add_parser("serve", help="serve every run under a model directory over HTTP")
    serve.add_argument("--model-dir", default=None, help="directory of run directories (env VAE_MODEL_DIR)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(handler=_serve)


def check_model_dir(root: Path, polling: bool) -> None:
    """Refuse (ValueError) a model directory that can serve nothing, now or later.

    A missing path or a file is a mistake (a typo) that waiting would not mend. An existing but
    empty directory is refused only when the repository does not poll it (VAE_POLL_INTERVAL_S=0):
    a polling server starts, answers 503 on /health/ready until a run appears, and serves it then,
    as a Kubernetes pod started before its training Job has written the first run must.
    """
    from service.core.registry import run_directories  # see _serve

    expected = f"expected a folder of run directories written by `vae train --out {root}/NAME`"
    if not root.exists():
        raise ValueError(f"the model directory {root} does not exist; {expected}")
    if not root.is_dir():
        raise ValueError(f"the model directory {root} is not a directory; {expected}")
    if not polling and not run_directories(root):
        raise ValueError(f"the model directory {root} holds no run directories and VAE_POLL_INTERVAL_S is 0, so "
                         f"none added later would be served; train one first with `vae train --out {root}/NAME`, "
                         f"or poll for it (VAE_POLL_INTERVAL_S > 0)")


def _serve(args: argparse.Namespace) -> int:
    # `vae` imports this module to build its parser for every subcommand, also where only the
    # training extra is installed: the server's stack (FastAPI, pydantic, uvicorn) loads here.
    import uvicorn

    from service.app import create_app
    from service.settings import Settings

    settings = Settings(**({"model_dir": args.model_dir} if args.model_dir is not None else {}))
    check_model_dir(settings.model_dir, polling=settings.poll_interval_s > 0)  # `vae` prints the ValueError as one
    # line and exits with 2
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

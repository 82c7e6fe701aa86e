#!/bin/sh
# `pip install` for image builds. The build mounts it with RUN --mount=type=bind, so it never
# lands in an image. When the build was given a `pip_cert` secret (a CA bundle, for networks that
# reach PyPI through a TLS-intercepting proxy), pip trusts it; the secret is mounted only for the
# duration of that RUN and leaves nothing behind in any layer.
set -eu
if [ -s /run/secrets/pip_cert ]; then
    export PIP_CERT=/run/secrets/pip_cert
fi
exec /opt/venv/bin/python -m pip install --no-cache-dir --disable-pip-version-check "$@"

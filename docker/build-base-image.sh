#!/usr/bin/env bash
# Build a minimal Python 3.11 base image from Debian packages, for hosts that cannot pull
# python:3.11-slim from a container registry but can reach a Debian mirror.
#
#   docker/build-base-image.sh [TAG]      (default TAG: vae-lab/python:3.11-bookworm)
#
# Debian bookworm's python3 is CPython 3.11, so the result stands in for python:3.11-slim:
# `python3 -m venv` works in it, `python` is on PATH (python-is-python3), and it carries
# ca-certificates. If TAG already exists locally the script does nothing (cheap re-runs).
# Needs root, debootstrap and a running Docker engine. DEBIAN_MIRROR overrides the mirror.
set -euo pipefail

tag=${1:-vae-lab/python:3.11-bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "base image $tag already exists locally: reusing it"
    exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap
fi

rootfs=$(mktemp -d /tmp/vae-base-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT

echo "debootstrap bookworm from $mirror into $rootfs (takes a few minutes)"
debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
    bookworm "$rootfs" "$mirror"

# Slim the root file system the way the official Debian images do: no package caches,
# no apt lists, no docs or man pages.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/var/log/*.log "$rootfs"/tmp/*

tar -C "$rootfs" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' \
    --message "Debian bookworm minbase + python3 (3.11), built by docker/build-base-image.sh" \
    - "$tag"
docker image ls "$tag"

#!/usr/bin/env bash
# Train the default model on the embedded digits (no download) unless runs/default is complete,
# then serve every run under runs/ at http://127.0.0.1:8000 (docs at /docs).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh train,serve
vae train --out runs/default --skip-if-complete
exec vae serve --model-dir runs --host "${VAE_HOST:-127.0.0.1}" --port "${VAE_PORT:-8000}"

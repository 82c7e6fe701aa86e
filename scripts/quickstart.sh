#!/usr/bin/env bash
# Train the default model on the embedded digits (no download) unless runs/default is complete,
# then serve every run under runs/ at http://127.0.0.1:8000 (docs at /docs).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh train,serve
vae train --out runs/default --skip-if-complete
echo "The vae command lives in .venv: run 'source .venv/bin/activate' in your shell (or call .venv/bin/vae)."
echo "Serving runs/ at http://${VAE_HOST:-127.0.0.1}:${VAE_PORT:-8000} (docs at /docs); Ctrl-C stops it."
exec vae serve --model-dir runs --host "${VAE_HOST:-127.0.0.1}" --port "${VAE_PORT:-8000}"

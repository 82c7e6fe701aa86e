#!/usr/bin/env bash
# Run the test suite (seeded, CPU, a few minutes), creating .venv first if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh all
python -m pytest -q "$@"

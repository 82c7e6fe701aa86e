# Sourced by the other scripts: make (or reuse) the project's virtual environment in .venv.
# Usage: source scripts/env.sh EXTRAS   (e.g. "all" or "train,serve")
# Every package is installed at the version requirements/constraints.txt pins (scripts/lock.sh
# refreshes it); editing pyproject.toml or that file re-installs on the next call.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
extras=${1:-all}
python=${PYTHON:-$(command -v python3.11 || command -v python3)}
"$python" -c 'import sys; assert sys.version_info >= (3, 11), f"Python 3.11+ needed, found {sys.version}"'
if [ ! -x "$root/.venv/bin/python" ]; then
    echo "creating $root/.venv with $("$python" --version)" >&2
    "$python" -m venv "$root/.venv"
fi
constraints="$root/requirements/constraints.txt"
stamp="$root/.venv/.installed-$extras"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ] || [ "$constraints" -nt "$stamp" ]; then
    echo "installing vae-lab[$extras] into .venv, pinned by requirements/constraints.txt" \
        "(PyTorch is large: a minute or two the first time)" >&2
    "$root/.venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -c "$constraints" -e "$root[$extras]"
    touch "$stamp"
fi
export PATH="$root/.venv/bin:$PATH"

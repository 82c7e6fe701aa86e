#!/usr/bin/env bash
# Refresh requirements/constraints.txt, the pins that scripts/env.sh, .ci/run and the Dockerfile
# install from: the exact version of every package that `pip install -e .[all]` resolves today,
# for the torch and torchvision named.
#
#   bash scripts/lock.sh                  # the torch and torchvision pinned now, newest of the rest
#   bash scripts/lock.sh 2.15.0 0.30.0    # move torch; torchvision must be its companion release
#
# It installs into a throwaway virtual environment (never .venv) without the current pins, so
# only pyproject.toml's ranges and pip's own configuration (a site-wide cap, an index mirror)
# bound what it resolves. Then: `git diff requirements/`, `bash scripts/test.sh`, commit.
# PYTHON picks the interpreter, as for scripts/env.sh; the lock holds for that Python and platform.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
lock=$root/requirements/constraints.txt
pinned() { sed -n "s/^$1==//p" "$lock" 2>/dev/null; }
torch=${1:-$(pinned torch)}
torchvision=${2:-$(pinned torchvision)}
if [ -z "$torch" ] || [ -z "$torchvision" ]; then
    echo "usage: scripts/lock.sh [TORCH_VERSION TORCHVISION_VERSION] (no pins to reuse in $lock)" >&2
    exit 2
fi
python=${PYTHON:-$(command -v python3.11 || command -v python3)}

venv=$(mktemp -d /tmp/vae-lock.XXXXXX)
trap 'rm -rf "$venv"' EXIT
"$python" -m venv "$venv"
echo "resolving vae-lab[all] with torch==$torch torchvision==$torchvision in $venv" >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "torch==$torch" "torchvision==$torchvision" -e "$root[all]"
"$venv/bin/python" -m pip check >&2

mkdir -p "$(dirname "$lock")"
{
    cat <<EOF
# Exact versions of everything \`pip install -e .[all]\` installs, for the app, the tests, CI and
# the images: pip constraints (-c), read by scripts/env.sh (so scripts/test.sh and .ci/run) and the
# Dockerfile. pyproject.toml keeps version ranges (vae-lab is also a library); this file is the one
# environment the suite is tested in.
#
# Made by \`bash scripts/lock.sh $torch $torchvision\` with $("$venv/bin/python" --version) on $(uname -sm):
# a throwaway venv, \`pip install torch==$torch torchvision==$torchvision -e .[all]\` without these
# pins, then \`pip freeze --exclude-editable\`. Refresh the same way (\`bash scripts/lock.sh\` keeps
# torch, \`bash scripts/lock.sh TORCH TORCHVISION\` moves it), run the suite, commit the diff.
#
# torch here is PyPI's CUDA build, hence nvidia-*, triton and cuda-*; on a machine without CUDA
# they sit unused. The images take torch's CPU-only build from PyTorch's index instead and skip
# the torch, torchvision, nvidia-*, triton and cuda-* lines (docs/docker.md).
EOF
    "$venv/bin/python" -m pip freeze --exclude-editable --disable-pip-version-check
} > "$lock.tmp"
mv "$lock.tmp" "$lock"
echo "wrote $lock ($(grep -vc '^#' "$lock") lines of pins)" >&2

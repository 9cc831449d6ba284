#!/usr/bin/env bash
# Make a virtual environment with exactly the locked, tested versions and score-rl installed in it (editable).
# Usage: bash scripts/install.sh [VENV [LOCK]]   (defaults: .venv constraints/lock-cpu.txt)
# README commands 1 and 2 and .ci/run call this. The lock is for CPython 3.11 on x86-64 Linux with the CPU torch
# (constraints/lock-cpu.txt says how it is made); elsewhere install from pyproject.toml's ranges (see the README).
# uv installs the lock (several times faster than pip); pip only bootstraps uv itself, at a pinned version.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv}"
LOCK="${2:-constraints/lock-cpu.txt}"
UV_VERSION=0.13.9
[[ -f "$LOCK" ]] || { echo "scripts/install.sh: no lock file $LOCK" >&2; exit 2; }
py="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[[ "$py" == 3.11 ]] || echo "scripts/install.sh: warning: $LOCK was resolved for Python 3.11, this is $py;" \
  "if the install fails, use pyproject.toml's ranges (README)" >&2
[[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
# (pip's "Location ... is ignored" lines are this machine's unused local index paths: filtered out)
"$VENV/bin/python" -m pip install -q "uv==$UV_VERSION" 2> >(grep -v "is ignored: it is neither" >&2)
# shellcheck source=scripts/uv-find-links.sh
source scripts/uv-find-links.sh
# exactly the lock (sync also removes what is not in it), then score-rl itself without resolving anything
if ! "$VENV/bin/uv" pip sync --quiet --python "$VENV/bin/python" "$LOCK"; then
  echo "scripts/install.sh: uv could not install $LOCK. It pins the CPU build of torch (torch==2.13.0+cpu), which" \
    "PyPI does not serve: this project's machines ship its wheel in a local folder that pip is configured with" \
    "(find-links). Elsewhere set UV_FIND_LINKS to a folder holding it, or" \
    "UV_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu UV_INDEX_STRATEGY=unsafe-best-match" >&2
  exit 1
fi
"$VENV/bin/uv" pip install --quiet --python "$VENV/bin/python" --no-deps -e .

#!/usr/bin/env bash
# Installs this bundle (made by scripts/device/bundle.sh) and score-rl itself with no network: every wheel, DeepSpeed's
# sdist (built without ops: DS_BUILD_OPS=0, against the interpreter's own torch, --no-build-isolation) and score-rl
# from the working tree (REPO, default: the folder holding this bundle), not editable: run it again after editing the
# working tree. (score-rl must be installed, not only put on PYTHONPATH: its package score_rl.envs is the folder envs/.)
# Usage: [PYTHON=python3] [REPO=..] bash install.sh [TARGET]
#   TARGET: a folder (default /tmp/site; then export PYTHONPATH=TARGET), or "-" for PYTHON's own environment.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
PY="${PYTHON:-python3}"
REPO="$(cd "${REPO:-$here/..}" && pwd)"
TARGET="${1:-/tmp/site}"
want="$(cut -d' ' -f2 "$here/target.txt")"
have="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[[ "$have" == "$want" ]] || { echo "install.sh: the bundle is for Python $want, $PY is $have" >&2; exit 1; }
[[ -f "$REPO/pyproject.toml" && -d "$REPO/score_rl" ]] || { echo "install.sh: no score-rl working tree at $REPO (set REPO)" >&2; exit 1; }
where=(); [[ "$TARGET" == - ]] || where=(--target "$TARGET")
start=$SECONDS
# score-rl's sources, staged outside the working tree (a build there would leave build/ and egg-info behind)
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
tar -C "$REPO" --exclude=__pycache__ -cf - pyproject.toml README.md score_rl envs | tar -C "$stage" -xf -
# DeepSpeed's setup asks each op whether it is compatible even with DS_BUILD_OPS=0: give it the CUDA toolkit's home
if [[ -z "${CUDA_HOME:-}" ]] && command -v nvcc > /dev/null; then
  CUDA_HOME="$(dirname "$(dirname "$(command -v nvcc)")")"
  export CUDA_HOME
fi
# --upgrade: a second run (after an edit) replaces what the first put into TARGET instead of keeping it
DS_BUILD_OPS=0 PIP_NO_INDEX=1 "$PY" -m pip install -q --upgrade --no-index --no-deps --no-build-isolation \
  --no-cache-dir --disable-pip-version-check "${where[@]}" "$here"/pkgs/* "$stage"
echo "install.sh: $(find "$here/pkgs" -type f | wc -l) packages and score-rl ($REPO) installed into" \
  "${TARGET/#-/$PY\'s environment} in $((SECONDS - start)) s"

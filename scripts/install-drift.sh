#!/usr/bin/env bash
# The drift check's environment: the main lock, then the newest releases on the registry of the libraries whose API
# score-rl follows most closely (torch stays at the CPU pin). .ci/run runs the learner, rollout and in-process
# training tests in it, so an upstream rename fails the next submission rather than a user's fresh install.
# Usage: bash scripts/install-drift.sh [VENV]   (default .venv-drift)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-drift}"
bash scripts/install.sh "$VENV" constraints/lock-cpu.txt
# shellcheck source=scripts/uv-find-links.sh
source scripts/uv-find-links.sh
"$VENV/bin/uv" pip install --quiet --python "$VENV/bin/python" -c constraints/cpu.txt --upgrade \
  transformers trl deepspeed "ray[default]" peft accelerate
"$VENV/bin/python" - <<'PY'
from importlib.metadata import version
print("drift venv:", ", ".join(f"{name} {version(name)}" for name in
                               ("torch", "transformers", "trl", "deepspeed", "ray", "peft", "accelerate")))
PY

#!/usr/bin/env bash
# Lint check of the project's Python code with ruff (the version in the locks; configured in pyproject.toml's
# [tool.ruff]). Changes no file; exits 1 if ruff check finds something, 2 if there is no ruff.
# Usage: bash scripts/lint.sh    (RUFF=path/to/ruff to use another binary; default: .venv's, from scripts/install.sh)
# Formatting is not checked (ruff format is not adopted).
set -euo pipefail
cd "$(dirname "$0")/.."
RUFF="${RUFF:-.venv/bin/ruff}"
[[ -x "$RUFF" ]] || command -v "$RUFF" >/dev/null || {
  echo "scripts/lint.sh: no ruff at $RUFF: run scripts/install.sh (it installs the lock, which has ruff)" >&2; exit 2; }
dirs=(score_rl tests bench envs)  # envs/ is the score_rl.envs package; scripts/ holds shell scripts only
rc=0
"$RUFF" check --no-cache "${dirs[@]}" || rc=1
(( rc == 0 )) && echo "scripts/lint.sh: ruff check passed"
exit "$rc"

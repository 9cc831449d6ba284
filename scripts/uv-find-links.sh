# shellcheck shell=bash
# Sourced by scripts/install.sh, install-drift.sh and lock.sh: uv reads no pip configuration, so UV_FIND_LINKS gets the
# local wheel folders pip is set up with (PIP_FIND_LINKS, else pip's config), unless it is set already. This project's
# machines ship the CPU build of torch in such a folder; PyPI has only the CUDA one. pip separates folders by spaces,
# uv by commas.
if [[ -z "${UV_FIND_LINKS:-}" ]]; then
  UV_FIND_LINKS="${PIP_FIND_LINKS:-$(python3 -m pip config get global.find-links 2>/dev/null || true)}"
  UV_FIND_LINKS="$(printf '%s' "$UV_FIND_LINKS" | tr -s '[:space:]' ',' | sed 's/^,//; s/,$//')"
fi
export UV_FIND_LINKS

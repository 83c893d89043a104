#!/usr/bin/env bash
# Set up (idempotent), then run the main job: the whole Code Llama family at the tiny scale on the
# embedded default corpus (the Python standard library), scored, with a report. Resumable: rerun it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec codellama pipeline --run "${RUN:-runs/family}" "$@"

#!/usr/bin/env bash
# Set up (idempotent), then run the main job on the embedded default corpus (the Python stdlib).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
RUN=${RUN:-runs/main}
[ -d "$RUN/tokenizer" ] || codellama tokenizer train --out "$RUN/tokenizer"
[ -d "$RUN/tiny" ] || codellama model init --preset tiny --tokenizer "$RUN/tokenizer" --out "$RUN/tiny"
codellama model info "$RUN/tiny"

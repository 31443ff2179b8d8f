#!/usr/bin/env bash
# The test command (README command 2; .ci/run calls exactly this).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
bash scripts/ensure_services.sh --promtool --tesseract
# shellcheck disable=SC1091
. .venv/bin/activate
export HF_HUB_OFFLINE=1 OPENBLAS_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
ruff check .
ruff format --check .
mypy
python -m pytest -q -p no:cacheprovider --durations=25 "$@"

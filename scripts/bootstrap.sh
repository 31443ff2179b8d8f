#!/usr/bin/env bash
# Create .venv and install ragfleet with the fleet (the `worker` extra: the bare package is only the
# client) and the dev tools. torch goes first: torch==2.13.0 resolves to
# a CPU wheel; letting another package pull torch would download a multi-GB CUDA build.
set -eo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
quiet() { grep -v -e "^WARNING: Location" -e "^\s*$" || true; }
python -m pip install -q --upgrade pip 2>&1 | quiet
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0" 2>&1 | quiet
python -m pip install -q -e ".[worker,dev]" 2>&1 | quiet
# the ONNX encoders, exported from the bundled weights into var/data/onnx (~40 s, once): the configured
# model (int8pc by default) and fp32 (the model of indexes built before int8pc became the default)
RAGFLEET_DATA_DIR="${RAGFLEET_DATA_DIR:-$(pwd)/var/data}" python -m ragfleet.onnx_export --variant fp32 >/dev/null
RAGFLEET_DATA_DIR="${RAGFLEET_DATA_DIR:-$(pwd)/var/data}" python -m ragfleet.onnx_export >/dev/null
echo "bootstrap: $(python --version), torch $(python -c 'import torch; print(torch.__version__)')"

#!/usr/bin/env bash
# README command 1: set up, start the fleet on its embedded defaults (Redis + LanceDB + extractive
# answerer), ingest the demo corpus and print an answer with sources. The fleet keeps running;
# stop it with scripts/stop.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
bash scripts/ensure_services.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export HF_HUB_OFFLINE=1 OPENBLAS_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
export RAGFLEET_DATA_DIR="${RAGFLEET_DATA_DIR:-$(pwd)/var/data}"
export RAGFLEET_FEEDBACK_DB_URL="${RAGFLEET_FEEDBACK_DB_URL:-sqlite:///$(pwd)/var/feedback.db}"
export RAGFLEET_METRICS_DIR="${RAGFLEET_METRICS_DIR:-$(pwd)/var/prom}"
mkdir -p var "$RAGFLEET_DATA_DIR"; rm -rf "$RAGFLEET_METRICS_DIR"; mkdir -p "$RAGFLEET_METRICS_DIR"
if [ -f var/fleet.pid ] && kill -0 "$(cat var/fleet.pid)" 2>/dev/null; then
  echo "fleet already running (pid $(cat var/fleet.pid))"
else
  PROCS="api retrieval generation indexing feedback maintenance callbacks beat"
  [ -n "${RAGFLEET_FLOWER_PASSWORD:-}" ] && PROCS="$PROCS flower"
  # shellcheck disable=SC2086
  setsid honcho start -f Procfile $PROCS > var/fleet.log 2>&1 < /dev/null &
  echo $! > var/fleet.pid
  echo "fleet starting (pid $(cat var/fleet.pid), log var/fleet.log)"
fi
ragfleet wait-ready --pools retrieval,generation,indexing --timeout 180
ragfleet ingest demo/corpus --batch-size 16
ragfleet ask "What happens to a task when its worker is killed?"
echo
echo "API: http://127.0.0.1:${RAGFLEET_API_PORT:-8000}/docs   stop the fleet: bash scripts/stop.sh"

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
mkdir -p var "$RAGFLEET_DATA_DIR"
# shellcheck source=scripts/fleet_env.sh
. scripts/fleet_env.sh
# the ONNX encoder (exported and checked against torch once per weights and runtime; instant when cached):
# here rather than in the first worker's warm-up
python -m ragfleet.onnx_export >/dev/null
if pid=$(fleet_pid); then
  echo "fleet already running (supervisord pid $pid)"
else
  rm -rf "$RAGFLEET_METRICS_DIR"; mkdir -p "$RAGFLEET_METRICS_DIR"  # no metrics of a previous run's pids
  # every process of the fleet under one supervisord (infra/supervisor/fleet.conf), which daemonizes
  supervisord -c "$FLEET_CONF"
  for _ in $(seq 100); do [ -S "$RAGFLEET_FLEET_DIR/supervisor.sock" ] && break; sleep 0.1; done
  if [ -n "${RAGFLEET_FLOWER_PASSWORD:-}" ]; then supervisorctl -c "$FLEET_CONF" start flower; fi
  echo "fleet starting (supervisord pid $(cat "$FLEET_PIDFILE"), logs $RAGFLEET_FLEET_DIR/log/)"
fi
ragfleet wait-ready --pools retrieval,generation,indexing --timeout 180
ragfleet ingest demo/corpus --batch-size 16
ragfleet ask "What happens to a task when its worker is killed?"
echo
echo "API: $RAGFLEET_API_URL/docs   processes: ragfleet ps       stop the fleet: bash scripts/stop.sh"

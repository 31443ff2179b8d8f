#!/usr/bin/env bash
# Stop the fleet started by scripts/demo.sh (the whole process group honcho leads).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f var/fleet.pid ]; then
  pid=$(cat var/fleet.pid)
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f var/fleet.pid
  echo "fleet stopped"
else
  echo "no fleet pid file (var/fleet.pid)"
fi

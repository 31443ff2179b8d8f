#!/usr/bin/env bash
# Stop the fleet scripts/demo.sh started: supervisord stops every process (SIGTERM to its process
# group: Celery's warm shutdown, uvicorn's graceful one; SIGKILL past the program's stopwaitsecs),
# then exits. Then check that nothing of its session is left; exit 1 (after killing it) if something was.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/fleet_env.sh
. scripts/fleet_env.sh
PY="${PYTHON:-python}"; [ -x .venv/bin/python ] && PY=.venv/bin/python
if [ -f var/fleet.pid ]; then  # a fleet started under honcho (the Procfile) before supervisord
  kill -TERM -- "-$(cat var/fleet.pid)" 2>/dev/null || true
  rm -f var/fleet.pid
fi
if ! pid=$(fleet_pid); then
  echo "no fleet running (no live pid in $FLEET_PIDFILE)"
  exit 0
fi
"$PY" -m supervisor.supervisorctl -c "$FLEET_CONF" shutdown
while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done  # each process drains up to its stopwaitsecs
# supervisord daemonized into a session of its own: whatever is still in it was left behind
left=$(pgrep -s "$pid" || true)
if [ -n "$left" ]; then
  echo "left behind by the fleet, now killed:" >&2
  # shellcheck disable=SC2086
  ps -o pid,pgid,args -p "$(echo $left | tr ' ' ,)" >&2 || true
  # shellcheck disable=SC2086
  kill -KILL $left 2>/dev/null || true
  exit 1
fi
echo "fleet stopped"

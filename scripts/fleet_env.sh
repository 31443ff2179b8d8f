# The local fleet's launch variables, with their defaults (infra/supervisor/fleet.conf reads them;
# workers/supervisord.py says what each is). Sourced by scripts/demo.sh and scripts/stop.sh from the
# repository root; a variable already set wins (a test runs its own fleet beside this one).
# shellcheck shell=bash
export RAGFLEET_FLEET_DIR="${RAGFLEET_FLEET_DIR:-$(pwd)/var}"
export RAGFLEET_API_PORT="${RAGFLEET_API_PORT:-8000}"
export RAGFLEET_API_URL="${RAGFLEET_API_URL:-http://127.0.0.1:$RAGFLEET_API_PORT}"
export RAGFLEET_RETRIEVAL_NODES="${RAGFLEET_RETRIEVAL_NODES:-2}"
FLEET_CONF=infra/supervisor/fleet.conf
FLEET_PIDFILE="$RAGFLEET_FLEET_DIR/supervisord.pid"
mkdir -p "$RAGFLEET_FLEET_DIR/log"

fleet_pid() {  # supervisord's pid while it runs, else nothing (and status 1)
  [ -f "$FLEET_PIDFILE" ] && kill -0 "$(cat "$FLEET_PIDFILE")" 2>/dev/null && cat "$FLEET_PIDFILE"
}

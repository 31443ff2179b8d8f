#!/bin/sh
# The image's entrypoint: `ROLE [EXTRA ARGS]` runs one process of that role, as workers/roles.py
# declares it (`python -m workers.roles --command ROLE`): api, retrieval, generation, indexing,
# feedback, maintenance, callbacks, beat. EXTRA ARGS are appended (e.g. `generation -c 16`). Anything else
# runs as given, e.g. `ragfleet index rollback` or `sh`. exec: the process is PID 1 and gets the
# orchestrator's SIGTERM itself (Celery's warm shutdown, uvicorn's graceful stop).
set -eu
if [ "$#" -eq 0 ]; then
    set -- api
fi
if command=$(python -m workers.roles --command "$1" 2>/dev/null); then
    shift
    eval "set -- $command \"\$@\""
fi
exec "$@"

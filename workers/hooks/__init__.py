"""Celery wiring of the worker processes, one concern a module, each with `install(app)`.

workers/app.py installs them from one explicit list (`HOOKS`), in an order that matters where two
connect to one signal: `node` first (the others read what it records), `inflight` before `warmup` in
`worker_ready` (requeue what a dead predecessor held before a slow warm-up). Every `install`
connects with a `dispatch_uid`, so installing twice connects once.
"""

"""Can this worker reach its vector store, and if not, why: what each worker reports.

A store outage must show where the operator looks, and only there: the API process never connects
to the store (a PostgreSQL outage must not make every API replica unready: the API only queues
work), so the workers that use it (retrieval, indexing, maintenance) probe it and report:
- a record per node in Redis (`store_health:<node>`, expiring after `STALE_AFTER_S`), which
  `ragfleet status` reads: which store, which server (`host:port`, never a URL: it may carry a
  password), up or down, and the error that says why;
- the gauge `ragfleet_store_up{store,role,server}` (1 up, 0 down), with an alert rule;
- one log line when a server goes down and one when it is back (not one per probe);
- the heartbeat file, where one is configured (workers/hooks/heartbeat.py), holds the same record.

A probe is its own short connection (`connect_timeout` = `PROBE_TIMEOUT_S`), not one from the
worker's pool: it must not take a connection a search is waiting for, and it runs in the node's main
process, which must hold no pool a prefork child could inherit.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from redis import Redis

from ragfleet.settings import Settings

log = logging.getLogger("ragfleet.store")

INTERVAL_S = 5.0
STALE_AFTER_S = 30  # a record older than this is gone: its node stopped reporting
PROBE_TIMEOUT_S = 2


@dataclass(slots=True)
class ServerState:
    role: str  # primary | replica | embedded | server
    server: str  # host:port, or the embedded store's directory
    up: bool
    error: str | None = None


def _probe_pg(url: str) -> str | None:
    """None when the server answers a query, else why not (first line of the error)."""
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=PROBE_TIMEOUT_S, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        return f"{type(exc).__name__}: {text}"[:300]
    return None


def probe(settings: Settings) -> list[ServerState]:
    """The state of every server of the configured store, probed now."""
    if settings.store == "postgres" and settings.pg_url is not None:
        from ragfleet.stores.pg_pool import server_label

        reads = settings.pg_read_urls.get_secret_value() if settings.pg_read_urls else ""
        urls = [("primary", settings.pg_url.get_secret_value())]
        urls += [("replica", u.strip()) for u in reads.split(",") if u.strip()]
        out = []
        for role, url in urls:
            error = _probe_pg(url)
            out.append(ServerState(role, server_label(url), error is None, error))
        return out
    if settings.store == "lancedb":
        # embedded: "down" would be a directory it cannot use, which every write then reports itself
        return [ServerState("embedded", str(settings.data_dir / "lancedb"), True)]
    return [ServerState("server", str(settings.weaviate_url or settings.store), True)]


class StoreWatch:
    """Probes the store and reports what it found (Redis record, gauge, log on change)."""

    def __init__(self, settings: Settings, redis: Redis, node: str) -> None:
        self.settings = settings
        self.redis = redis
        self.node = node
        self._last: dict[tuple[str, str], bool] = {}
        self.record: dict[str, Any] = {}

    def check(self) -> list[ServerState]:
        from ragfleet import metrics  # workers only: `ragfleet status` (the client) reads, never probes

        states = probe(self.settings)
        store = self.settings.store
        for st in states:
            metrics.set_store_up(store, st.role, st.server, st.up)
            was = self._last.get((st.role, st.server))
            if not st.up and was is not False:
                log.error("store %s %s %s is down: %s", store, st.role, st.server, st.error)
            elif st.up and was is False:
                log.warning("store %s %s %s is up again", store, st.role, st.server)
            self._last[(st.role, st.server)] = st.up
        self.record = {
            "node": self.node,
            "store": store,
            "checked_at": time.time(),
            "up": all(st.up for st in states if st.role != "replica") and any(st.up for st in states),
            "servers": [asdict(st) for st in states],
        }
        try:
            self.redis.set(
                self.settings.key("store_health", self.node), json.dumps(self.record), ex=STALE_AFTER_S
            )
        except Exception as exc:  # Redis down: the gauge and the log still say it
            log.warning("could not record the store's state in Redis: %s", exc)
        return states


def read_all(redis: Redis, settings: Settings) -> list[dict[str, Any]]:
    """Every node's latest record (nodes that stopped reporting have expired)."""
    out = []
    for key in redis.scan_iter(settings.key("store_health", "*"), count=500):
        raw = redis.get(key)
        if raw:
            out.append(json.loads(raw))
    return sorted(out, key=lambda r: str(r.get("node")))

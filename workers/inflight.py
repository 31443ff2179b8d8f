"""What a dead node held goes back on its queue: at once when it restarts under its name, within
seconds when it never comes back.

Late acks keep every delivered message in kombu's unacked hash until its task ends. A prefork
pool's parent survives a child's death and requeues that child's message itself
(`task_reject_on_worker_lost`). When the whole node dies (an OOM kill of a threads or solo pool, a
crash of the consumer, a reboot, a rescheduled pod), nothing does that: its messages would wait for
kombu's visibility-timeout sweep, 300 s for queries (longer than a query's 120 s expiry) and an
hour elsewhere, while their callers poll.

So every node records the delivery tags it holds in a set named after it, `ragfleet.inflight.<node>`
(workers/kombu_patches.py writes it in the same pipelines as kombu's own unacked entries: no round
trip of its own), and keeps a liveness key, `ragfleet.alive.<node>` (both under the broker prefix).

- Restarted under its name (a supervisor restarts `generation@%h` as `generation@%h`): before the
  node consumes it takes over what its last run left in that set (`claim`, in
  `celeryd_after_setup`); once its consumer is up it requeues each of those messages that is still
  unacknowledged (`requeue`, in `worker_ready`). A node that finds another live node with its own
  name (two processes started with one `-n`) requeues nothing: that node may still run them.
- Never back under its name: a `NodeKeeper` thread in every node refreshes the node's liveness key
  (SET EX `node_alive_ttl_s`, every `node_alive_refresh_s`) and its set's TTL, and every
  `node_gone_sweep_s` sweeps: under a short lock (one node sweeps a given unacked hash at a time) it
  reads the registry of nodes (`ragfleet.nodes`), and for each node whose liveness key is gone it
  restores the tags of that node's set that are in this node's own unacked hash, drops the tags
  that are in no unacked hash any more (acked), and deletes the set once it is empty. A query whose
  node died is then back on its queue within `node_alive_ttl_s + node_gone_sweep_s` (8 s by
  default): answered by another node if still in time, else revoked by Celery as expired on
  receipt, which `workers.hooks.revoked` reports as `worker_lost` (its worker died), not as a backlog.
  A thread, not the consumer's event loop: a solo node's loop is blocked while its task runs, and
  a node busy for 30 s must not be taken for dead. A node sweeps only once it has renewed its own
  key for `node_alive_ttl_s` without a Redis error: after an outage (keys expire while Redis is
  down, or come back expired from its append-only file) the other live nodes renew theirs first.

What no sweep here can restore is a message a node took off its queue (BRPOP) and died before
kombu recorded it as unacknowledged: it is in no key. The keeper thread also runs the deadline
sweep (`ragfleet.outcomes.fail_lost`, see ragfleet.deadlines) every tick, on every node (each due
job is taken by one sweeper only), so such a query ends `failed` with `lost` at its deadline.

Both paths requeue through kombu's own `QoS.restore_by_tag` (a WATCHed transaction on the unacked
hash, so a message is restored at most once even when a restarted node and a sweeper race): kombu
marks the message `redelivered`, and the redelivery cap in `workers.base` counts it.

Why kombu's visibility-timeout sweep stays as the last resort, at its length: it is what restores a
message when no live node can (the whole fleet down, a node that died before its set got a tag, a
set that expired after `node_inflight_ttl_s`), and it cannot tell a dead node from a slow task, so
lowering it below the longest time limit would run a still-running task twice. The liveness key can
tell them apart: it is refreshed by a thread that runs while the task does. What it cannot tell
apart is a node whose every thread is frozen for `node_alive_ttl_s` (a stopped process, a VM
paused): its messages are then redelivered while it still holds them, as the visibility timeout
would do later; tasks are idempotent and the redelivery cap counts the extra delivery.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis

from ragfleet.outcomes import fail_lost
from ragfleet.resources import Resources
from ragfleet.settings import Settings
from workers import kombu_patches

log = logging.getLogger("ragfleet.worker")

NODES_KEY = "ragfleet.nodes"  # every node that tracks its in-flight tags (under the broker prefix)


def alive_key(node: str) -> str:
    """`node`'s liveness key, before the broker prefix."""
    return f"ragfleet.alive.{node}"


def sweep_lock_key(unacked_key: str) -> str:
    return f"ragfleet.node_sweep.lock.{unacked_key}"


def _client(settings: Settings, *, decode: bool = True) -> redis.Redis:
    timeout = settings.redis_socket_timeout_s
    return redis.Redis.from_url(
        settings.broker, socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=decode
    )


def claim(settings: Settings, node: str) -> list[str]:
    """Take `node`'s in-flight set left by its previous run, and start tracking this run's.

    Atomic (MULTI: read, then delete; the node marked alive and registered), and done before this
    run's consumer takes a message, so the tags returned are only the previous run's."""
    p = settings.broker_key_prefix
    key = p + kombu_patches.inflight_key(node)
    r = _client(settings)
    pipe = r.pipeline(transaction=True)
    pipe.smembers(key)
    pipe.delete(key)
    pipe.set(p + alive_key(node), "1", px=int(settings.node_alive_ttl_s * 1000))
    pipe.sadd(p + NODES_KEY, node)
    kombu_patches.track_inflight(node, settings.node_inflight_ttl_s)
    try:
        members = pipe.execute()[0]
    except redis.RedisError as exc:  # a broker that is down: start anyway and wait for it, as Celery does
        log.warning("could not read what %s held before it restarted: %s", node, exc)
        return []
    finally:
        r.close()
    return sorted(members)


def requeue(consumer: Any, node: str, tags: list[str], *, ping_timeout_s: float = 1.0) -> int:
    """Put the claimed messages that are still unacknowledged back on their queues; returns how many."""
    if not tags:
        return 0
    replies = consumer.app.control.ping(destination=[node], timeout=ping_timeout_s)
    if any(node in reply for reply in replies or []):
        log.warning("another live node is named %s: not requeueing the %d it may hold", node, len(tags))
        return 0
    channel = consumer.task_consumer.channel
    qos = channel.qos
    requeued = 0
    for tag in tags:
        if channel.client.hget(qos.unacked_key, tag) is None:
            continue  # acked after all, or already restored by another node's sweep
        qos.restore_by_tag(tag)
        requeued += 1
    if requeued:
        log.warning(
            "requeued %d message(s) that the previous run of %s died holding (of %d it had recorded)",
            requeued,
            node,
            len(tags),
        )
    return requeued


def sweep_gone_nodes(
    r: redis.Redis, qos: Any, settings: Settings, node: str, unacked_keys: frozenset[str]
) -> int:
    """One sweep (see the module docstring): restore what nodes without a liveness key held, from
    this node's own unacked hash (`qos.unacked_key`); returns how many messages it restored.

    `r` is a plain client (decode_responses) on the broker; `qos` a kombu Redis QoS of a channel with
    this node's transport options; `unacked_keys` every unacked hash of the fleet (unprefixed).

    A tag leaves the dead node's set before its message is restored: a sweep that fails between the
    two leaves the message in the unacked hash, where the visibility sweep finds it (late, never
    twice). A restored message keeps its delivery tag, so a tag that is in this hash and in a live
    node's set is that node's delivery now, not the dead node's: it is dropped, not restored."""
    p = settings.broker_key_prefix
    own = qos.unacked_key
    lock = p + sweep_lock_key(own)
    if not r.set(lock, node, nx=True, px=max(1, int(settings.node_gone_sweep_s * 1000))):
        return 0  # another node sweeps this hash now
    others = sorted(k for k in unacked_keys if k != own)
    nodes = sorted(str(m) for m in r.smembers(p + NODES_KEY))
    pipe = r.pipeline(transaction=False)
    for n in nodes:
        pipe.exists(p + alive_key(n))
    alive = dict(zip(nodes, pipe.execute(), strict=True))
    live = [n for n in nodes if alive[n] or n == node]
    restored = 0
    for gone in (n for n in nodes if not alive[n] and n != node):
        held = p + kombu_patches.inflight_key(gone)
        tags = sorted(str(t) for t in r.smembers(held))
        if not tags:  # nothing held (or its set expired): forget the node
            r.srem(p + NODES_KEY, gone)
            continue
        put_back = handled = 0
        for tag in tags:
            in_own = bool(r.hexists(p + own, tag))
            elsewhere = any(r.hexists(p + k, tag) for k in others)
            if not in_own and elsewhere:
                continue  # held in another pool kind's hash: a node of that kind sweeps it
            r.srem(held, tag)
            handled += 1
            if in_own and not any(r.sismember(p + kombu_patches.inflight_key(n), tag) for n in live):
                qos.restore_by_tag(tag)  # atomic: a racing restorer finds the entry gone
                put_back += 1
        restored += put_back
        if handled:
            log.warning(
                "node %s is gone (no liveness for %g s): put back %d of the %d message(s) it held",
                gone,
                settings.node_alive_ttl_s,
                put_back,
                len(tags),
            )
        if not r.exists(held):
            r.srem(p + NODES_KEY, gone)
    return restored


class NodeKeeper:
    """One daemon thread a node: its liveness key, its in-flight set's TTL, and the sweep.

    `connect` returns a kombu Connection with this node's transport options (the sweep restores
    through a channel of its own, never the consumer's, which belongs to the event loop)."""

    def __init__(self, settings: Settings, node: str, connect: Any, unacked_keys: frozenset[str]) -> None:
        self.settings = settings
        self.node = node
        self._connect = connect
        self._unacked_keys = unacked_keys
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ragfleet-node-keeper", daemon=True)
        self._conn: Any = None
        self._res = Resources(settings)  # the deadline sweep's job store clients (this thread's own)

    def start(self) -> NodeKeeper:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def beat(self, r: redis.Redis) -> None:
        s, p = self.settings, self.settings.broker_key_prefix
        pipe = r.pipeline(transaction=False)
        pipe.set(p + alive_key(self.node), "1", px=int(s.node_alive_ttl_s * 1000))
        pipe.expire(p + kombu_patches.inflight_key(self.node), s.node_inflight_ttl_s)
        pipe.sadd(p + NODES_KEY, self.node)  # a sweep may have dropped us during an outage
        pipe.execute()

    def sweep(self, r: redis.Redis) -> int:
        if self._conn is None:
            self._conn = self._connect()
        qos = self._conn.default_channel.qos
        return sweep_gone_nodes(r, qos, self.settings, self.node, self._unacked_keys)

    def sweep_deadlines(self) -> int:
        """Fail the queries past their deadline (ragfleet.deadlines); returns how many. Its own
        errors are logged apart: they must not stop this node's liveness beats."""
        try:
            lost = fail_lost(self._res)
        except Exception as exc:
            log.warning("deadline sweep of %s: %s", self.node, exc)
            return 0
        if lost:
            log.warning("failed %d query job(s) past their deadline as lost: %s", len(lost), lost[:10])
        return len(lost)

    def _run(self) -> None:
        s = self.settings
        r = _client(s)
        # Sweep only after one liveness TTL of beats that reached Redis: after a Redis outage (or at
        # start) every other live node must have had the time to renew its key, or this node would
        # take their keys, expired during the outage, for their deaths.
        beating_since: float | None = None
        next_sweep = 0.0
        while not self._stop.is_set():
            try:
                self.beat(r)
                now = time.monotonic()
                beating_since = now if beating_since is None else beating_since
                if (
                    s.node_gone_sweep_s > 0
                    and now >= next_sweep
                    and now - beating_since >= s.node_alive_ttl_s
                ):
                    next_sweep = now + s.node_gone_sweep_s
                    self.sweep(r)
            except Exception as exc:  # Redis down or a bad sweep: try again next time, never die
                log.warning("node keeper of %s: %s", self.node, exc)
                beating_since = None
                self._drop_connection()
            self.sweep_deadlines()
            self._stop.wait(min(s.node_alive_refresh_s, s.node_gone_sweep_s or s.node_alive_refresh_s))
        self._drop_connection()
        r.close()

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.release()
            except Exception:  # noqa: S110 - a broken connection: nothing left to release
                pass

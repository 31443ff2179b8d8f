"""Single-document updates gathered into batches before embedding.

Other services often send one document at a time. Embedding one document per task wastes the
model's batching and pays a store commit (a LanceDB version) per document. Updates are appended to
a Redis list; a flush indexes up to `update_batch_size` of them at once, triggered as soon as that
many are waiting or `update_max_wait_s` after the first one arrived, whichever comes first.

Crash safety: a flush reads a batch with LRANGE and removes it with LTRIM only after the batch is
indexed and its jobs are finished, under a lock, so a flusher killed mid-batch leaves the batch in
the list for the next one (indexing is idempotent).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ragfleet.indexing import index_documents
from ragfleet.resources import Resources
from ragfleet.schemas import DocumentError, ErrorCode


@dataclass(frozen=True, slots=True)
class FlushReport:
    batches: int
    documents: int
    failed: int


class UpdateBuffer:
    def __init__(self, res: Resources) -> None:
        self.res = res
        s = res.settings
        self.list_key = s.key("updates", "pending")
        self.flag_key = s.key("updates", "flush_scheduled")
        self.lock_key = s.key("lock", "updates_flush")

    def add(self, item: dict[str, Any]) -> int:
        return int(self.res.redis.rpush(self.list_key, json.dumps(item)))

    def pending(self) -> int:
        return int(self.res.redis.llen(self.list_key))

    def claim_schedule(self) -> bool:
        """True for the caller that must schedule the timed flush (one per wait window)."""
        ttl_ms = int((self.res.settings.update_max_wait_s + 30) * 1000)
        return bool(self.res.redis.set(self.flag_key, "1", nx=True, px=ttl_ms))

    def flush(self) -> FlushReport | None:
        """Index everything pending in batches; None if another flusher holds the lock."""
        r = self.res.redis
        lock = r.lock(self.lock_key, timeout=self.res.settings.index_time_limit_s, blocking=False)
        if not lock.acquire(blocking=False):
            return None
        batches = documents = failed = 0
        size = self.res.settings.update_batch_size
        try:
            r.delete(self.flag_key)  # updates arriving from now on schedule a new timed flush
            while True:
                raw = r.lrange(self.list_key, 0, size - 1)
                if not raw:
                    break
                items = [json.loads(x) for x in raw]
                failed += self._index(items)
                r.ltrim(self.list_key, len(raw), -1)
                batches += 1
                documents += len(items)
        finally:
            try:
                lock.release()
            except Exception:  # noqa: S110 - expired lock: nothing to release
                pass
        return FlushReport(batches, documents, failed)

    def _index(self, items: list[dict[str, Any]]) -> int:
        res = self.res
        docs = []
        for it in items:
            doc = dict(it.get("document") or {}) if isinstance(it.get("document"), dict) else {}
            doc.setdefault("tenant", it.get("tenant") or "default")
            docs.append(doc)
        result = index_documents(res, docs, tenant="default")
        errors: dict[int, DocumentError] = {e.index: e for e in result.errors if e.index >= 0}
        failed = 0
        for i, it in enumerate(items):
            job_id = str(it["job_id"])
            err = errors.get(i)
            if err is not None:
                res.jobs.fail(job_id, ErrorCode.INVALID_DOCUMENT, err.message)
                failed += 1
                continue
            res.jobs.finish(
                job_id,
                {
                    "document_id": docs[i].get("id"),
                    "batched_with": len(items),
                    "index_version": result.index_version,
                    "chunks_embedded_in_batch": result.chunks_embedded,
                },
            )
        return failed

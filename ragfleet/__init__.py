"""ragfleet: retrieval-augmented generation run as queued Celery work.

The core package holds every piece of domain logic (chunking, embedding, stores, generation, cache,
resilience, feedback). `workers/` and `tasks/` only wire it to Celery; `api_shim/` only enqueues and
reads job records. Importing `ragfleet` itself must stay light: no torch, no store clients.
"""

__version__ = "0.1.0"

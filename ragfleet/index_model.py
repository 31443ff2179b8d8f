"""Which embedding model a collection's vectors come from: the model that embeds every question that
searches it and every chunk written into it.

A question compared with chunks another model embedded gets a worse ranking without any error, and
an index holding two models' vectors ranks each half on another scale. So the model is pinned per
collection, as the chunker is (ragfleet/chunkers.py): recorded beside the index pointer
(`<prefix>:index:model:<collection>`, ragfleet/index_state.py) when a collection is first written,
or, for a collection written before models were recorded, read from its rows (each row carries the
`embedding_model` that made its vector). A change of `RAGFLEET_EMBEDDING_MODEL` does not reach the
live index by itself: retrieval and writes keep the live collection's model (a warning,
`model_pinned_to_index`, says so once per process) until the blue/green reindex builds a collection
with the configured model and records it in the same MULTI that makes it live; a rollback brings the
old collection back with its own model. Nothing about the fleet needs a restart for either.
"""

from __future__ import annotations

import functools
import logging

from ragfleet.index_state import IndexState
from ragfleet.stores.base import VectorStore

log = logging.getLogger("ragfleet.index")


def model_in_rows(store: VectorStore) -> str | None:
    """The model recorded in the first row of `store`; None: empty, or rows without one."""
    for batch in store.iter_chunks(batch_size=1):
        for row in batch:
            return row.embedding_model or None
    return None


def live_model(state: IndexState, collection: str, store: VectorStore, configured: str) -> str:
    """The model that embeds for `collection`: the recorded one (recorded now if none is: the model
    its rows carry, the configured one on an empty index)."""
    model = state.model_of(collection)
    if model is None:
        model = state.record_model(collection, model_in_rows(store) or configured)
    if model != configured:
        _warn_once(collection, model, configured)
    return model


@functools.cache
def _warn_once(collection: str, live: str, configured: str) -> None:
    log.warning(
        "model_pinned_to_index",
        extra={
            "collection": collection,
            "live": live,
            "configured": configured,
            "why": "questions and writes use the live index's model; `ragfleet index rebuild` (or the "
            "nightly reindex) rolls out the configured one",
        },
    )

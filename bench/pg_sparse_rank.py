"""Why PostgreSQL's full-text leg ranks SciFact worse than LanceDB's, and what would close it.

    python bench/pg_sparse_rank.py [--data ../shared/data/scifact]

The PostgreSQL store's sparse leg is `ts_rank(tsv, q, 1)` over an OR of the question's stemmed
lexemes (ragfleet/stores/postgres_store.py): length-normalised term frequency, with no inverse
document frequency, so a common word counts as much as a rare one. LanceDB's is BM25. This script
measures the sparse leg alone, inside PostgreSQL, on the fleet's own chunks (the same chunking
Settings; text only, no model needed), ranked two ways over the same GIN candidates:
1. `ts_rank(tsv, q, 1)`: what the store does today;
2. BM25 computed in SQL (k1 = 1.2, b = 0.75): document frequencies from `ts_stat` over the table
   (what a store upkeep step could keep in a small statistics table), term frequencies from
   `unnest(tsv)`, the document length as the tsvector's lexeme count.
Both are scored as `ragfleet eval` scores the fleet (document-level nDCG@10 over the dev queries).
Prints one table; nothing is written to the repository.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

from ragfleet.chunking import chunk_text
from ragfleet.corpus import read_documents
from ragfleet.evaluation import DEFAULT_DATA_DIR, load_dataset, score
from ragfleet.settings import Settings

OR_QUERY = "replace(plainto_tsquery('english', %(q)s)::text, ' & ', ' | ')::tsquery"
TS_RANK = f"""
SELECT doc_id FROM chunks, (SELECT {OR_QUERY} AS q) query
WHERE tsv @@ q ORDER BY ts_rank(tsv, q, 1) DESC, chunk_id LIMIT 50
"""
BM25 = f"""
WITH query AS (SELECT {OR_QUERY} AS q),
     words AS (SELECT DISTINCT unnest(tsvector_to_array(to_tsvector('english', %(q)s))) AS word),
     cand AS (SELECT chunk_id, doc_id, tsv FROM chunks, query WHERE tsv @@ q)
SELECT c.doc_id
FROM cand c, unnest(c.tsv) AS u(lexeme, positions, weights), lexeme_df s, corpus_stats n
WHERE u.lexeme IN (SELECT word FROM words) AND s.word = u.lexeme
GROUP BY c.chunk_id, c.doc_id
ORDER BY sum(
    ln(1 + (n.docs - s.ndoc + 0.5) / (s.ndoc + 0.5))
    * array_length(u.positions, 1) * 2.2
    / (array_length(u.positions, 1) + 1.2 * (0.25 + 0.75 * length(c.tsv) / n.avgdl))
) DESC, c.chunk_id
LIMIT 50
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    args = ap.parse_args()
    from tests.pg import PgServer

    settings = Settings()
    rows = [
        (f"{d['id']}#{i}", str(d["id"]), c.text)
        for d in read_documents(args.data / "corpus.jsonl")
        for i, c in enumerate(
            chunk_text(
                d["text"],
                size=settings.chunk_size_words,
                overlap=settings.chunk_overlap_words,
                title=d.get("title"),
            )
        )
    ]
    data = load_dataset(args.data)
    server = PgServer(Path(tempfile.mkdtemp(prefix="rf-bench-sparse-"))).init().start()
    try:
        server.wait_ready()
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE chunks (chunk_id text PRIMARY KEY, doc_id text NOT NULL, text text NOT NULL, "
                "tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED)"
            )
            with conn.cursor().copy("COPY chunks (chunk_id, doc_id, text) FROM STDIN") as cp:
                for row in rows:
                    cp.write_row(row)
            conn.execute("CREATE INDEX ON chunks USING gin (tsv)")
            conn.execute("CREATE TABLE lexeme_df AS SELECT word, ndoc FROM ts_stat('SELECT tsv FROM chunks')")
            conn.execute("CREATE UNIQUE INDEX ON lexeme_df (word)")
            conn.execute(
                "CREATE TABLE corpus_stats AS SELECT count(*)::float8 AS docs, "
                "avg(length(tsv))::float8 AS avgdl FROM chunks"
            )
            conn.execute("ANALYZE")
            print(f"{len(rows)} chunks, {len(data.queries)} dev queries", file=sys.stderr)
            print("| sparse leg, in PostgreSQL | nDCG@10 | Recall@100 | ms a query (P50) |")
            print("| --- | --- | --- | --- |")
            for label, query in (("ts_rank(tsv, q, 1) (the store today)", TS_RANK), ("BM25 in SQL", BM25)):
                rankings: dict[str, list[str]] = {}
                took: list[float] = []
                for qid, question in data.queries.items():
                    t0 = time.perf_counter()
                    rankings[qid] = [r[0] for r in conn.execute(query, {"q": question}).fetchall()]
                    took.append((time.perf_counter() - t0) * 1000)
                report = score(data, rankings)
                took.sort()
                print(
                    f"| {label} | {report.ndcg_at_10:.4f} | {report.recall_at_100:.3f} | "
                    f"{took[len(took) // 2]:.1f} |"
                )
    finally:
        server.stop()
        server.remove()


if __name__ == "__main__":
    main()

"""Stage `search`: impact search with encoded queries, or BM25 with the query text -> a TREC run file."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pipeline import data, lucene
from pipeline.files import atomic_path, read_jsonl

log = logging.getLogger(__name__)


def write_trec(hits: lucene.Hits, path: Path, tag: str) -> None:
    """TREC format, `qid Q0 docid rank score tag`: descending score, ties by descending docid (the
    order in which trec_eval reads a run)."""
    with atomic_path(path) as staging, open(staging, "w") as stream:
        for qid, ranking in hits.items():
            ranking = trec_order(ranking)
            for rank, (docid, score) in enumerate(ranking, start=1):
                stream.write(f"{qid} Q0 {docid} {rank} {score:.6f} {tag}\n")


def trec_order(ranking: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """trec_eval's ranking: score descending, then docid descending."""
    return sorted(sorted(ranking, key=lambda hit: hit[0], reverse=True), key=lambda hit: hit[1], reverse=True)


def search(
    index: Path,
    run: Path,
    dataset: str,
    *,
    queries: Path | None = None,
    k: int = 1000,
    threads: int = 2,
    k1: float = 0.9,
    b: float = 0.4,
    tag: str | None = None,
    remove_query: bool | None = None,
) -> dict:
    """Search `index` for `dataset`'s queries and write the TREC `run`.

    With `queries` (encode's queries.jsonl) it is an impact search with the quantized query weights,
    else a BM25 search (k1, b) of the query text. With `remove_query` (by default on the BEIR corpora
    where Pyserini does so) a query's own id is dropped from its ranking, as Pyserini's `--remove-query`,
    one more hit fetched to keep `k`. An index or queries recorded as made from another dataset are refused.
    """
    corpus = data.load(dataset)
    if not any(index.glob("segments_*")):
        raise data.DataError(f"{index}: not a Lucene index (run the index stage first)")
    corpus.check_source(index, "an index")
    if queries is not None:
        corpus.check_source(queries, "encoded queries")
    if remove_query is None:
        remove_query = corpus.queries_are_documents
    started = time.perf_counter()
    depth = k + 1 if remove_query else k
    if queries is not None:
        vectors = {record["id"]: record["vector"] for record in read_jsonl(queries)}
        hits = lucene.impact_search(index, vectors, k=depth, threads=threads)
    else:
        hits = lucene.bm25_search(index, corpus.queries(), k=depth, threads=threads, k1=k1, b=b)
    if remove_query:
        hits = {qid: [hit for hit in ranking if hit[0] != qid][:k] for qid, ranking in hits.items()}
    seconds = time.perf_counter() - started
    write_trec(hits, run, tag or run.stem)
    log.info("searched %d queries in %.1f s (%.1f queries/s)", len(hits), seconds, len(hits) / seconds)
    return {"run": str(run), "queries": len(hits), "seconds": seconds, "queries_per_second": len(hits) / seconds}

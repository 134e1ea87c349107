"""Stage `search`: impact search with encoded queries, or BM25 with the query text -> a TREC run file.

Anserini searches and writes the run in Java (`lucene.search_collection`); Python writes the topics,
puts tied hits in trec_eval's order and measures single-thread latency.
"""

from __future__ import annotations

import itertools
import logging
import tempfile
import time
from pathlib import Path

import numpy

from pipeline import data, lucene
from pipeline.files import atomic_path, jsonl_records

log = logging.getLogger(__name__)


def trec_order(ranking: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """trec_eval's ranking: score descending, then docid descending."""
    return sorted(sorted(ranking, key=lambda hit: hit[0], reverse=True), key=lambda hit: hit[1], reverse=True)


def _query_and_score(line: str) -> tuple[str, str]:
    qid, _, _, _, score, _ = line.split(" ", 5)
    return qid, score


def reorder_ties(anserini_run: Path, run: Path) -> None:
    """Anserini writes hits of equal score by ascending docid, trec_eval reads them by descending docid:
    each block of equal scores is reversed in place (ranks stay), so that the file's ranks are trec_eval's."""
    with open(anserini_run, encoding="utf-8") as lines, open(run, "w", encoding="utf-8") as out:
        for _, block in itertools.groupby(lines, key=_query_and_score):
            block = list(block)
            if len(block) == 1:
                out.write(block[0])
                continue
            ranks = [line.split(" ", 4)[3] for line in block]
            for rank, line in zip(ranks, reversed(block)):
                qid, q0, docid, _, rest = line.split(" ", 4)
                out.write(f"{qid} {q0} {docid} {rank} {rest}")


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
    latency_queries: int = 100,
) -> dict:
    """Search `index` for `dataset`'s queries and write the TREC `run`.

    With `queries` (encode's queries.jsonl) it is an impact search with the quantized query weights,
    else a BM25 search (k1, b) of the query text. `remove_query` drops a query's own id from its k hits
    (as Pyserini's `--remove-query` in its BEIR reproductions, so a ranking may hold k - 1 hits); by
    default it applies where the dataset's queries are also documents. Throughput is that of the run
    on `threads` threads; latency (p50, p99) that of up to `latency_queries` queries searched alone on
    one thread afterwards. An index recorded as made from another corpus than the dataset's, or queries
recorded as another dataset's, are refused.
    """
    query_set = data.load(dataset)
    if not any(index.glob("segments_*")):
        raise data.DataError(f"{index}: not a Lucene index (run the index stage first)")
    query_set.check_source(index, "an index")
    if queries is not None:
        query_set.check_source(queries, "encoded queries")
    if remove_query is None:
        remove_query = query_set.queries_are_documents
    if queries is not None:
        topics = {}
        for where, record in jsonl_records(queries):
            if not isinstance(record.get("id"), str) or not isinstance(record.get("vector"), dict):
                raise data.DataError(f"{where}: expected an encoded query {{\"id\": ..., \"vector\": {{term: weight}}}}")
            topics[record["id"]] = record["vector"]
    else:
        topics = query_set.queries()
    run.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{run.name}.", dir=run.parent) as work:
        topics_file, anserini_run = Path(work) / "topics.tsv", Path(work) / "anserini.trec"
        started = time.perf_counter()
        if queries is not None:
            lucene.write_impact_topics(topics, topics_file)
        else:
            lucene.write_text_topics(topics, topics_file)
        lucene.search_collection(index, topics_file, anserini_run, impact=queries is not None, k=k, threads=threads,
                                 remove_query=remove_query, tag=tag or run.stem, k1=k1, b=b)
        with atomic_path(run) as staging:
            reorder_ties(anserini_run, staging)
        seconds = time.perf_counter() - started
    sample = list(topics.values())[:latency_queries]
    if not sample:
        latencies = []
    elif queries is not None:
        latencies = lucene.impact_latencies(index, sample, k=k)
    else:
        latencies = lucene.bm25_latencies(index, sample, k=k, k1=k1, b=b)
    p50, p99 = numpy.percentile(numpy.array(latencies) * 1000, [50, 99]) if latencies else (float("nan"),) * 2
    result = {"run": str(run), "queries": len(topics), "threads": threads, "remove_query": remove_query,
              "seconds": seconds, "queries_per_second": len(topics) / seconds,
              "latency_queries": len(latencies), "latency_p50_ms": float(p50), "latency_p99_ms": float(p99)}
    log.info("searched %d queries in %.2f s: %.1f queries/s on %d threads; one thread: p50 %.2f ms, p99 %.2f ms",
             result["queries"], seconds, result["queries_per_second"], threads, result["latency_p50_ms"],
             result["latency_p99_ms"])
    return result

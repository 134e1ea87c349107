"""Stage `search`: impact search with encoded queries, or BM25 with the query text -> a TREC run file.

An impact index the index stage wrote (one segment sorted by id, with its docid table) is searched by
Lucene's own top-k collector from Python threads (`impact_search`); any other index, and BM25, by
Anserini's SearchCollection, which writes the run in Java (`lucene.search_collection`). Both write the
same run: Anserini's hits and scores, tied hits in trec_eval's order. Single-thread latency is
measured on a sample of queries after the run.
"""

from __future__ import annotations

import itertools
import logging
import tempfile
import time
from pathlib import Path

import numpy

from pipeline import data, impact_search, lucene
from pipeline.files import atomic_path, jsonl_records, scratch_folder

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
    query_set.check_source(index, "an index", known_from=queries)
    check_index_kind(index, impact=queries is not None)
    if queries is not None:
        query_set.check_source(queries, "encoded queries")
        check_same_model(index, queries)
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
    lucene.start_jvm(options=lucene.SEARCH_JVM_OPTIONS)  # unless a stage before in this process started it
    if queries is not None and impact_search.searchable(index):
        with atomic_path(run) as staging:
            seconds, latencies = impact_search.search_impact(
                index, topics, staging, k=k, threads=threads, remove_query=remove_query, tag=tag or run.stem,
                latency_queries=latency_queries)
    else:
        seconds = _search_collection(index, topics, run, impact=queries is not None, k=k, threads=threads,
                                     remove_query=remove_query, tag=tag or run.stem, k1=k1, b=b)
        latencies = _sample_latencies(index, list(topics.values()), impact=queries is not None, k=k, k1=k1, b=b,
                                      count=latency_queries)
    p50, p99 = numpy.percentile(numpy.array(latencies) * 1000, [50, 99]) if latencies else (float("nan"),) * 2
    result = {"run": str(run), "queries": len(topics), "threads": threads, "remove_query": remove_query,
              "seconds": seconds, "queries_per_second": len(topics) / seconds,
              "latency_queries": len(latencies), "latency_p50_ms": float(p50), "latency_p99_ms": float(p99)}
    log.info("searched %d queries in %.2f s: %.1f queries/s on %d threads; one thread: p50 %.2f ms, p99 %.2f ms",
             result["queries"], seconds, result["queries_per_second"], threads, result["latency_p50_ms"],
             result["latency_p99_ms"])
    return result


def check_index_kind(index: Path, *, impact: bool) -> None:
    """Refuse BM25 on an impact index, and encoded queries on a BM25 index: either run would score, and mean nothing.
    An index whose kind is not recorded (made by hand, or by Pyserini) is not checked."""
    kind = data.recorded(index, "kind")
    if kind == "impact" and not impact:
        raise data.DataError(f"{index} is an impact index of encoded documents: search it with encoded queries (--queries)")
    if kind == "bm25" and impact:
        raise data.DataError(f"{index} is a BM25 index of the documents' text: encoded queries (--queries) search the "
                             "impact index of the encoded documents")


def check_same_model(index: Path, queries: Path) -> None:
    """Refuse queries encoded by another model than the index's documents: their scores would mean nothing.
    Compared by the sha256 of the model's files that both record (a hub id, by name); outputs that record
    none (made by an earlier version, or by hand) are not checked."""
    theirs, ours = data.recorded(index, "model_files"), data.recorded(queries, "model_files")
    if theirs is not None and ours is not None and theirs != ours:
        raise data.DataError(f"{queries}: queries encoded by model {data.recorded(queries, 'model')!r}, but {index} "
                             f"holds documents encoded by {data.recorded(index, 'model')!r}, whose files differ: encode "
                             f"both with one model")


def _search_collection(index: Path, topics: dict, run: Path, *, impact: bool, k: int, threads: int,
                       remove_query: bool, tag: str, k1: float, b: float) -> float:
    """Anserini's SearchCollection writes the run (`lucene.search_collection`); its seconds. The topics
    go to the system's temporary folder, whose path (unlike the run's, maybe) holds no whitespace."""
    with scratch_folder(run) as work, tempfile.TemporaryDirectory(prefix="topics-") as topics_folder:
        topics_file, anserini_run = Path(topics_folder) / "topics.tsv", Path(work) / "anserini.trec"
        started = time.perf_counter()
        if impact:
            lucene.write_impact_topics(topics, topics_file)
        else:
            lucene.write_text_topics(topics, topics_file)
        lucene.search_collection(index, topics_file, anserini_run, impact=impact, k=k, threads=threads,
                                 remove_query=remove_query, tag=tag, k1=k1, b=b)
        with atomic_path(run) as staging:
            reorder_ties(anserini_run, staging)
        return time.perf_counter() - started


def _sample_latencies(index: Path, queries: list, *, impact: bool, k: int, k1: float, b: float, count: int) -> list[float]:
    """Single-thread seconds of each of the first `count` queries that can match (a vector with a
    positive weight, a text)."""
    if impact:
        sample = [vector for vector in queries if any(weight > 0 for weight in vector.values())][:count]
        return lucene.impact_latencies(index, sample, k=k) if sample else []
    sample = [text for text in queries if text.strip()][:count]
    return lucene.bm25_latencies(index, sample, k=k, k1=k1, b=b) if sample else []

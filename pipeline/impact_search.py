"""Impact search run by Lucene's own top-k collector, a query per Python thread, on an index the impact
index stage wrote: one segment sorted by id, with its docid table beside (`DOCIDS`).

Anserini's SearchCollection sorts hits by score then id, a sort that turns off Lucene's block-max
pruning, and reads each hit's id from its stored fields (a compressed block per hit); on an index
sorted by id, Lucene's own order (score, then docid) is that order, and the docid table gives the ids.
What is written is what SearchCollection writes, as `search` leaves it: Anserini's tie adjustment
of the scores (`anserini_scores`), the query's own id dropped where asked, each block of equal scores
in trec_eval's order. Any other index is searched by SearchCollection itself.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import numpy

from pipeline import lucene
from pipeline.impact_index import DOCIDS


class Docids:
    """The ids of an index by Lucene docid, from its table: one bytes object and the lines' bounds."""

    def __init__(self, path: Path):
        self.table = path.read_bytes()
        self.ends = numpy.flatnonzero(numpy.frombuffer(self.table, dtype=numpy.uint8) == ord("\n"))
        self.starts = numpy.concatenate([[0], self.ends[:-1] + 1])

    def __len__(self) -> int:
        return len(self.ends)

    def of(self, docids: numpy.ndarray) -> list[bytes]:
        """The ids (UTF-8) of Lucene's `docids`."""
        return list(map(self.table.__getitem__, map(slice, self.starts[docids].tolist(), self.ends[docids].tolist())))


def anserini_scores(scores: numpy.ndarray) -> numpy.ndarray:
    """Anserini's ScoreTiesAdjusterReranker on a ranking's float32 `scores`, in its float32 arithmetic:
    each score rounded to 1e-4 (half up), then one that is not more than 1e-4 below the (lowered)
    score ranked above it lowered by 1e-6 per tie in a row, so that the scores alone give the ranking."""
    scaled = scores.astype(numpy.float64) * 1e4
    whole = numpy.floor(scaled)  # Java's Math.round: floor(x + 1/2), computed exactly
    rounded = ((whole + (scaled - whole >= 0.5)) / 1e4).astype(numpy.float32)
    step, margin = numpy.float32(1e-6), numpy.float32(1e-4)
    # Guess each tie from the rounded scores alone, then check the guess against Anserini's rule, which
    # compares with the lowered score above: where every check holds, the guess is Anserini's result.
    rank = numpy.arange(len(rounded))
    starts = numpy.concatenate([[True], rounded[:-1] - rounded[1:] > margin])
    ties = rank - numpy.maximum.accumulate(numpy.where(starts, rank, 0))
    adjusted = numpy.where(ties > 0, rounded - step * ties.astype(numpy.float32), rounded)
    if numpy.array_equal(starts[1:], adjusted[:-1] - rounded[1:] > margin):
        return adjusted
    adjusted, ties = rounded.copy(), 0
    for at in range(1, len(adjusted)):
        if adjusted[at - 1] - rounded[at] > margin:
            ties = 0
        else:
            ties += 1
            adjusted[at] = rounded[at] - step * numpy.float32(ties)
    return adjusted


def java_f(scores: numpy.ndarray) -> list[bytes]:
    """Java's `%f` of each float32: Python's `%f`, but for exact ties at the 7th decimal (odd multiples
    of 1/128, the only floats that have them), which Java rounds half up and Python half to even."""
    printed = (b"%f " * len(scores) % tuple(scores.tolist())).split()
    scaled = scores.astype(numpy.float64) * 128
    for at in numpy.flatnonzero((scaled == numpy.floor(scaled)) & (numpy.floor(scaled) % 2 == 1)).tolist():
        printed[at] = str(Decimal(float(scores[at])).quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)).encode()
    return printed


def run_lines(qid: str, docids: list[bytes], scores: numpy.ndarray, *, remove_query: bool, tag: str) -> bytes:
    """SearchCollection's TREC lines (UTF-8) for one query's hits (best first, scores adjusted), with
    each block of equal printed scores in trec_eval's order (descending docid, as `search.reorder_ties`
    puts them). Formatted in bulk, not hit by hit."""
    printed = java_f(scores)
    if remove_query and (own := qid.encode()) in docids:
        at = docids.index(own)
        docids, printed = docids[:at] + docids[at + 1:], printed[:at] + printed[at + 1:]
    count = len(docids)
    starts = numpy.fromiter(map(bytes.__ne__, printed[1:], printed[:-1]), dtype=bool, count=max(count - 1, 0))
    if not starts.all():
        first = numpy.flatnonzero(numpy.concatenate([[True], starts]))
        last = numpy.append(first[1:], count) - 1
        block = numpy.repeat(numpy.arange(len(first)), last - first + 1)
        order = first[block] + last[block] - numpy.arange(count)  # each block read backwards
        docids = list(map(docids.__getitem__, order.tolist()))
    escaped = [field.encode().replace(b"%", b"%%") for field in (qid, tag)]
    fields: list = [None] * (3 * count)
    fields[0::3], fields[1::3], fields[2::3] = docids, range(1, count + 1), printed
    return (b"%s Q0 %%s %%d %%s %s\n" % tuple(escaped)) * count % tuple(fields)


def searchable(index: Path) -> bool:
    """Whether the impact index stage wrote `index` with its docid table (not an index of Anserini's,
    nor one of an earlier version of this stage)."""
    return (index / DOCIDS).is_file()


def search_impact(index: Path, topics: Mapping[str, Mapping[str, int]], run: Path, *, k: int, threads: int,
                  remove_query: bool, tag: str, latency_queries: int) -> tuple[float, list[float]]:
    """Write the TREC `run` of the query vectors `topics` on `index` (`searchable`), searched on
    `threads` threads; return its seconds, and those of each of the first `latency_queries` queries
    searched again alone on one thread."""
    started = time.perf_counter()
    docids = Docids(index / DOCIDS)
    # In SearchCollection's order: Java's String order, by UTF-16 code units.
    queries = {lucene.topic_id(qid): weights for qid in sorted(topics, key=lambda qid: qid.encode("utf-16-be"))
               if (weights := lucene.positive_weights(qid, topics[qid]))}
    searcher = lucene.ImpactSearcher(index)
    from jnius import JavaException  # importing jnius starts a JVM: after lucene's start

    try:
        if not searcher.sorted_by_id() or searcher.reader.maxDoc() != len(docids):
            raise lucene.SearchError(f"{index}: not one segment sorted by id with {DOCIDS} beside it "
                                     f"({len(docids)} ids for {searcher.reader.maxDoc()} documents): index it again")

        def hits(qid: str) -> tuple[numpy.ndarray, numpy.ndarray]:
            try:
                return searcher.top_hits(queries[qid], k)
            except JavaException as err:
                raise lucene.SearchError(f"{index}: query {qid} failed: {err}") from err

        with open(run, "wb") as out:
            for qid, (docs, scores) in zip(queries, _pool(threads).map(hits, queries)):
                out.write(run_lines(qid, docids.of(docs), anserini_scores(scores), remove_query=remove_query, tag=tag))
        seconds = time.perf_counter() - started
        latencies = []
        for qid in list(queries)[:latency_queries]:
            started = time.perf_counter()
            hits(qid)
            latencies.append(time.perf_counter() - started)
        return seconds, latencies
    finally:
        searcher.close()


@functools.cache
def _pool(threads: int) -> ThreadPoolExecutor:
    """Threads kept for the process: each attaches to the JVM on its first call, and a thread that
    ended attached would leave a Java thread behind."""
    return ThreadPoolExecutor(threads, thread_name_prefix="impact-search")

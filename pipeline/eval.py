"""Stage `eval`: score TREC runs against a dataset's qrels with ranx, compare them with a paired
significance test, and put the published leaderboard rows for that dataset beside them.

Queries are those of the qrels, as `trec_eval -c`: a judged query missing from a run scores 0 and a
run's unjudged queries are ignored; both differences are reported. On TREC DL (graded 0-3) recall
and MAP count grade >= 2 as relevant (`trec_eval -l 2`); nDCG always uses the grades.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline import data, leaderboards
from pipeline.files import write_json
from pipeline.search import trec_order

log = logging.getLogger(__name__)

METRICS = ("ndcg@10", "recall@100", "recall@1000", "mrr@10")
Hits = dict[str, list[tuple[str, float]]]


def ranx_metrics(relevance_level: int) -> dict[str, str]:
    """Our metric names -> ranx's. Graded judgments (TREC DL) add MAP, and every metric but nDCG (which reads the
    grades) binarizes them at the relevance level, as `trec_eval -l 2` and the published DL figures do."""
    if relevance_level == 1:
        return {metric: metric for metric in METRICS}
    level = f"-l{relevance_level}"
    return {"ndcg@10": "ndcg@10", "recall@100": f"recall@100{level}", "recall@1000": f"recall@1000{level}",
            "mrr@10": f"mrr@10{level}", "map": f"map{level}"}


def read_run(path: Path) -> Hits:
    """A TREC run's hits, {qid: [(docid, score)]} in file order. A document listed twice for a query, a
    score that is not a finite number or an empty run is refused."""
    hits: Hits = {}
    listed: dict[str, set[str]] = {}
    columns = {"qid": str, "q0": str, "docid": str, "rank": str, "score": float, "tag": str}
    for where, qid, _, docid, _, score, _ in data.read_columns(path, columns):
        if not math.isfinite(score):
            raise data.DataError(f"{where}: score {score} is not a finite number")
        docs = listed.setdefault(qid, set())
        if docid in docs:
            first = next(place for place, q, _, d, *_ in data.read_columns(path, columns) if (q, d) == (qid, docid))
            raise data.DataError(f"{where}: document {docid!r} listed twice for query {qid!r} (first at {first})")
        docs.add(docid)
        hits.setdefault(qid, []).append((docid, score))
    if not hits:
        raise data.DataError(f"{path}: empty run")
    return hits


def ranked_run(hits: Hits, name: str, judged: Iterable[str] | None = None):
    """A ranx Run of `hits` whose scores are the rank order under trec_eval's tie-breaking, so that tied
    scores rank as trec_eval ranks them, not in an arbitrary order. With `judged`, it holds exactly those
    queries, one without hits ranking nothing (ranx's `make_comparable`, done here: ranx's numba
    dictionaries compile their methods anew in every process, seconds per run)."""
    from ranx import Run  # 1.6 s to import: not for the stages that only read METRICS

    rankings = hits if judged is None else {qid: hits.get(qid, []) for qid in judged}
    run = Run({qid: {docid: float(len(ranking) - position) for position, (docid, _) in enumerate(trec_order(ranking))}
               for qid, ranking in rankings.items()})
    run.name = name
    return run


def query_differences(judged: Iterable[str], hits: Hits, name: str) -> list[str]:
    judged, ranked = set(judged), set(hits)
    notes = []
    if missing := judged - ranked:
        notes.append(f"{name}: {len(missing)} judged queries have no results and score 0 (e.g. {sorted(missing)[:3]})")
    if extra := ranked - judged:
        notes.append(f"{name}: {len(extra)} queries have no judgments and are ignored (e.g. {sorted(extra)[:3]})")
    return notes


@contextmanager
def quiet_ranx() -> Iterator[None]:
    """ranx's metrics run numba `prange` loops, whose counter numba types uint64, and numba says so when it compiles
    them (once per machine, then cached): a note on ranx's code, not on the runs, and harmless there."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="unsafe cast from uint64 to int64")
        yield


def evaluate(
    dataset: str, runs: dict[str, Path], out: Path | None = None, *, qrels_file: Path | None = None, max_p: float = 0.05
) -> dict:
    """Metrics of each named run on `dataset`, their comparison, and the leaderboard rows; JSON to `out`.

    `qrels_file` (TREC format) replaces the dataset's own qrels, e.g. official files kept offline.
    """
    from ranx import Qrels, compare
    from ranx import evaluate as ranx_evaluate

    corpus = data.load(dataset)
    judgments = data.read_trec_qrels(qrels_file) if qrels_file else corpus.qrels()
    judged = {qid: docs for qid, docs in judgments.items() if docs}
    qrels = Qrels(judged)
    names = ranx_metrics(corpus.relevance_level)
    loaded, notes = {}, []
    for name, path in runs.items():
        hits = read_run(path)
        if not hits.keys() & judged.keys():
            raise data.DataError(f"{path}: none of its {len(hits)} queries is judged in {corpus.name} "
                                 f"(e.g. {sorted(hits)[:3]}): a run of another dataset?")
        notes += query_differences(judged, hits, name)
        loaded[name] = ranked_run(hits, name, judged)
    for note in notes:
        log.warning(note)
    with quiet_ranx():
        if len(loaded) > 1:  # compare evaluates each run
            report = compare(qrels, list(loaded.values()), list(names.values()), stat_test="student", max_p=max_p)
            means = report.results
        else:
            means = {name: ranx_evaluate(qrels, run, list(names.values())) for name, run in loaded.items()}
    scores = {name: {ours: float(means[name][theirs]) for ours, theirs in names.items()} for name in loaded}
    result = {
        "dataset": corpus.name,
        "queries": len(judged),
        "relevance_level": corpus.relevance_level,
        "metrics": scores,
        "leaderboard": leaderboards.rows(corpus.name),
        "notes": notes,
    }
    if len(loaded) > 1:
        result["comparison"] = {"test": "paired t-test", "max_p": max_p, "report": str(report)}
    if out is not None:
        write_json(out, result)
    return result

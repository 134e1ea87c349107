"""Search written by Anserini in Java, and indexes that do not depend on the number of threads: real
JVM and Lucene, on hand-made impact vectors (with ties and a query that is also a document) and on
the tiny BEIR folder."""

import ast
import json
import shutil
import subprocess
import sys

import numpy
import pytest

from pipeline import data, lucene
from pipeline.impact_index import DOCIDS, write_impact_index
from pipeline.impact_search import anserini_scores, java_f, run_lines, search_impact
from pipeline.index import index, split_for_threads
from pipeline.search import reorder_ties, search, trec_order

from conftest import DOCS, QUERIES, ROOT, write_beir_folder

# Scores are integer dot products: "q1" (a document too) scores 9000 for query q1, d7 8000, d1-d6 and
# d10 tie at 5000; for q2, d7 and q1 tie at 9000, d1-d6 and d10 at 5000, d8 at 3000. Query q3 has no
# positive weight. Scores this large show no trace of Anserini's 1e-6 nudge between tied ranks in a
# float. Ties are cut by id (d1, d10, d2, ...), not by the order of the file.
VECTORS = {
    **{f"d{i}": {"alpha": 50} for i in range(1, 7)},
    "d7": {"alpha": 80, "beta": 10},
    "d8": {"beta": 30},
    "d9": {"[EMPTY-VECTOR]": 1},  # as encode writes a document without terms
    "q1": {"alpha": 90},
    "d10": {"alpha": 50},
}
QUERY_VECTORS = {"q1": {"alpha": 100}, "q2": {"alpha": 100, "beta": 100}, "q3": {"alpha": 0}}


def read_trec(path):
    run = {}
    for line in path.read_text().splitlines():
        qid, q0, docid, rank, score, tag = line.split()
        run.setdefault(qid, []).append((docid, score, int(rank)))
    return run


def expected_ranking(query, k, remove_query):
    """Anserini's top k (score descending, ties by ascending docid), the query's own id dropped from
    those k (Pyserini 2CR), in trec_eval's order (ties by descending docid), ranked from 1."""
    scores = {docid: sum(weight * vector.get(term, 0) for term, weight in QUERY_VECTORS[query].items())
              for docid, vector in VECTORS.items()}
    top = sorted(((docid, score) for docid, score in scores.items() if score > 0), key=lambda hit: (-hit[1], hit[0]))[:k]
    kept = [(docid, float(score)) for docid, score in top if not (remove_query and docid == query)]
    return [(docid, f"{score:.6f}", rank) for rank, (docid, score) in enumerate(trec_order(kept), start=1)]


@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    """One part file, as a small encode writes it, and the queries."""
    folder = tmp_path_factory.mktemp("vectors")
    (folder / "docs").mkdir()
    lines = [json.dumps({"id": docid, "contents": "", "vector": vector}) for docid, vector in VECTORS.items()]
    (folder / "docs" / "part-00000.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "queries.jsonl").write_text("".join(json.dumps({"id": q, "vector": v}) + "\n" for q, v in QUERY_VECTORS.items()))
    return folder


@pytest.fixture(scope="module")
def impact_index(vectors, tmp_path_factory):
    out = tmp_path_factory.mktemp("impact") / "index"
    return out, index(out, vectors=vectors / "docs", threads=1)


@pytest.mark.parametrize("remove_query", [True, False])
def test_java_run_is_the_exact_ranking_in_trec_eval_order(impact_index, vectors, beir_folder, tmp_path, remove_query):
    out, _ = impact_index
    run_path = tmp_path / "run.trec"
    result = search(out, run_path, str(beir_folder), queries=vectors / "queries.jsonl", k=5, remove_query=remove_query)
    run = read_trec(run_path)
    assert set(run) == {"q1", "q2"}  # q3 matches nothing
    for qid in run:
        assert run[qid] == expected_ranking(qid, 5, remove_query)
    # q1's own document is its best hit: removed from the 5 fetched, it leaves 4 (as Pyserini's 2CR runs).
    assert [docid for docid, *_ in run["q1"]] == (["d7", "d2", "d10", "d1"] if remove_query else ["q1", "d7", "d2", "d10", "d1"])
    assert result["remove_query"] is remove_query and result["queries"] == 3


def test_query_removal_defaults_to_the_dataset(impact_index, vectors, beir_folder, tmp_path):
    """In a local folder query and document ids coincide by numbering alone: no removal unless asked."""
    out, _ = impact_index
    result = search(out, tmp_path / "run.trec", str(beir_folder), queries=vectors / "queries.jsonl", k=5)
    assert result["remove_query"] is False
    assert read_trec(tmp_path / "run.trec")["q1"] == expected_ranking("q1", 5, remove_query=False)


def test_search_reports_throughput_and_single_thread_latency(impact_index, vectors, beir_folder, tmp_path):
    out, _ = impact_index
    result = search(out, tmp_path / "run.trec", str(beir_folder), queries=vectors / "queries.jsonl", k=5, threads=2)
    assert result["threads"] == 2 and result["queries_per_second"] > 0
    assert result["latency_queries"] == 2  # q3 has no positive weight: nothing to search
    assert 0 < result["latency_p50_ms"] <= result["latency_p99_ms"]


JVM_ARGUMENTS = ("from pipeline import lucene; print(list(lucene.start_jvm()('java.lang.management.ManagementFactory')"
                 ".getRuntimeMXBean().getInputArguments().toArray()))")


@pytest.mark.parametrize("stage", ["search", "index"])
def test_a_search_starts_its_jvm_with_the_search_options_and_the_index_stage_without(impact_index, vectors,
                                                                                        beir_folder, tmp_path, stage):
    out, _ = impact_index
    call = (f"search.search(Path({str(out)!r}), Path({str(tmp_path / 'run.trec')!r}), {str(beir_folder)!r}, "
            f"queries=Path({str(vectors / 'queries.jsonl')!r}), k=5)" if stage == "search" else
            f"index.index(Path({str(tmp_path / 'index')!r}), vectors=Path({str(vectors / 'docs')!r}), threads=1)")
    script = f"from pathlib import Path\nfrom pipeline import index, search\n{call}\n{JVM_ARGUMENTS}"
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    # HotSpot prints a CompileCommand it cannot parse and goes on without it; Lucene's INFO lines are off
    *printed, arguments = result.stdout.strip().splitlines()
    assert not any("CompileCommand" in line for line in printed + result.stderr.splitlines())
    assert "INFO" not in result.stderr
    arguments = ast.literal_eval(arguments)
    assert set(lucene.JVM_OPTIONS) <= set(arguments)
    assert (set(lucene.SEARCH_JVM_OPTIONS) <= set(arguments)) is (stage == "search")


def test_bm25_java_run_equals_hits_read_back_one_by_one(tmp_path):
    """The Java-written BM25 run holds the very hits, scores and trec_eval order of Anserini's searcher
    read hit by hit; a query that is also a document loses it from its ranking. Paths may hold spaces
    (Anserini splits its topics option at them)."""
    queries = {**QUERIES, "d05": "penguins are flightless birds"}
    beir = write_beir_folder(tmp_path / "beir", queries=queries)
    folder = tmp_path / "my runs"
    index(folder / "bm25", corpus=str(beir), threads=1)
    k = len(DOCS)
    search(folder / "bm25", folder / "kept.trec", str(beir), k=k, remove_query=False)
    search(folder / "bm25", folder / "removed.trec", str(beir), k=k, remove_query=True)
    hits = lucene.bm25_search(folder / "bm25", queries, k=k, threads=1, k1=0.9, b=0.4)
    expected = {qid: [(docid, f"{score:.6f}", rank) for rank, (docid, score) in enumerate(trec_order(ranking), start=1)]
                for qid, ranking in hits.items() if ranking}
    assert read_trec(folder / "kept.trec") == expected
    removed = read_trec(folder / "removed.trec")
    assert expected["d05"][0][0] == "d05" and "d05" not in [docid for docid, *_ in removed["d05"]]
    assert [docid for docid, *_ in removed["d05"]] == [docid for docid, *_ in expected["d05"] if docid != "d05"]
    assert {qid: ranking for qid, ranking in removed.items() if qid != "d05"} == \
        {qid: ranking for qid, ranking in expected.items() if qid != "d05"}


def test_split_for_threads_keeps_every_line_once_in_order(vectors, tmp_path):
    source = vectors / "docs" / "part-00000.jsonl"
    folder = split_for_threads(vectors / "docs", 4, tmp_path / "parts")
    pieces = sorted(folder.glob("*.jsonl"))
    assert len(pieces) == 4
    assert b"".join(piece.read_bytes() for piece in pieces) == source.read_bytes()
    assert all(piece.read_bytes().endswith(b"\n") for piece in pieces)
    assert split_for_threads(vectors / "docs", 1, tmp_path / "unused") == vectors / "docs"


def test_impact_index_is_the_same_whatever_the_processes(impact_index, vectors, beir_folder, tmp_path):
    one_process, one_stats = impact_index
    assert one_stats["processes"] == 1 and one_stats["documents"] == len(VECTORS)
    assert write_impact_index(vectors / "docs", tmp_path / "three", threads=3, docs_per_process=1) == (len(VECTORS), 3)
    for name, out in (("one", one_process), ("three", tmp_path / "three")):
        search(out, tmp_path / f"{name}.trec", str(beir_folder), queries=vectors / "queries.jsonl", k=10, tag="impact")
    assert (tmp_path / "one.trec").read_text() == (tmp_path / "three.trec").read_text()


def test_impact_index_ranges_cover_every_record_once(tmp_path):
    """Processes share records out by line breaks: blank lines and a last line without a break move the
    ranges, never a record out of them or into two."""
    lines = [json.dumps({"id": docid, "contents": "", "vector": vector}) for docid, vector in VECTORS.items()]
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.jsonl").write_text("\n\n" + "\n\n".join(lines[:4]) + "\n")
    (tmp_path / "docs" / "b.jsonl").write_text("\n".join(lines[4:]))  # no break after the last record
    assert write_impact_index(tmp_path / "docs", tmp_path / "index", threads=4, docs_per_process=1) == (len(VECTORS), 4)
    assert lucene.count_documents(tmp_path / "index") == len(VECTORS)


def test_impact_index_searches_as_anserinis_own(impact_index, vectors, beir_folder, tmp_path):
    """Impacts as term frequencies give the runs of Anserini's IndexCollection, which repeats each term
    as often as its impact (as Pyserini builds SPLADE indexes)."""
    ours, _ = impact_index
    lucene.build_index(vectors / "docs", tmp_path / "anserini", "JsonVectorCollection", impact=True, threads=1)
    for name, out in (("ours", ours), ("anserini", tmp_path / "anserini")):
        search(out, tmp_path / f"{name}.trec", str(beir_folder), queries=vectors / "queries.jsonl", k=10, tag="impact")
    assert (tmp_path / "ours.trec").read_text() == (tmp_path / "anserini.trec").read_text()


def test_impact_index_is_one_segment_in_id_order_with_its_docid_table_and_no_norms(impact_index):
    out, _ = impact_index
    searcher = lucene.ImpactSearcher(out)
    try:
        assert searcher.sorted_by_id() and searcher.reader.leaves().size() == 1
        assert not searcher.reader.leaves().get(0).reader().getFieldInfos().fieldInfo("contents").hasNorms()
    finally:
        searcher.close()
    assert (out / DOCIDS).read_text().splitlines() == sorted(VECTORS)


def test_a_docid_table_beside_an_index_not_in_id_order_is_refused(vectors, beir_folder, tmp_path):
    lucene.build_index(vectors / "docs", tmp_path / "anserini", "JsonVectorCollection", impact=True, threads=1)
    (tmp_path / "anserini" / DOCIDS).write_text("".join(f"{docid}\n" for docid in VECTORS))
    with pytest.raises(lucene.SearchError, match="not one segment sorted by id"):
        search(tmp_path / "anserini", tmp_path / "run.trec", str(beir_folder), queries=vectors / "queries.jsonl")
    assert not (tmp_path / "run.trec").exists()


def anserini_tie_adjuster(scores):
    """ScoreTiesAdjusterReranker.rerank, statement by statement, in float32."""
    scores = [numpy.float32(numpy.float64(numpy.floor(numpy.float64(score) * 1e4 + 0.5)) / 1e4) for score in scores]
    rounded, dup = list(scores), 0
    for i in range(len(scores)):
        if i == 0 or scores[i - 1] - rounded[i] > numpy.float32(1e-4):
            dup = 0
        else:
            dup += 1
            scores[i] = numpy.float32(rounded[i] - numpy.float32(1e-6) * numpy.float32(dup))
    return scores


def test_scores_are_those_of_anserinis_tie_adjuster():
    """Ties, near ties 1e-4 apart (where the lowered score above decides) and scores of every size."""
    rng = numpy.random.default_rng(0)
    rankings = [[5.0, 5.0, 5.0, 4.0], [1.0002, 1.0001, 1.0001, 1.0, 0.9999, 0.9999], [737235.0] * 20 + [1.5] * 3]
    for _ in range(200):
        steps = rng.choice([0.0, 1e-4, 1.0001e-4, 3e-4, 0.5], size=int(rng.integers(1, 60)))
        rankings.append(list(rng.uniform(0, 50) - numpy.cumsum(steps)))
    for scores in rankings:
        scores = numpy.array(scores, dtype=numpy.float32)
        assert anserini_scores(scores).tolist() == [float(score) for score in anserini_tie_adjuster(scores)]


def test_run_lines_are_anserinis_in_trec_eval_order(tmp_path):
    """SearchCollection's lines (`%s Q0 %s %d %f %s`, Java's %f of a float), then `reorder_ties`."""
    docids = ["a", "b", "q", "c", "d", "e", "f"]
    scores = anserini_scores(numpy.array([9.0, 7.0, 7.0, 7.0, 2.5, 2.5, 0.125], dtype=numpy.float32))
    for remove_query in (False, True):
        kept = [(docid, score) for docid, score in zip(docids, scores) if not (remove_query and docid == "q")]
        anserini = tmp_path / "anserini.trec"
        anserini.write_text("".join(f"q Q0 {docid} {rank} {score:f} my%tag\n"
                                    for rank, (docid, score) in enumerate(kept, start=1)))
        reorder_ties(anserini, tmp_path / "expected.trec")
        lines = run_lines("q", [docid.encode() for docid in docids], scores, remove_query=remove_query, tag="my%tag")
        assert lines == (tmp_path / "expected.trec").read_bytes()


def test_scores_print_as_javas_percent_f():
    """Java rounds the exact ties at the 7th decimal (odd multiples of 1/128) half up, Python half to even."""
    autoclass = lucene.start_jvm()
    java_float, us, formatter = autoclass("java.lang.Float"), autoclass("java.util.Locale").US, autoclass("java.util.Formatter")
    rng = numpy.random.default_rng(1)
    scores = numpy.concatenate([numpy.array([1, 3, 641, -1, 8388609], dtype=numpy.float32) / 128,
                                rng.uniform(-1, 1, 50).astype(numpy.float32) * 10.0 ** rng.integers(-6, 7, 50)])
    java = [formatter(us).format("%f", java_float(float(score))).toString().encode() for score in scores]
    assert java_f(scores.astype(numpy.float32)) == java


def test_duplicate_document_ids_are_refused(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "part.jsonl").write_text("".join(json.dumps({"id": docid, "contents": "", "vector": {"a": 1}}) + "\n"
                                                          for docid in ("d1", "d2", "d1")))
    with pytest.raises(data.DataError, match="3 documents but 2 distinct ids"):
        write_impact_index(tmp_path / "docs", tmp_path / "index", threads=1)


def test_an_index_of_no_document_gives_an_empty_run_and_query_ids_are_checked(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "part.jsonl").write_text("")
    assert write_impact_index(tmp_path / "docs", tmp_path / "index", threads=1) == (0, 1)
    seconds, _ = search_impact(tmp_path / "index", {"q1": {"a": 1}, "q2": {"a": 0.5}}, tmp_path / "run.trec", k=10,
                               threads=2, remove_query=False, tag="t", latency_queries=1)
    assert seconds > 0 and (tmp_path / "run.trec").read_bytes() == b""
    with pytest.raises(lucene.SearchError, match="whitespace"):
        search_impact(tmp_path / "index", {"q 1": {"a": 1}}, tmp_path / "run.trec", k=10, threads=1,
                      remove_query=False, tag="t", latency_queries=0)


def test_documents_of_control_characters_alone_are_left_out_of_the_bm25_index_as_blank(tmp_path):
    """Anserini skips a text that Java's trim() empties: left in, it made the index one document short, and refused."""
    docs = {**{doc_id: DOCS[doc_id] for doc_id in ("d01", "d02")}, "c1": ("", "\x07"), "c2": ("\x00", "\x01 \x02")}
    folder = write_beir_folder(tmp_path / "beir", docs=docs)
    stats = index(tmp_path / "bm25", corpus=str(folder), threads=1)
    assert stats["documents"] == 2 and stats["blank_documents_left_out"] == 2


def test_bm25_index_is_the_same_whatever_the_threads(beir_folder, tmp_path):
    for threads in (1, 3):
        stats = index(tmp_path / f"bm25-{threads}", corpus=str(beir_folder), threads=threads)
        assert stats["parts"] == threads and stats["documents"] == len(DOCS) - 1
        search(tmp_path / f"bm25-{threads}", tmp_path / f"{threads}.trec", str(beir_folder), k=len(DOCS), tag="bm25")
    assert (tmp_path / "1.trec").read_text() == (tmp_path / "3.trec").read_text()


def test_an_index_is_searched_as_its_kind(impact_index, vectors, beir_folder, tmp_path):
    """BM25 on an impact index, or encoded queries on a BM25 index, would score and mean nothing."""
    with pytest.raises(data.DataError, match=r"is an impact index of encoded documents: search it with encoded queries"):
        search(impact_index[0], tmp_path / "bm25.trec", str(beir_folder))
    index(tmp_path / "bm25", corpus=str(beir_folder), threads=1)
    with pytest.raises(data.DataError, match=r"is a BM25 index of the documents' text"):
        search(tmp_path / "bm25", tmp_path / "impact.trec", str(beir_folder), queries=vectors / "queries.jsonl")
    assert not (tmp_path / "bm25.trec").exists() and not (tmp_path / "impact.trec").exists()


def test_a_query_of_thousands_of_terms_is_searched_whole_on_either_path(beir_folder, tmp_path):
    """A clause per term: over Lucene's default 1,024 clauses, our search failed and Anserini's dropped the query."""
    (tmp_path / "docs").mkdir()
    documents = {f"d{i}": {f"t{term}": 1 + (term + i) % 7 for term in range(i, 3000, 1 + i)} for i in range(1, 6)}
    (tmp_path / "docs" / "part-00000.jsonl").write_text(
        "".join(json.dumps({"id": doc_id, "contents": "", "vector": vector}) + "\n" for doc_id, vector in documents.items()))
    query = {f"t{term}": 1 + term % 3 for term in range(3000)}
    (tmp_path / "queries.jsonl").write_text(json.dumps({"id": "q1", "vector": query}) + "\n")
    expected = sorted((-sum(weight * query[term] for term, weight in vector.items()), doc_id) for doc_id, vector in documents.items())
    index(tmp_path / "ours", vectors=tmp_path / "docs", threads=1)
    lucene.build_index(tmp_path / "docs", tmp_path / "anserini", "JsonVectorCollection", impact=True, threads=1)
    for name in ("ours", "anserini"):
        search(tmp_path / name, tmp_path / f"{name}.trec", str(beir_folder), queries=tmp_path / "queries.jsonl", k=10)
        hits = read_trec(tmp_path / f"{name}.trec")["q1"]
        assert sorted((-float(score), docid) for docid, score, _ in hits) == [(float(score), doc_id) for score, doc_id in expected]

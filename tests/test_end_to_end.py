"""The whole spine on real data with the real JVM, Lucene, ranx and the default model."""

import json

import pytest

from pipeline import data, lucene
from pipeline.beir_eval import beir_eval
from pipeline.encode import encode
from pipeline.eval import evaluate
from pipeline.files import read_jsonl
from pipeline.index import index
from pipeline.search import search

from conftest import DOCS, QUERIES, write_beir_folder


@pytest.fixture(scope="module")
def tiny_run(model_path, beir_folder, tmp_path_factory):
    work = tmp_path_factory.mktemp("spine")
    dataset = str(beir_folder)
    encode(model_path, work / "encoded", dataset=dataset, batch_size=4)
    stats = index(work / "impact", vectors=work / "encoded" / "docs", threads=2)
    search(work / "impact", work / "splade.trec", dataset, queries=work / "encoded" / "queries.jsonl", k=len(DOCS))
    bm25_stats = index(work / "bm25", corpus=dataset, threads=2)
    search(work / "bm25", work / "bm25.trec", dataset, k=len(DOCS))
    return work, stats, bm25_stats


def read_trec(path):
    run = {}
    for line in path.read_text().splitlines():
        qid, _, docid, rank, score, _ = line.split()
        run.setdefault(qid, []).append((docid, float(score), int(rank)))
    return run


def test_every_document_is_indexed(tiny_run):
    work, stats, bm25_stats = tiny_run
    assert stats["documents"] == len(DOCS) == lucene.count_documents(work / "impact")
    # The one blank document cannot be indexed for BM25 (nor ever retrieved): it is counted instead.
    assert bm25_stats["blank_documents_left_out"] == 1
    assert lucene.count_documents(work / "bm25") == len(DOCS) - 1


def test_impact_search_equals_exact_sparse_dot_product(tiny_run):
    work, *_ = tiny_run
    docs = {record["id"]: record["vector"] for record in read_jsonl(work / "encoded" / "docs")}
    queries = {record["id"]: record["vector"] for record in read_jsonl(work / "encoded" / "queries.jsonl")}
    run = read_trec(work / "splade.trec")
    assert set(run) == set(QUERIES)
    for qid, query in queries.items():
        exact = {docid: sum(weight * vector.get(term, 0) for term, weight in query.items()) for docid, vector in docs.items()}
        # trec_eval's order: score descending, ties by docid descending (d13 and its twin d03 tie).
        by_docid = sorted(((docid, score) for docid, score in exact.items() if score > 0), reverse=True)
        expected = sorted(by_docid, key=lambda hit: -hit[1])
        assert [(docid, score) for docid, score, _ in run[qid]] == [(d, float(s)) for d, s in expected]
        assert [rank for *_, rank in run[qid]] == list(range(1, len(expected) + 1))
    ties = [qid for qid, ranking in run.items() if {"d03", "d13"} <= {docid for docid, *_ in ranking}]
    assert ties, "the corpus must give tied scores"


def test_splade_and_bm25_find_the_relevant_documents(tiny_run, beir_folder):
    work, *_ = tiny_run
    result = evaluate(str(beir_folder), {"splade": work / "splade.trec", "bm25": work / "bm25.trec"}, work / "eval.json")
    assert result["queries"] == len(QUERIES) and result["notes"] == []
    assert result["metrics"]["splade"]["recall@100"] == 1.0
    assert result["metrics"]["splade"]["ndcg@10"] > 0.8
    assert result["metrics"]["bm25"]["ndcg@10"] > 0.6
    assert "paired t-test" == result["comparison"]["test"]
    assert (work / "eval.json").is_file()


def test_bm25_reproduces_pyserini_on_scifact(tmp_path):
    """Published BM25 flat (Pyserini 2CR, with --remove-query as on every BEIR set): nDCG@10 0.6789, R@100 0.9253."""
    index(tmp_path / "bm25", corpus="scifact", threads=2)
    search(tmp_path / "bm25", tmp_path / "bm25.trec", "scifact")
    metrics = evaluate("scifact", {"bm25": tmp_path / "bm25.trec"}, tmp_path / "eval.json")["metrics"]["bm25"]
    assert metrics["ndcg@10"] == pytest.approx(0.6789, abs=0.002)
    assert metrics["recall@100"] == pytest.approx(0.9253, abs=0.002)
    assert lucene.count_documents(tmp_path / "bm25") == data.load("scifact").docs_count()
    rows = beir_eval([tmp_path / "eval.json"], tmp_path / "beir-eval.json", tmp_path / "beir-eval.md")
    published = {row["system"]: row for row in rows if row["source"] != "measured"}
    assert published["BM25 flat"]["ndcg@10"] == 0.6789 and "2cr" in published["BM25 flat"]["source"].lower()
    assert json.loads((tmp_path / "beir-eval.json").read_text()) == rows
    assert "| bm25 | " in (tmp_path / "beir-eval.md").read_text()


def test_beir_eval_tables_the_measured_runs(tiny_run, tmp_path):
    work, *_ = tiny_run
    rows = beir_eval([work / "eval.json"], tmp_path / "beir-eval.json", tmp_path / "beir-eval.md")
    scores = json.loads((work / "eval.json").read_text())["metrics"]
    assert {row["system"]: row["ndcg@10"] for row in rows} == {name: s["ndcg@10"] for name, s in scores.items()}
    assert all(row["source"] == "measured" for row in rows)
    markdown = (tmp_path / "beir-eval.md").read_text()
    assert "| splade | " in markdown and "paired t-test" in markdown


def test_remove_query_drops_only_the_query_own_id_and_only_when_asked(tmp_path):
    """A local collection numbers its queries and documents alike (1..N): by default nothing is
    removed; --remove-query drops the query's own id from its ranking, as Pyserini does on BEIR."""
    docs = {"1": ("", "coffee and caffeine"), "2": ("", "volcanoes and lava"), "3": ("", "caffeine in tea")}
    folder = write_beir_folder(tmp_path / "beir", docs=docs, queries={"1": "caffeine", "2": "lava"},
                               qrels={"1": {"1": 1}, "2": {"2": 1}})
    index(tmp_path / "bm25", corpus=str(folder), threads=1)
    search(tmp_path / "bm25", tmp_path / "kept.trec", str(folder))
    search(tmp_path / "bm25", tmp_path / "removed.trec", str(folder), remove_query=True)
    kept, removed = read_trec(tmp_path / "kept.trec"), read_trec(tmp_path / "removed.trec")
    assert [d for d, *_ in kept["1"]] == ["1", "3"] and [d for d, *_ in kept["2"]] == ["2"]
    assert [d for d, *_ in removed["1"]] == ["3"] and "2" not in removed  # its only hit was itself
    assert [rank for *_, rank in removed["1"]] == [1]


def test_search_refuses_an_index_of_another_dataset(tiny_run, tmp_path):
    work, *_ = tiny_run
    other = write_beir_folder(tmp_path / "other", docs={"x1": ("", "caffeine")}, queries={"q1": "caffeine"},
                              qrels={"q1": {"x1": 1}})
    with pytest.raises(data.DataError, match=r"bm25: an index of corpus .*tiny-beir.*/corpus.jsonl', not of .*other/corpus.jsonl"):
        search(work / "bm25", tmp_path / "run.trec", str(other))
    with pytest.raises(data.DataError, match=r"impact: an index of corpus .*tiny-beir"):
        search(work / "impact", tmp_path / "run.trec", str(other), queries=work / "encoded" / "queries.jsonl")
    assert not (tmp_path / "run.trec").exists()


def test_documents_whose_weights_all_round_to_zero_are_still_indexed(model_path, beir_folder, tmp_path):
    stats = encode(model_path, tmp_path / "encoded", dataset=str(beir_folder), scale=1e-4, batch_size=8)
    assert stats["docs"]["empty"] == len(DOCS)
    assert index(tmp_path / "impact", vectors=tmp_path / "encoded" / "docs")["documents"] == len(DOCS)

"""The whole spine on real data with the real JVM, Lucene, ranx and the default model."""

import pytest

from pipeline import data, lucene
from pipeline.encode import encode
from pipeline.eval import evaluate
from pipeline.files import read_jsonl
from pipeline.index import index
from pipeline.search import search

from conftest import DOCS, QUERIES


@pytest.fixture(scope="module")
def tiny_run(model_path, beir_folder, tmp_path_factory):
    work = tmp_path_factory.mktemp("spine")
    dataset = str(beir_folder)
    encode(model_path, dataset, work / "encoded", batch_size=4)
    stats = index(work / "impact", vectors=work / "encoded" / "docs", threads=2)
    search(work / "impact", work / "splade.trec", dataset, queries=work / "encoded" / "queries.jsonl", k=len(DOCS))
    bm25_stats = index(work / "bm25", dataset=dataset, threads=2)
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
        expected = sorted(((docid, score) for docid, score in exact.items() if score > 0), key=lambda hit: (-hit[1], hit[0]))
        assert [(docid, score) for docid, score, _ in run[qid]] == [(d, float(s)) for d, s in expected]
        assert [rank for *_, rank in run[qid]] == list(range(1, len(expected) + 1))


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
    """Published BM25 flat (Pyserini 2CR): nDCG@10 0.6789, R@100 0.9253."""
    index(tmp_path / "bm25", dataset="scifact", threads=2)
    search(tmp_path / "bm25", tmp_path / "bm25.trec", "scifact")
    metrics = evaluate("scifact", {"bm25": tmp_path / "bm25.trec"})["metrics"]["bm25"]
    assert metrics["ndcg@10"] == pytest.approx(0.6789, abs=0.002)
    assert metrics["recall@100"] == pytest.approx(0.9253, abs=0.002)
    assert lucene.count_documents(tmp_path / "bm25") == data.load("scifact").docs_count()


def test_documents_whose_weights_all_round_to_zero_are_still_indexed(model_path, beir_folder, tmp_path):
    stats = encode(model_path, str(beir_folder), tmp_path / "encoded", scale=1e-4, batch_size=8)
    assert stats["docs"]["empty"] == len(DOCS)
    assert index(tmp_path / "impact", vectors=tmp_path / "encoded" / "docs")["documents"] == len(DOCS)

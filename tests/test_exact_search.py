"""The exact sparse dot product that `k-sweep` scores with gives Lucene's impact search run: the same
documents, in the same order, with the same integer scores, and the same query removal."""

import pytest
import torch

from pipeline import data
from pipeline.encode import encode
from pipeline.exact_search import _csr, exact_search, sparse_vectors
from pipeline.index import index
from pipeline.search import search
from pipeline.splade.model import SpladeEncoder

from conftest import QRELS, QUERIES, write_beir_folder

# Query q1 takes the id of a document it retrieves, so that removing a query's own id shows.
OWN_ID = {"q1": "d01"}


def read_trec(path):
    hits = {}
    for line in path.read_text().splitlines():
        qid, _, docid, _, score, _ = line.split()
        hits.setdefault(qid, []).append((docid, float(score)))
    return hits


@pytest.mark.parametrize("remove_query", [False, True])
def test_exact_search_equals_the_lucene_impact_run(model_path, tmp_path, remove_query):
    folder = write_beir_folder(tmp_path / "beir", queries={OWN_ID.get(q, q): text for q, text in QUERIES.items()},
                               qrels={OWN_ID.get(q, q): judged for q, judged in QRELS.items()})
    encode(model_path, tmp_path / "encoded", dataset=str(folder))
    index(tmp_path / "lucene", vectors=tmp_path / "encoded" / "docs")
    search(tmp_path / "lucene", tmp_path / "lucene.trec", str(folder), queries=tmp_path / "encoded" / "queries.jsonl",
           k=5, remove_query=remove_query)
    lucene = read_trec(tmp_path / "lucene.trec")

    corpus = data.load(str(folder))
    documents, queries = list(corpus.docs()), corpus.queries()
    encoder = SpladeEncoder.load(model_path, device="cpu")
    docs = sparse_vectors(encoder, [doc.text for doc in documents], max_length=256)
    query_vectors = sparse_vectors(encoder, list(queries.values()), max_length=64)
    exact = exact_search(list(queries), query_vectors, [doc.id for doc in documents], docs, k=5, remove_query=remove_query)

    assert {qid: ranking for qid, ranking in exact.items() if ranking} == lucene
    assert all(len(ranking) >= 4 for ranking in lucene.values())
    assert ("d01" in [docid for docid, _ in exact["d01"]]) is not remove_query


def test_ties_at_the_kth_place_are_cut_by_id_as_anserini_cuts_them():
    """Anserini's top k takes tied documents by ascending id (tests/test_search.py checks it on Lucene), whatever
    the order of the collection."""
    sparse = lambda rows: _csr(torch.tensor([[row for row in range(len(rows))], [0] * len(rows)]),
                               torch.tensor(rows, dtype=torch.float64), (len(rows), 2))
    hits = exact_search(["q"], sparse([3.0]), ["c", "b", "a"], sparse([1.0, 1.0, 2.0]), k=2)
    assert hits == {"q": [("a", 6.0), ("b", 3.0)]}

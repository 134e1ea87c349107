"""Impact search as an exact sparse dot product in torch, without a Lucene index.

Lucene's impact search scores a document by the sum, over the terms it shares with the query, of the
quantized query weight times the quantized document weight: the dot product of the two integer vectors.
Here those vectors are rows of sparse float64 matrices (integers below 2^53 add exactly), so a stage
that evaluates many models on the same small collection (`k-sweep`) skips indexing each one.
`tests/test_exact_search.py` checks the rankings against the Lucene path.
"""

from __future__ import annotations

import warnings

import torch

from pipeline.encode import quantized_weights
from pipeline.search import trec_order


def sparse_vectors(encoder, texts: list[str], *, max_length: int, scale: float = 100,
                   batch_size: int = 32) -> torch.Tensor:
    """[texts, vocab] sparse CSR float64 matrix of quantized weights, as the encode stage writes them.
    A blank text has an empty row (the encode stage's empty vector, which nothing matches)."""
    rows = []
    # Length-sorted batches waste little on padding; rows go back to the texts' order below.
    order = sorted((i for i, text in enumerate(texts) if text.strip()), key=lambda i: len(texts[i]), reverse=True)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        weights, _ = encoder.encode([texts[i] for i in batch], max_length)
        rows.append((torch.tensor(batch), quantized_weights(weights, scale).to_sparse()))
    vocab = encoder.model.vocab_size
    if not rows:
        return _csr(torch.empty(2, 0, dtype=torch.long), torch.empty(0, dtype=torch.float64), (len(texts), vocab))
    indices = torch.cat([torch.stack([positions[block.indices()[0]], block.indices()[1]]) for positions, block in rows], dim=1)
    values = torch.cat([block.values() for _, block in rows]).double()
    return _csr(indices, values, (len(texts), vocab))


def _csr(indices: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A CSR matrix of COO entries, without torch's notices: the indices come from `to_sparse` (valid, so no
    invariant check), and CSR's "beta" status is torch's to say, not each k-sweep's."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
        coo = torch.sparse_coo_tensor(indices, values, shape, check_invariants=False)
        return coo.coalesce().to_sparse_csr()


def active_terms(vectors: torch.Tensor) -> float:
    """Mean number of non-zero weights per row of a sparse CSR matrix."""
    counts = vectors.crow_indices().diff()
    return counts.double().mean().item() if len(counts) else 0.0


def exact_search(query_ids: list[str], queries: torch.Tensor, doc_ids: list[str], docs: torch.Tensor, *,
                 k: int = 1000, remove_query: bool = False) -> dict[str, list[tuple[str, float]]]:
    """{qid: up to k (docid, score)} in trec_eval's order, only documents sharing a term with the query
    (as Lucene). Ties at the k-th place are cut as Anserini cuts them, by ascending document id (whatever the
    order of `doc_ids`). With `remove_query` a query's own id is dropped from its k hits (Anserini's -removeQuery)."""
    scores = (docs @ queries.to_dense().T).T  # [queries, docs]
    hits = {}
    for qid, row in zip(query_ids, scores):
        matched = row.nonzero(as_tuple=True)[0].tolist()
        kept = sorted(matched, key=lambda i: (-row[i].item(), doc_ids[i]))[:k]
        ranking = trec_order([(doc_ids[i], row[i].item()) for i in kept])
        hits[qid] = [hit for hit in ranking if not (remove_query and hit[0] == qid)]
    return hits

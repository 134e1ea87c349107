"""Stage `encode`: a dataset's corpus and queries -> SPLADE impact vectors in Anserini's formats.

Output folder:
  docs/part-NNNNN.jsonl   JsonVectorCollection: {"id", "contents", "vector": {term: int}}
  queries.jsonl           the same record per query (its text in "contents")
  stats.json              counts, truncations, empty vectors, timing (written last)

Weights are quantized as int(round(w * scale)) here, because Anserini truncates them to integers.
A blank (empty or whitespace-only) text gets an empty vector. Anserini silently drops a document whose
vector is empty, so such a document (blank, or all its weights rounding to 0) gets the reserved term
EMPTY_VECTOR_TERM with weight 1: it stays in the index (counts match) and no query can match it.
A blank query keeps its empty vector and retrieves nothing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

import torch
from tqdm import tqdm

from pipeline import data
from pipeline.errors import PipelineError
from pipeline.files import ShardWriter, atomic_path, write_json
from pipeline.splade.model import SpladeEncoder
from pipeline.train import refuse_collapsed

log = logging.getLogger(__name__)

EMPTY_VECTOR_TERM = "[EMPTY-VECTOR]"
# Documents are sorted by length inside windows of this many batches: most of the padding saved,
# memory bounded whatever the corpus size.
SORT_WINDOW_BATCHES = 64


def vocabulary_terms(tokenizer, vocab_size: int) -> list[str]:
    """Index term for each vocabulary id: whitespace-free and unique (Anserini splits on whitespace).

    A whitespace character becomes `<U+XXXX>`; an empty, missing or clashing token gets `#<id>` added.
    """
    tokens = tokenizer.convert_ids_to_tokens(list(range(vocab_size)))
    taken, terms = {EMPTY_VECTOR_TERM}, []
    for token_id, token in enumerate(tokens):
        term = "".join(f"<U+{ord(c):04X}>" if c.isspace() else c for c in token or "")
        if not term or term in taken:
            term = f"{term}#{token_id}"
        taken.add(term)
        terms.append(term)
    return terms


def quantize(weights: torch.Tensor, terms: list[str], scale: float) -> list[dict[str, int]]:
    """[batch, vocab] float weights -> one {term: int(round(w * scale))} per row, zeros left out.

    Refuses weights that are not finite, or whose quantized sum in a row exceeds what Lucene stores
    (an int): the cast would wrap them into garbage."""
    if not torch.isfinite(weights).all():
        raise PipelineError("the model produced weights that are not finite numbers (NaN or Inf)")
    scaled = torch.round(weights * scale)
    if scaled.double().sum(dim=1).gt(data.MAX_IMPACT).any():
        raise PipelineError(f"--scale {scale:g} makes a vector's weights add up to more than 2^31 - 1, which "
                            "Lucene cannot store: use a smaller scale (100 is usual)")
    quantized = scaled.to(torch.int64)
    rows, cols = quantized.nonzero(as_tuple=True)
    values = quantized[rows, cols].tolist()
    counts = torch.bincount(rows, minlength=weights.shape[0]).tolist()
    vectors, start = [], 0
    cols = cols.tolist()
    for count in counts:
        vectors.append({terms[col]: value for col, value in zip(cols[start : start + count], values[start : start + count])})
        start += count
    return vectors


@dataclass
class Counts:
    texts: int = 0
    truncated: int = 0
    empty: int = 0
    terms: int = 0
    seconds: float = 0.0


def _batches(items: Iterable[data.Document], batch_size: int) -> Iterator[list[data.Document]]:
    """Length-sorted batches, sorted within windows so memory stays bounded."""
    items = iter(items)
    while window := list(islice(items, batch_size * SORT_WINDOW_BATCHES)):
        window.sort(key=lambda doc: len(doc.text), reverse=True)
        for start in range(0, len(window), batch_size):
            yield window[start : start + batch_size]


def _encode_texts(encoder, texts, terms, *, max_length, scale, batch_size, write, what, total=None) -> Counts:
    counts, started = Counts(), time.perf_counter()
    with tqdm(total=total, desc=f"encode {what}", unit=what) as progress:
        for batch in _batches(texts, batch_size):
            # A blank text has no terms: its vector is empty, not the model's reading of [CLS] [SEP].
            filled = [i for i, item in enumerate(batch) if item.text.strip()]
            vectors: list[dict[str, int]] = [{} for _ in batch]
            if filled:
                weights, truncated = encoder.encode([batch[i].text for i in filled], max_length)
                for i, vector in zip(filled, quantize(weights, terms, scale)):
                    vectors[i] = vector
                counts.truncated += truncated
            for item, vector in zip(batch, vectors):
                counts.terms += len(vector)
                counts.empty += not vector
                write(item, vector)
            counts.texts += len(batch)
            progress.update(len(batch))
    counts.seconds = time.perf_counter() - started
    return counts


def encode(
    model: str,
    dataset: str,
    out: Path,
    *,
    scale: float = 100,
    max_doc_length: int = 256,
    max_query_length: int = 64,
    batch_size: int = 32,
    shard_size: int = 100_000,
    device: str | None = None,
    accept_collapsed: bool = False,
) -> dict:
    """Encode `dataset`'s documents and queries with SPLADE `model` into the folder `out`."""
    corpus = data.load(dataset)
    corpus.check()  # a bad line anywhere fails now, not after hours of encoding
    refuse_collapsed(model, accept_collapsed)
    encoder = SpladeEncoder.load(model, device=device)
    terms = vocabulary_terms(encoder.tokenizer, encoder.model.vocab_size)
    with atomic_path(out, directory=True) as staging:
        shards = ShardWriter(staging / "docs", shard_size)

        def write_doc(doc, vector):
            shards.write({"id": doc.id, "contents": doc.text, "vector": vector or {EMPTY_VECTOR_TERM: 1}})

        try:
            docs = _encode_texts(
                encoder, corpus.docs(), terms, max_length=max_doc_length, scale=scale, batch_size=batch_size,
                write=write_doc, what="docs", total=corpus.docs_count(),
            )
        finally:
            shards.close()
        queries_in = [data.Document(qid, text) for qid, text in corpus.queries().items()]
        with open(staging / "queries.jsonl", "w", encoding="utf-8") as stream:
            queries = _encode_texts(
                encoder, queries_in, terms, max_length=max_query_length, scale=scale, batch_size=batch_size,
                write=lambda q, v: stream.write(json.dumps({"id": q.id, "contents": q.text, "vector": v}, ensure_ascii=False) + "\n"),
                what="queries", total=len(queries_in),
            )
        stats = {
            "model": model, "dataset": corpus.name, "scale": scale, "empty_vector_term": EMPTY_VECTOR_TERM,
            "max_doc_length": max_doc_length, "max_query_length": max_query_length,
            "docs": asdict(docs), "queries": asdict(queries),
            "docs_per_second": docs.texts / docs.seconds if docs.seconds else None,
            "mean_terms_per_doc": docs.terms / docs.texts if docs.texts else 0.0,
            "mean_terms_per_query": queries.terms / queries.texts if queries.texts else 0.0,
        }
        write_json(staging / "stats.json", stats)
    for what, counts, limit in (("documents", docs, max_doc_length), ("queries", queries, max_query_length)):
        if counts.truncated:
            log.warning("%d of %d %s were longer than %d tokens and truncated", counts.truncated, counts.texts, what, limit)
        if counts.empty:
            log.warning("%d of %d %s have an empty vector%s", counts.empty, counts.texts, what,
                        f" (indexed with the reserved term {EMPTY_VECTOR_TERM})" if what == "documents" else " (they retrieve nothing)")
    return stats

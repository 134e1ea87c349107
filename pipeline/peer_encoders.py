"""SPLADE document encoders side by side on the same texts: ours and the peers a user would reach for.

Each `encode_*` turns texts into term weights as its library does it, and returns the timed seconds
with (for ours and the reference) the float weights {vocabulary id: weight} to compare.
`run_isolated` runs one in a fresh process, so its peak RSS is its own.

- ours: the encode stage's path (background tokenizing, screened projection, quantizing, JSON records);
- sentence-transformers: `SparseEncoder.encode_document`, batches of `batch_size`;
- pyserini: `SpladeDocumentEncoder.encode`, batches in corpus order, as `python -m pyserini.encode`;
- reference: plain fp32 PyTorch SPLADE, full [batch, tokens, vocab] logits, masked max, batches of
  `batch_size` length-sorted texts.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import time
from collections.abc import Callable

import torch

Weights = list[dict[int, float]]
SCALE = 100  # the encode stage's quantization, under which weights are compared


def _sparse(weights: torch.Tensor) -> Weights:
    rows = []
    for row in weights.cpu():
        columns = row.nonzero().flatten()
        rows.append(dict(zip(columns.tolist(), row[columns].tolist())))
    return rows


def _length_sorted(texts: list[str]) -> list[int]:
    return sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)


def encode_ours(model: str, texts: list[str], *, max_length: int, batch_size: int, device: str,
                body_precision: str = "fp32") -> tuple[float, Weights]:
    from pipeline import data
    from pipeline.encode import encode_texts, vocabulary_terms
    from pipeline.files import json_line
    from pipeline.splade.model import SpladeEncoder

    encoder = SpladeEncoder.load(model, device=device, body_precision=body_precision)
    terms = vocabulary_terms(encoder.tokenizer, encoder.model.vocab_size)
    documents = [data.Document(str(i), text) for i, text in enumerate(texts)]
    written = []
    counts = encode_texts(encoder, documents, terms, max_length=max_length, scale=100, batch_size=batch_size,
                           write=lambda doc, vector: written.append(json_line({"id": doc.id, "vector": vector})),
                           what="docs", total=len(texts))
    weights: Weights = [{} for _ in texts]  # untimed: the float weights, for the comparison
    order = _length_sorted(texts)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        for i, row in zip(chunk, _sparse(encoder.encode([texts[i] for i in chunk], max_length)[0])):
            weights[i] = row
    return counts.seconds, weights


def encode_reference(model: str, texts: list[str], *, max_length: int, batch_size: int, device: str) -> tuple[float, Weights]:
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    mlm = AutoModelForMaskedLM.from_pretrained(model).float().to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(model)
    weights: Weights = [{} for _ in texts]
    order = _length_sorted(texts)
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = tokenizer([texts[i] for i in chunk], truncation=True, max_length=max_length, padding=True,
                              return_tensors="pt").to(device)
            logits = mlm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            pooled = (torch.log1p(torch.relu(logits)) * batch["attention_mask"].unsqueeze(-1)).amax(dim=1)
            for i, row in zip(chunk, _sparse(pooled)):
                weights[i] = row
    return time.perf_counter() - started, weights


def encode_sentence_transformers(model: str, texts: list[str], *, max_length: int, batch_size: int,
                                 device: str) -> tuple[float, None]:
    from sentence_transformers import SparseEncoder

    encoder = SparseEncoder(model, device=device)
    encoder.max_seq_length = max_length
    started = time.perf_counter()
    encoder.encode_document(texts, batch_size=batch_size, show_progress_bar=False)
    return time.perf_counter() - started, None


def encode_pyserini(model: str, texts: list[str], *, max_length: int, batch_size: int, device: str) -> tuple[float, None]:
    from pipeline import lucene

    lucene.start_jvm()  # pyserini needs it running; see lucene.py
    # pyserini.encode imports its OpenAI encoder, whose client wants a key at import time (never used here).
    os.environ.setdefault("OPENAI_API_KEY", "unused")
    from pyserini.encode import SpladeDocumentEncoder

    encoder = SpladeDocumentEncoder(model, device=device)
    started = time.perf_counter()
    for start in range(0, len(texts), batch_size):
        encoder.encode(texts[start : start + batch_size], max_length=max_length)
    return time.perf_counter() - started, None


ENCODERS: dict[str, Callable] = {
    "ours": encode_ours,
    "sentence-transformers": encode_sentence_transformers,
    "pyserini": encode_pyserini,
    "reference": encode_reference,
}


def _run(name: str, model: str, texts: list[str], options: dict) -> dict:
    seconds, weights = ENCODERS[name](model, texts, **options)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run = {"encoder": name, "docs": len(texts), "seconds": seconds, "docs_per_second": len(texts) / seconds,
           "peak_rss_mb": peak_kib / 1024, "weights": weights}
    if options["device"] == "cuda":
        run["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return run


def compare(ours: Weights, reference: Weights) -> dict:
    """Entries whose quantized weight differs (missing or extra included), and the largest float gap."""
    differing, largest, entries = 0, 0.0, 0
    for mine, theirs in zip(ours, reference):
        for term in mine.keys() | theirs.keys():
            a, b = mine.get(term, 0.0), theirs.get(term, 0.0)
            entries += round(b * SCALE) != 0
            differing += round(a * SCALE) != round(b * SCALE)
            largest = max(largest, abs(a - b))
    return {"reference_nonzero_entries": entries, "differing_quantized_entries": differing, "max_float_difference": largest}


def run_isolated(name: str, model: str, texts: list[str], **options) -> dict:
    """`ENCODERS[name]` in a fresh (spawned) process: docs/s, that process's peak RSS, and its weights."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        run = pool.apply(_run, (name, model, texts, options))
        # The worker exits on its own, running its finalizers: killed by the pool's exit instead, it would leave the
        # semaphores its libraries made (tqdm's lock, joblib's) to the resource tracker's warnings at shutdown.
        pool.close()
        pool.join()
    return run

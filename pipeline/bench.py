"""Stage `bench`: throughput on this machine (speed goals live here, not in timed tests).

- encode: documents/s of the pooled projection (unpadded tokens, vocabulary slices) against the
  plain reference (the MLM's full [batch, tokens, vocab] logits, masked max);
- train: forward + backward steps/s of a SPLADE training batch.
"""

from __future__ import annotations

import itertools
import time

import torch

from pipeline import data
from pipeline.files import write_json
from pipeline.splade.model import SpladeEncoder
from pipeline.training import losses


def _reference(encoder: SpladeEncoder, batch) -> torch.Tensor:
    logits = encoder.model.mlm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return (torch.log1p(torch.relu(logits)) * batch["attention_mask"].unsqueeze(-1)).amax(dim=1)


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds else float("inf")


def bench(model: str, dataset: str, out, *, docs: int = 256, batch_size: int = 32, max_length: int = 256) -> dict:
    encoder = SpladeEncoder.load(model, device="cpu")
    texts = sorted((doc.text for doc in itertools.islice(data.load(dataset).docs(), docs)), key=len, reverse=True)
    batches = [encoder.tokenize(texts[i : i + batch_size], max_length)[0] for i in range(0, len(texts), batch_size)]
    results = {"model": model, "dataset": dataset, "docs": len(texts), "batch_size": batch_size,
               "max_length": max_length, "threads": torch.get_num_threads()}
    with torch.inference_mode():
        for name, forward in (("pooled", lambda b: encoder.model(b["input_ids"], b["attention_mask"])),
                              ("reference", lambda b: _reference(encoder, b))):
            forward(batches[0])  # warm-up
            started = time.perf_counter()
            for batch in batches:
                forward(batch)
            results[f"encode_{name}_docs_per_second"] = _rate(len(texts), time.perf_counter() - started)
    model_ = encoder.model.train()
    queries, _ = encoder.tokenize([text[:200] for text in texts[:8]], 64)
    documents, _ = encoder.tokenize(texts[:16], 128)
    steps, started = 3, time.perf_counter()
    for _ in range(steps):
        q = model_(queries["input_ids"], queries["attention_mask"])
        d = model_(documents["input_ids"], documents["attention_mask"])
        (losses.info_nce(q, d, 2) + 0.01 * losses.flops(d)).backward()
    results["train_steps_per_second_8q_16d_128tok"] = _rate(steps, time.perf_counter() - started)
    write_json(out, results)
    for key, value in results.items():
        print(f"{key:40} {value:.2f}" if isinstance(value, float) else f"{key:40} {value}")
    return results

"""The GPU section of `make bench` (run when CUDA is available): ours against sentence-transformers on
the same GPU and passages (at most 128 tokens), for the bench's model and a BERT-base-size SPLADE (the
FLOPs of SPLADE-v3), each encoder in its own process; our weights against the fp32 reference's; the
GPU's own GEMM rates (`pipeline.roofline`).

Ours runs twice: exact (fp32 transformer layers, the reference's weights) and with bf16 layers
(`--body-precision bf16`: the tensor cores' speed, weights that differ from fp32's by what is reported).

The BERT-base-size model is a random-init `BertForMaskedLM` with bert-base-uncased's config. At random
init about half of all logits are positive, so every passage would weigh most of the vocabulary, which no
trained SPLADE does: its decoder bias is lowered so that passages weigh TARGET_TERMS terms on average, as
a trained SPLADE's do. The FLOPs stay those of the model.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch

from pipeline import peer_encoders, roofline
from pipeline.splade.model import Splade

PASSAGES = 20_000
MAX_LENGTH = 128
BATCH_SIZE = 256
TARGET_TERMS = 250
CALIBRATION_PASSAGES = 64
# label: (encoder of `peer_encoders`, its options)
ENCODERS = {
    "ours": ("ours", {}),
    "ours, bf16 body": ("ours", {"body_precision": "bf16"}),
    "sentence-transformers": ("sentence-transformers", {}),
    "reference": ("reference", {}),
}


def random_sparse_mlm(path: Path, tokenizer_from: str, texts: list[str], *, config=None, device: str = "cpu") -> Path:
    """A random-init `BertForMaskedLM` (bert-base-uncased's shape unless `config`) saved at `path`, its
    decoder bias lowered so that the first CALIBRATION_PASSAGES `texts` weigh TARGET_TERMS terms each
    on average. Made anew each time (seconds on a GPU): a model left there by another run may differ."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    splade = Splade(BertForMaskedLM(config or BertConfig())).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    batch = tokenizer(texts[:CALIBRATION_PASSAGES], truncation=True, max_length=MAX_LENGTH, padding=True,
                      return_tensors="pt").to(device)
    with torch.no_grad():
        maxima = splade.mlm(**batch).logits.masked_fill(~batch["attention_mask"].bool()[..., None], -torch.inf).amax(dim=1)
        kept = min(TARGET_TERMS * maxima.shape[0], maxima.numel())
        splade.head.decoder.bias -= maxima.flatten().topk(kept).values[-1]  # saving syncs BERT's bias alias
    splade.save_pretrained(path, tokenizer)
    return path


def gpu_section(model: str, texts: list[str], work: Path, *, passages: int = PASSAGES, base_config=None,
                device: str = "cuda") -> dict:
    """docs/s and peak GPU memory of each of ENCODERS, for `model` and the BERT-base-size model (or one
    of `base_config`), on `passages` passages cycled from `texts`; exactness of ours (both) against the
    reference. `device` "cpu" runs the same steps where there is no GPU (the tests)."""
    cycled = list(itertools.islice(itertools.cycle(texts), passages))
    base = random_sparse_mlm(work / "bert-base-random", model, texts, config=base_config, device=device)
    section = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "passages": len(cycled),
               "max_length": MAX_LENGTH, "batch_size": BATCH_SIZE, "gemm": roofline.measure(device), "models": {}}
    for name, path in (("splade-tiny", model), ("bert-base", str(base))):
        runs = {label: peer_encoders.run_isolated(encoder, path, cycled, max_length=MAX_LENGTH, batch_size=BATCH_SIZE,
                                                  device=device, **options)
                for label, (encoder, options) in ENCODERS.items()}
        weights = {label: run.pop("weights") for label, run in runs.items()}
        rate = {label: run["docs_per_second"] for label, run in runs.items()}
        section["models"][name] = {
            "runs": runs,
            "ours_over_sentence_transformers": rate["ours"] / rate["sentence-transformers"],
            "bf16_body_over_sentence_transformers": rate["ours, bf16 body"] / rate["sentence-transformers"],
            "exactness": peer_encoders.compare(weights["ours"], weights["reference"]),
            "exactness_bf16_body": peer_encoders.compare(weights["ours, bf16 body"], weights["reference"]),
        }
        print("\n".join(format_markdown(section)), flush=True)  # what is measured so far, should a later model fail
    return section


def format_markdown(section: dict) -> list[str]:
    gemm = section["gemm"]["gflops"]
    lines = [f"GPU {section['device']}, {section['passages']} passages, max length {section['max_length']}, "
             f"batches of {section['batch_size']}; GEMM TFLOP/s: "
             + ", ".join(f"{dtype} {shape} {rate / 1000:.0f}" for dtype, rates in gemm.items() for shape, rate in rates.items()),
             "", "| model | encoder | docs/s | peak GPU memory (MB) | quantized entries differing from the reference |",
             "|---|---|---|---|---|"]
    for name, measured in section["models"].items():
        for label, run in measured["runs"].items():
            exact = {"ours": measured["exactness"], "ours, bf16 body": measured["exactness_bf16_body"]}.get(label)
            differing = (f"{exact['differing_quantized_entries']} of {exact['reference_nonzero_entries']} "
                         f"(max float difference {exact['max_float_difference']:.2e})" if exact else "")
            lines.append(f"| {name} | {label} | {run['docs_per_second']:.0f} | {run.get('peak_gpu_memory_mb', 0):.0f} | {differing} |")
        lines.append(f"| {name} | ours / sentence-transformers | {measured['ours_over_sentence_transformers']:.1f}x "
                     f"(bf16 body {measured['bf16_body_over_sentence_transformers']:.1f}x) | | |")
    return lines

"""Stage `head-stats`: MLM-head diagnostics before and after rescaling, and the collapse symptoms
(dense vectors, large weights, unrelated texts looking alike) on sample texts."""

from __future__ import annotations

import json
from collections.abc import Sequence

import torch

from pipeline.splade.families import mlm_head
from pipeline.splade.model import SpladeEncoder
from pipeline.splade.rescale import parse_rescale, prepare_head, projection_rms, projection_spread

# Unrelated texts: a healthy SPLADE gives them few shared terms, so a low mean cosine.
SAMPLE_TEXTS = (
    "The mitochondria is the powerhouse of the cell and produces ATP through respiration.",
    "Interest rates were raised by the central bank to curb inflation last quarter.",
    "The striker scored twice in the second half to win the championship final.",
    "Preheat the oven to 180 degrees and bake the sourdough loaf for forty minutes.",
    "Jupiter is the largest planet in the solar system and has dozens of moons.",
    "The treaty ending the war was signed in Versailles in 1919.",
    "Python lists are mutable sequences, while tuples cannot be changed after creation.",
    "Monarch butterflies migrate thousands of kilometres to overwintering sites in Mexico.",
    "The violinist performed Bach's partitas at the concert hall on Saturday evening.",
    "Chronic kidney disease is associated with high blood pressure and diabetes.",
    "The new electric car can drive 500 kilometres on a single charge.",
    "Glaciers in the Alps have lost more than half of their volume since 1900.",
    "The court ruled that the contract was void because of misrepresentation.",
    "A haiku is a short Japanese poem with three lines of five, seven and five syllables.",
    "Volcanic eruptions can inject ash and sulfur dioxide into the stratosphere.",
    "The museum reopened its gallery of Renaissance paintings after renovation.",
)


@torch.inference_mode()
def measure(encoder: SpladeEncoder, texts: Sequence[str], max_length: int = 128) -> dict:
    head = mlm_head(encoder.model.mlm)
    weight, bias = head.decoder.weight, head.decoder.bias
    batch, _ = encoder.tokenize(list(texts), max_length)
    mask = batch["attention_mask"].bool()
    hidden = encoder.model.mlm.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    logits = head.decoder(head.transform(hidden[mask]))
    vectors = encoder.model(batch["input_ids"], batch["attention_mask"]).float()
    active = vectors > 0
    unit = torch.nn.functional.normalize(vectors, dim=1)
    cosine = unit @ unit.T
    pairs = len(texts) * (len(texts) - 1)
    return {
        "tied": head.tied,
        "decoder_frobenius": weight.norm().item(),
        "decoder_mean_row_norm": weight.norm(dim=1).mean().item(),
        "bias_mean": None if bias is None else bias.mean().item(),
        "bias_norm": None if bias is None else bias.norm().item(),
        "layernorm_gain_mean": head.layer_norm.weight.mean().item(),
        "projection_rms": projection_rms(encoder.model, encoder.tokenizer, texts, max_length),
        "projection_spread": projection_spread(encoder.model, encoder.tokenizer, texts, max_length),
        "positive_logit_fraction": (logits > 0).float().mean().item(),
        "active_terms_mean": active.sum(dim=1).float().mean().item(),
        "active_terms_fraction": active.float().mean().item(),
        "weight_mean": vectors[active].mean().item() if active.any() else 0.0,
        "weight_max": vectors.max().item(),
        "flops": vectors.mean(dim=0).square().sum().item(),
        "cosine_unrelated_mean": ((cosine.sum() - cosine.diagonal().sum()) / pairs).item(),
    }


def head_stats(model: str, rescale: str | float | None = None, texts: Sequence[str] = SAMPLE_TEXTS) -> dict:
    """Stats of `model`'s head, and with `rescale` (a factor or `auto`) the same after rescaling.

    The top-level keys describe the model as it would train (after rescaling, if asked), with `k`
    (1 when not rescaled); `before` holds the stats as loaded.
    """
    encoder = SpladeEncoder.load(model, device="cpu")
    before = measure(encoder, texts)
    if parse_rescale(rescale) is None:
        return {**before, "k": 1.0, "before": before}
    record = prepare_head(encoder.model, encoder.tokenizer, rescale=rescale, sample=texts)
    return {**measure(encoder, texts), "k": record["k"], "rescale": record, "before": before}


def format_table(stats: dict) -> str:
    keys = [key for key in stats["before"]]
    columns = ["before"] + (["after"] if "rescale" in stats else [])
    lines = [f"k = {stats['k']:g}" + (f"  ({stats['rescale'].get('rule', 'fixed factor')})" if "rescale" in stats else "")]
    lines.append(f"{'':26}" + "".join(f"{c:>14}" for c in columns))
    for key in keys:
        values = [stats["before"][key]] + ([stats[key]] if "rescale" in stats else [])
        lines.append(f"{key:26}" + "".join(f"{v!s:>14}" if isinstance(v, bool) or v is None else f"{v:>14.4f}" for v in values))
    return "\n".join(lines)


def to_json(stats: dict) -> str:
    return json.dumps(stats, indent=2)

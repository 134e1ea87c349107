"""MLM-head rescaling ("Rescaling MLM-Head for Neural Sparse Retrieval"): divide the head's output
projection by k once, right after loading and before any SPLADE training. No architecture or loss change.

SPLADE reads MLM logits as term weights, log(1 + relu(logits)), max-pooled over tokens, and scores
with an unnormalized dot product. A large-norm head (ModernBERT, Ettin) gives inflated logits: nearly
every vocabulary term active, dense vectors, huge scores, and contrastive training collapses.
Dividing W (hidden -> vocab) by k shrinks the projection part of every logit by k; the decoder bias is
kept by default (it is the head's prior over the vocabulary, not scaled by the backbone's norm).

`auto` picks k per backbone without training: k = RMS of the projection part W h of the logits over a
sample of training texts, divided by TARGET_PROJECTION_RMS, the same statistic on a healthy BERT-SPLADE
at init. Since the projection part scales exactly as 1/k, the rescaled head then matches the target.
k is never below 1 (a head that is already small is left alone).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from pipeline.errors import PipelineError
from pipeline.splade.families import mlm_head

# Measured with `python -m pipeline head-stats --model models/splade-tiny --json` (key
# projection_rms) on the built-in sample texts of pipeline.head_stats: SPLADE-tiny is a BERT-SPLADE
# whose training stayed healthy (MS MARCO dev MRR@10 30.9).
TARGET_PROJECTION_RMS = 8.884
TARGET_SOURCE = "projection RMS of SPLADE-tiny (healthy BERT-SPLADE) on pipeline.head_stats.SAMPLE_TEXTS"


class RescaleError(PipelineError, ValueError):
    pass


def parse_rescale(value: str | float | None) -> float | str | None:
    """`none` | `auto` | a factor k > 0 (W <- W / k)."""
    if value is None or str(value).lower() in ("none", "1", "1.0"):
        return None
    if str(value).lower() == "auto":
        return "auto"
    try:
        factor = float(value)
    except ValueError:
        raise RescaleError(f"rescale must be 'none', 'auto' or a positive factor, got {value!r}") from None
    if not math.isfinite(factor) or factor <= 0:
        raise RescaleError(f"rescale factor must be positive and finite, got {value!r} (W is divided by it)")
    return factor


@torch.no_grad()
def projection_rms(model, tokenizer, texts: Sequence[str], max_length: int = 256) -> float:
    """Root mean square of W h (logits without the bias) over every token of `texts` and every term."""
    head = mlm_head(model.mlm)
    batch = tokenizer(list(texts), truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    batch = batch.to(head.decoder.weight.device)
    hidden = model.mlm.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    tokens = head.transform(hidden[batch["attention_mask"].bool()])
    squares = sum(
        (tokens @ head.decoder.weight[start : start + 4096].T).double().square().sum().item()
        for start in range(0, head.decoder.weight.shape[0], 4096)
    )
    return math.sqrt(squares / (tokens.shape[0] * head.decoder.weight.shape[0]))


def auto_factor(model, tokenizer, texts: Sequence[str]) -> dict:
    """k that brings the head's projection RMS on `texts` to the healthy target; with the rule."""
    measured = projection_rms(model, tokenizer, texts)
    return {
        "k": max(1.0, measured / TARGET_PROJECTION_RMS),
        "rule": "k = max(1, projection_rms / target_projection_rms)",
        "projection_rms": measured,
        "target_projection_rms": TARGET_PROJECTION_RMS,
        "target_source": TARGET_SOURCE,
        "sample_texts": len(texts),
    }


def _scale_decoder(model, factor: float, scale_bias: bool) -> bool:
    """Untie the decoder if tied, then multiply its weight (and bias) by `factor`; True if it was tied."""
    head = mlm_head(model.mlm)
    was_tied = head.tied
    if was_tied:
        head.untie(model.mlm)
    head.decoder.weight.mul_(factor)
    if scale_bias and head.decoder.bias is not None:
        head.decoder.bias.mul_(factor)
    head.sync_bias_alias()
    return was_tied


@torch.no_grad()
def rescale_head(model, k: float, *, scale_bias: bool = False, info: dict | None = None) -> dict:
    """Untie the decoder if tied, then W <- W / k (and b <- b / k if `scale_bias`), once.

    The choice is recorded in the config (`splade_rescale`), so it is saved with the checkpoint, and a
    model that already carries one refuses a second rescaling.
    """
    if not (math.isfinite(k) and k > 0):
        raise RescaleError(f"rescale factor must be positive and finite, got {k!r}")
    config = model.mlm.config
    if getattr(config, "splade_rescale", None):
        raise RescaleError(f"this model's head was already rescaled ({config.splade_rescale}); rescaling happens once, at init")
    was_tied = _scale_decoder(model, 1 / k, scale_bias)
    config.splade_rescale = {**(info or {}), "k": float(k), "scale_bias": scale_bias, "untied": was_tied}
    return config.splade_rescale


@torch.no_grad()
def inflate_head(model, factor: float) -> None:
    """W <- W * factor: turns a healthy head into a large-norm one, for the collapse ablation."""
    _scale_decoder(model, factor, scale_bias=False)
    model.mlm.config.splade_inflated = float(factor)


def prepare_head(model, tokenizer, *, inflate: float = 1.0, rescale=None, scale_bias: bool = False,
                 sample: Sequence[str] = ()) -> dict:
    """The head as training starts: inflated (the ablation only), then rescaled as asked (`auto`
    measuring on `sample`). Returns the rescaling record ({"k": 1.0} when not rescaled)."""
    if inflate != 1:
        inflate_head(model, inflate)
    choice = parse_rescale(rescale)
    if choice is None:
        return {"k": 1.0}
    info = auto_factor(model, tokenizer, sample) if choice == "auto" else {}
    return rescale_head(model, info.get("k", choice), scale_bias=scale_bias, info=info)

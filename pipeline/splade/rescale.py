"""MLM-head rescaling ("Rescaling MLM-Head for Neural Sparse Retrieval"): divide the head's output
projection by k once, right after loading and before any SPLADE training. No architecture or loss change.

SPLADE reads MLM logits as term weights, log(1 + relu(logits)), max-pooled over tokens, and scores
with an unnormalized dot product. A large-norm head (ModernBERT, Ettin) gives inflated logits: nearly
every vocabulary term active, dense vectors, huge scores, and contrastive training collapses.
Dividing W (hidden -> vocab) by k shrinks the projection part of every logit by k; the decoder bias is
kept by default (it is the head's prior over the vocabulary, not scaled by the backbone's norm).

`auto` picks k per backbone without training: k = max(1, spread / sqrt(2 ln V)). The spread is the
standard deviation of the projection part W h of the logits across the V vocabulary terms, root mean
square over the tokens of a sample of training texts (the bias and any per-token offset do not change
which terms a softmax prefers). The target sqrt(2 ln V) comes from theory, not from a model: V
Gaussian logits of spread s have their maximum near s sqrt(2 ln V) and their log-sum-exp near
ln V + s^2 / 2, and the two meet at s = sqrt(2 ln V), the least spread at which one term can take
most of a softmax over V terms (the freezing point of Derrida's random energy model). An MLM trained
with cross-entropy must reach about that spread to predict confidently, and gains nothing from going
far beyond it; a backbone far beyond it is a large-norm head. Since the spread scales exactly as 1/k,
the rescaled head then sits at the target; k is never below 1 (a head that is already small is left alone).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from pipeline.errors import PipelineError
from pipeline.splade.families import mlm_head

RULE = "k = max(1, projection_spread / sqrt(2 ln V))"
TARGET_SOURCE = ("theory: sqrt(2 ln V), the logit spread at which the maximum of V Gaussian logits meets "
                 "their log-sum-exp (random energy model), independent of any measured model")
# The dense surrogate (`k-sweep --surrogate dense`): added to every decoder bias entry, it makes
# 45 % of SPLADE-tiny's vocabulary active at init on pipeline.head_stats.SAMPLE_TEXTS (0.15 % without),
# the symptom of backbones whose vectors are dense before training; a scale of W alone does not.
DENSE_BIAS_SHIFT = 6.0


def target_spread(vocab_size: int) -> float:
    return math.sqrt(2 * math.log(vocab_size))


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
def _projections(model, tokenizer, texts: Sequence[str], max_length: int):
    """W h (logits without the bias) of every token of `texts`, in [tokens, 4096-term] blocks."""
    head = mlm_head(model.mlm)
    batch = tokenizer(list(texts), truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    batch = batch.to(head.decoder.weight.device)
    hidden = model.mlm.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    tokens = head.transform(hidden[batch["attention_mask"].bool()])
    for start in range(0, head.decoder.weight.shape[0], 4096):
        yield (tokens @ head.decoder.weight[start : start + 4096].T).double()


def projection_rms(model, tokenizer, texts: Sequence[str], max_length: int = 256) -> float:
    """Root mean square of W h over every token of `texts` and every term."""
    sums = [(block.square().sum().item(), block.numel()) for block in _projections(model, tokenizer, texts, max_length)]
    return math.sqrt(sum(total for total, _ in sums) / sum(count for _, count in sums))


def projection_spread(model, tokenizer, texts: Sequence[str], max_length: int = 256) -> float:
    """Standard deviation of W h across the vocabulary, root mean square over the tokens of `texts`."""
    blocks = list(_projections(model, tokenizer, texts, max_length))
    total = sum(block.sum(dim=1) for block in blocks)
    squares = sum(block.square().sum(dim=1) for block in blocks)
    vocab = sum(block.shape[1] for block in blocks)
    return math.sqrt((squares / vocab - (total / vocab).square()).mean().item())


def auto_factor(model, tokenizer, texts: Sequence[str]) -> dict:
    """k that brings the head's projection spread on `texts` down to the theory's target; with the rule."""
    spread = projection_spread(model, tokenizer, texts)
    target = target_spread(mlm_head(model.mlm).decoder.out_features)
    return {
        "k": max(1.0, spread / target),
        "ratio": spread / target,
        "rule": RULE,
        "projection_spread": spread,
        "target_spread": target,
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


@torch.no_grad()
def shift_bias(model, shift: float) -> None:
    """b <- b + shift: shifts every logit up, so that most terms are active (the dense surrogate)."""
    head = mlm_head(model.mlm)
    if head.decoder.bias is None:
        raise RescaleError(f"this {type(model.mlm).__name__} head has no decoder bias (its config's decoder_bias is "
                           "off): there is no bias to shift")
    head.decoder.bias.add_(shift)
    head.sync_bias_alias()  # BERT's second name for the bias, if the two are separate tensors
    model.mlm.config.splade_bias_shift = float(shift)


def prepare_head(model, tokenizer, *, inflate: float = 1.0, bias_shift: float = 0.0, rescale=None,
                 scale_bias: bool = False, sample: Sequence[str] = ()) -> dict:
    """The head as training starts: inflated and bias-shifted (the surrogates of sick backbones), then
    rescaled as asked (`auto` measuring on `sample`). Returns the rescaling record ({"k": 1.0} when not
    rescaled)."""
    if inflate != 1:
        inflate_head(model, inflate)
    if bias_shift:
        shift_bias(model, bias_shift)
    choice = parse_rescale(rescale)
    if choice is None:
        return {"k": 1.0}
    info = auto_factor(model, tokenizer, sample) if choice == "auto" else {}
    return rescale_head(model, info.get("k", choice), scale_bias=scale_bias, info=info)

"""Where each MLM family keeps its head: the one place that knows BERT from DistilBERT from ModernBERT.

Every supported head is `decoder(transform(hidden))`, with `decoder` the hidden -> vocabulary
projection (tied to the input embeddings in the released checkpoints of all three families).
Ettin checkpoints use the ModernBERT architecture (`model_type: modernbert`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from pipeline.errors import PipelineError


@dataclass(frozen=True)
class MlmHead:
    transform: nn.Module | Callable  # hidden -> hidden, the head's dense + activation + LayerNorm
    decoder: nn.Linear  # hidden -> vocabulary logits
    layer_norm: nn.LayerNorm  # the transform's last LayerNorm (its gain is a head diagnostic)
    decoder_attr: str  # the decoder's path in the model, as in state_dict keys


class _DistilBertTransform(nn.Module):
    """DistilBERT applies its head's parts inline in `forward`; this gathers them, sharing the weights."""

    def __init__(self, model):
        super().__init__()
        self.dense, self.activation, self.norm = model.vocab_transform, model.activation, model.vocab_layer_norm

    def forward(self, hidden):
        return self.norm(self.activation(self.dense(hidden)))


def _bert(model) -> MlmHead:
    predictions = model.cls.predictions
    return MlmHead(predictions.transform, predictions.decoder, predictions.transform.LayerNorm, "cls.predictions.decoder")


def _distilbert(model) -> MlmHead:
    return MlmHead(_DistilBertTransform(model), model.vocab_projector, model.vocab_layer_norm, "vocab_projector")


def _modernbert(model) -> MlmHead:
    return MlmHead(model.head, model.decoder, model.head.norm, "decoder")


FAMILIES: dict[str, Callable[[nn.Module], MlmHead]] = {
    "bert": _bert,
    "distilbert": _distilbert,
    "modernbert": _modernbert,
}


class UnsupportedModelError(PipelineError, ValueError):
    pass


def mlm_head(model: nn.Module) -> MlmHead:
    """The MLM head of a `*ForMaskedLM` model of a supported family."""
    model_type = model.config.model_type
    if model_type not in FAMILIES:
        raise UnsupportedModelError(
            f"unsupported model family {model_type!r} ({type(model).__name__}); "
            f"supported: {', '.join(FAMILIES)} (Ettin models are modernbert)"
        )
    return FAMILIES[model_type](model)

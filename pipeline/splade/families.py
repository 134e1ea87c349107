"""Where each MLM family keeps its head: the one place that knows BERT from DistilBERT from ModernBERT.

Every supported head is `decoder(transform(hidden))`, with `decoder` the hidden -> vocabulary
projection (tied to the input embeddings in the released checkpoints of all three families).
Ettin checkpoints use the ModernBERT architecture (`model_type: modernbert`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.errors import PipelineError


@dataclass(frozen=True)
class MlmHead:
    transform: nn.Module | Callable  # hidden -> hidden, the head's dense + activation + LayerNorm
    decoder: nn.Linear  # hidden -> vocabulary logits
    layer_norm: nn.LayerNorm  # the transform's last LayerNorm (its gain is a head diagnostic)
    input_embeddings: nn.Embedding  # what the released checkpoints tie `decoder.weight` to
    # BERT keeps a second name for the decoder bias (`cls.predictions.bias`); saving writes one name
    # for a shared tensor, so an untied head gives the alias its own copy and keeps it in step:
    # called with the decoder bias it copies it, called with None it freezes the alias.
    bias_alias: Callable[[nn.Parameter | None], None] | None = None

    @property
    def tied(self) -> bool:
        return self.decoder.weight.data_ptr() == self.input_embeddings.weight.data_ptr()

    def untie(self, model: nn.Module) -> None:
        """Give the decoder its own weight (and bias), so scaling it leaves the input embeddings alone;
        the config then says untied, so a saved checkpoint reloads the head as saved."""
        self.decoder.weight = nn.Parameter(self.decoder.weight.detach().clone())
        if self.decoder.bias is not None and self.bias_alias is not None:
            # The alias becomes a frozen copy: it gets no gradient, and is refreshed before saving.
            self.decoder.bias = nn.Parameter(self.decoder.bias.detach().clone())
            self.freeze_bias_alias()
        model.config.tie_word_embeddings = False

    def freeze_bias_alias(self) -> None:
        """An untied head's alias gets no gradient (it is refreshed before saving)."""
        if self.bias_alias is not None:
            self.bias_alias(None)

    def sync_bias_alias(self) -> None:
        """Before saving an untied head, copy the decoder bias to its alias (a no-op when shared)."""
        if self.bias_alias is not None and self.decoder.bias is not None:
            self.bias_alias(self.decoder.bias)


class _DistilBertTransform(nn.Module):
    """DistilBERT applies its head's parts inline in `forward`; this gathers them, sharing the weights."""

    def __init__(self, model):
        super().__init__()
        self.dense, self.activation, self.norm = model.vocab_transform, model.activation, model.vocab_layer_norm

    def forward(self, hidden):
        return self.norm(self.activation(self.dense(hidden)))


def _bert(model) -> MlmHead:
    predictions = model.cls.predictions

    def copy_bias(bias):
        if bias is None:
            if predictions.bias is not predictions.decoder.bias:
                predictions.bias.requires_grad_(False)
        elif predictions.bias is not bias:
            with torch.no_grad():
                predictions.bias.copy_(bias)

    return MlmHead(predictions.transform, predictions.decoder, predictions.transform.LayerNorm,
                   model.get_input_embeddings(), copy_bias)


def _distilbert(model) -> MlmHead:
    return MlmHead(_DistilBertTransform(model), model.vocab_projector, model.vocab_layer_norm, model.get_input_embeddings())


def _modernbert(model) -> MlmHead:
    return MlmHead(model.head, model.decoder, model.head.norm, model.get_input_embeddings())


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

"""SPLADE-max over any supported `AutoModelForMaskedLM`: w = max over tokens of log(1 + relu(logits))."""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn
from transformers import AutoModelForMaskedLM, AutoTokenizer, PreTrainedTokenizerBase

from pipeline.errors import PipelineError
from pipeline.splade.families import mlm_head
from pipeline.splade.screened_projection import ScreenedProjection, SparseWeights

# The [tokens x vocabulary] logits dominate time and memory. On a CPU, projecting the unpadded tokens
# onto 512 vocabulary entries at a time and max-pooling right away keeps each block in cache
# (3x faster than one padded [batch, tokens, vocab] product on 2 cores, see `make bench`); a GPU
# takes the whole vocabulary at once.
CPU_VOCAB_SLICE = 512
# Inference runs the encoder body on this many (padded) tokens at a time on a CPU: the activations of 16
# documents of 256 tokens stay closer to the cores than those of 32 (~10 % faster on our 2-core machine,
# same values: each document's states do not depend on the others in its batch).
CPU_BODY_TOKENS = 4096
# The transformer layers' precision. fp32 gives the fp32 model's weights; bf16 (autocast) runs their GEMMs
# on a GPU's tensor cores (13x fp32's rate on an H200), and its weights differ from fp32's (`make bench`
# counts how many). The projection stays exact on whatever states the layers give.
BODY_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class MaxPooledProjection(torch.autograd.Function):
    """pooled[d, v] = max over document d's tokens of (tokens @ W.T + b)[:, v], a vocabulary slice at a time.

    Only the arg-max token of each (document, term) receives gradient, so backward scatters the
    [documents, slice] gradient into one [tokens, slice] block per slice and multiplies twice; autograd
    through per-document slices would build a [tokens, slice] gradient per document instead, and keep
    every slice's logits alive. At an exact tie the gradient goes to one arg-max token (amax would
    split it); both are subgradients.
    """

    @staticmethod
    def forward(ctx, tokens, weight, bias, spans: list[tuple[int, int]], width: int):
        pooled, argmax = [], []
        for start in range(0, weight.shape[0], width):
            logits = F.linear(tokens, weight[start : start + width], None if bias is None else bias[start : start + width])
            maxima = [logits[first:last].max(dim=0) for first, last in spans]
            pooled.append(torch.stack([found.values for found in maxima]))
            argmax.append(torch.stack([found.indices + first for found, (first, _) in zip(maxima, spans)]))
        ctx.save_for_backward(tokens, weight, torch.cat(argmax, dim=1))
        ctx.width, ctx.bias_dtype = width, None if bias is None else bias.dtype
        return torch.cat(pooled, dim=1)

    @staticmethod
    def backward(ctx, grad):
        tokens, weight, argmax = ctx.saved_tensors
        want_tokens, want_weight, want_bias = ctx.needs_input_grad[:3]
        grad_tokens = torch.zeros_like(tokens) if want_tokens else None
        grad_weight = torch.zeros_like(weight) if want_weight else None
        for start in range(0, weight.shape[0], ctx.width):
            block_grad = grad[:, start : start + ctx.width]
            columns = torch.arange(block_grad.shape[1], device=grad.device).expand_as(block_grad)
            block = torch.zeros(tokens.shape[0], block_grad.shape[1], dtype=grad.dtype, device=grad.device)
            block.index_put_((argmax[:, start : start + ctx.width], columns), block_grad, accumulate=True)
            if want_tokens:
                grad_tokens += block @ weight[start : start + ctx.width].to(block.dtype)
            if want_weight:
                grad_weight[start : start + ctx.width] = block.T @ tokens.to(block.dtype)
        grad_bias = grad.sum(dim=0).to(ctx.bias_dtype) if want_bias and ctx.bias_dtype is not None else None
        return grad_tokens, grad_weight, grad_bias, None, None


class ModelNotFoundError(PipelineError, FileNotFoundError):
    pass


class Splade(nn.Module):
    def __init__(self, mlm: nn.Module):
        super().__init__()
        self.mlm = mlm
        mlm_head(mlm).freeze_bias_alias()  # fails early on an unsupported family

    @property
    def head(self):
        return mlm_head(self.mlm)

    def save_pretrained(self, path: Path, tokenizer: PreTrainedTokenizerBase) -> None:
        """A Hugging Face checkpoint (config, safetensors, tokenizer) that reloads to identical outputs."""
        self.head.sync_bias_alias()
        self.mlm.save_pretrained(str(path), safe_serialization=True)
        tokenizer.save_pretrained(str(path))

    @property
    def vocab_size(self) -> int:
        return self.head.decoder.out_features

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The encoder's last hidden states, [batch, tokens, hidden]."""
        return self.mlm.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[batch, vocab] term weights, differentiable. Max-pooling precedes log(1 + relu(.)), which is
        monotone: the same weights as pooling afterwards, with the non-linearity on [batch, vocab] only."""
        head = self.head
        valid = attention_mask.bool()
        tokens = head.transform(self.hidden_states(input_ids, attention_mask)[valid])  # document by document
        ends = valid.sum(dim=1).cumsum(dim=0).tolist()
        spans = list(zip([0] + ends[:-1], ends))
        width = head.decoder.weight.shape[0] if tokens.is_cuda else CPU_VOCAB_SLICE
        pooled = MaxPooledProjection.apply(tokens, head.decoder.weight, head.decoder.bias, spans, width)
        return torch.log1p(torch.relu(pooled))


@dataclass
class SpladeEncoder:
    """A SPLADE model with its tokenizer: texts in, [batch, vocab] weights out.

    Inference screens the vocabulary projection in low precision and rechecks candidates in fp32
    (`ScreenedProjection`): the weights equal the fp32 model's at a fraction of the cost.
    """

    model: Splade
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    body_dtype: torch.dtype = torch.float32
    _projection: tuple[tuple, ScreenedProjection] | None = field(default=None, repr=False)
    _backends: dict = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, name_or_path: str | Path, *, device: str | None = None, trust_remote_code: bool = False,
             body_precision: str = "fp32"):
        if body_precision not in BODY_DTYPES:
            raise ValueError(f"body_precision {body_precision!r}: expected one of {', '.join(BODY_DTYPES)}")
        path = Path(name_or_path)
        looks_local = path.is_absolute() or str(name_or_path).startswith(".") or path.parts[0] == "models"
        if looks_local and not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"no model at {path} (no config.json there). Run `make setup` for the default model, "
                "or pass MODEL=<local HF checkpoint folder or Hugging Face model id>."
            )
        try:
            mlm = AutoModelForMaskedLM.from_pretrained(
                str(name_or_path), use_safetensors=True, trust_remote_code=trust_remote_code
            )
            tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
        except (OSError, ValueError, SafetensorError) as err:  # missing, unreadable or truncated files
            raise ModelNotFoundError(f"cannot load model {name_or_path!r}: {err}") from err
        resolved = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # fp32 whatever dtype the checkpoint was saved in: training and the exact recheck assume it.
        return cls(Splade(mlm).float().to(resolved).eval(), tokenizer, resolved, BODY_DTYPES[body_precision])

    def host_batch(self, texts: list[str], max_length: int) -> tuple[dict[str, torch.Tensor], int]:
        """Padded tensors on the CPU (pinned when a GPU will read them), plus how many texts were cut at
        `max_length` tokens. Safe to call from a background thread."""
        backend = self._truncating_backend(max_length)
        if backend is not None:
            tensors, truncated = self._backend_batch(backend, texts)
        else:  # a slow (Python) tokenizer; it says nothing of overflow: count the untruncated lengths
            batch = self.tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            tensors = {name: batch[name] for name in ("input_ids", "attention_mask")}
            truncated = sum(len(ids) > max_length for ids in self.tokenizer(texts)["input_ids"])
        if self.device.type == "cuda":
            tensors = {name: tensor.pin_memory() for name, tensor in tensors.items()}
        return tensors, truncated

    def _truncating_backend(self, max_length: int):
        """A copy of the fast tokenizer's Rust tokenizer that truncates at `max_length` and does not pad: the
        ids `tokenizer(texts, truncation=True, max_length=...)` gives, without the wrapper's per-call set-up
        and Python lists, and without changing the shared tokenizer's settings under another thread."""
        if not self.tokenizer.is_fast:
            return None
        if max_length not in self._backends:
            backend = copy.deepcopy(self.tokenizer.backend_tokenizer)
            backend.enable_truncation(max_length, direction=self.tokenizer.truncation_side)
            backend.no_padding()
            self._backends[max_length] = backend
        return self._backends[max_length]

    def _backend_batch(self, backend, texts: list[str]) -> tuple[dict[str, torch.Tensor], int]:
        # encode_batch_fast skips the character offsets, which SPLADE never reads (tokenizers >= 0.21).
        encodings = getattr(backend, "encode_batch_fast", backend.encode_batch)(texts)
        lengths = [len(encoding) for encoding in encodings]
        attention_mask = torch.arange(max(lengths, default=0)) < torch.tensor(lengths)[:, None]
        if self.tokenizer.padding_side == "left":
            attention_mask = attention_mask.flip(1)
        input_ids = torch.full(attention_mask.shape, self.tokenizer.pad_token_id or 0)
        # fromiter skips the intermediate list (2-3 ms of ~65 less per 256 SciFact passages on 2 cores)
        input_ids[attention_mask] = torch.from_numpy(np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings),
                                                                 dtype=np.int64, count=sum(lengths)))
        # only a text cut at the limit overflows (building `overflowing` costs a few us per text)
        limit = backend.truncation["max_length"]
        truncated = sum(length == limit and bool(encoding.overflowing) for length, encoding in zip(lengths, encodings))
        return {"input_ids": input_ids, "attention_mask": attention_mask.long()}, truncated

    def tokenize(self, texts: list[str], max_length: int) -> tuple[dict[str, torch.Tensor], int]:
        """`host_batch` on the model's device."""
        batch, truncated = self.host_batch(texts, max_length)
        return {name: tensor.to(self.device, non_blocking=True) for name, tensor in batch.items()}, truncated

    def projection(self) -> ScreenedProjection:
        """The screened projection of the current decoder (rebuilt when training has changed it)."""
        decoder = self.model.head.decoder
        key = tuple((p.data_ptr(), p._version) for p in (decoder.weight, decoder.bias) if p is not None)
        if self._projection is None or self._projection[0] != key:
            self._projection = (key, ScreenedProjection(decoder.weight, decoder.bias))
        return self._projection[1]

    def weights(self, batch) -> torch.Tensor:
        """[batch, vocab] fp32 SPLADE weights of a tokenized batch, on the model's device."""
        return self.sparse_weights(batch).dense()

    @torch.inference_mode()
    def sparse_weights(self, batch) -> SparseWeights:
        """The positive fp32 SPLADE weights of a tokenized batch, on the model's device. A text that tokenized to
        nothing but the special tokens (blank, or zero-width and control characters alone) has none: it holds no
        term, and the model's reading of [CLS] [SEP] would match queries."""
        input_ids = batch["input_ids"].to(self.device, non_blocking=True)
        attention_mask = batch["attention_mask"].to(self.device, non_blocking=True)
        rows = input_ids.shape[0] if self.device.type == "cuda" else max(1, CPU_BODY_TOKENS // input_ids.shape[1])
        with torch.autocast(self.device.type, dtype=self.body_dtype, enabled=self.body_dtype != torch.float32):
            states = torch.cat([self.model.hidden_states(input_ids[first : first + rows], attention_mask[first : first + rows])
                                for first in range(0, input_ids.shape[0], rows)]).float()
        weights = self.projection().sparse(self.model.head.transform(states), attention_mask)
        lexical = attention_mask.sum(dim=1) > self.tokenizer.num_special_tokens_to_add()
        if lexical.all():
            return weights
        kept = lexical[weights.documents]
        return SparseWeights(weights.documents[kept], weights.terms[kept], weights.values[kept], weights.shape)

    def encode(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, int]:
        batch, truncated = self.host_batch(texts, max_length)
        return self.weights(batch).cpu(), truncated

"""Training settings: one dataclass, the single list the CLI turns into options (no torch import)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.errors import PipelineError

LOSSES = ("infonce", "marginmse", "kl")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AT_LEAST_ONE = ("steps", "batch_size", "grad_accum", "save_every", "max_query_length", "max_doc_length",
                "collapse_patience")
AT_LEAST_ZERO = ("negatives", "warmup_steps", "flops_warmup")


@dataclass
class TrainConfig:
    model: str
    data: str
    out: str
    negatives_index: str | None = None
    teacher: str | None = None
    loss: str = "infonce"
    rescale: str | None = None  # none | a factor k | auto
    scale_bias: bool = False
    inflate: float = 1.0  # multiply the head's projection first: imitates a large-norm backbone
    bias_shift: float = 0.0  # add to the head's bias first: imitates a backbone with dense vectors at init
    steps: int = 100
    batch_size: int = 16
    negatives: int = 1
    grad_accum: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_steps: int = 10
    max_grad_norm: float = 1.0
    lambda_q: float = 0.01
    lambda_d: float = 0.008
    flops_warmup: int = 50
    max_query_length: int = 64
    max_doc_length: int = 128
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    seed: int = 42
    save_every: int = 50
    limit: int | None = None
    collapse_min_terms: float = 1.0
    collapse_max_fraction: float = 0.5
    collapse_patience: int = 5

    def validate(self) -> None:
        from pipeline.splade.rescale import parse_rescale  # imports torch: only when training

        if self.loss not in LOSSES:
            raise PipelineError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.precision not in PRECISIONS:
            raise PipelineError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for names, least in ((AT_LEAST_ONE, 1), (AT_LEAST_ZERO, 0)):
            for name in names:
                if getattr(self, name) < least:
                    raise PipelineError(f"{name.replace('_', '-')} must be at least {least}, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise PipelineError(f"limit must be at least 1, got {self.limit}")
        if self.loss != "infonce" and self.negatives < 1:
            raise PipelineError(f"loss {self.loss} needs at least one negative per query")
        for name in ("lr", "weight_decay", "max_grad_norm", "lambda_q", "lambda_d"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0) or (name == "lr" and value == 0):
                raise PipelineError(f"{name.replace('_', '-')} must be a {'positive' if name == 'lr' else 'non-negative'} "
                                    f"finite number, got {value}")
        if self.loss != "infonce" and not self.teacher:
            raise PipelineError(f"loss {self.loss} needs --teacher (a 'qid docid score' file)")
        parse_rescale(self.rescale)
        if not (math.isfinite(self.inflate) and self.inflate > 0):
            raise PipelineError(f"inflate must be a positive factor, got {self.inflate}")
        if not math.isfinite(self.bias_shift):
            raise PipelineError(f"bias-shift must be a finite number, got {self.bias_shift}")

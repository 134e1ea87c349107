"""Training settings: one dataclass, the single list the CLI turns into options (no torch import)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.errors import PipelineError

LOSSES = ("infonce", "marginmse", "kl")


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
        if self.loss != "infonce" and not self.teacher:
            raise PipelineError(f"loss {self.loss} needs --teacher (a 'qid docid score' file)")
        parse_rescale(self.rescale)
        if not (math.isfinite(self.inflate) and self.inflate > 0):
            raise PipelineError(f"inflate must be a positive factor, got {self.inflate}")

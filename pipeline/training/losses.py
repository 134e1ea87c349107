"""SPLADE training objectives: ranking losses over [queries x documents] scores, and the FLOPS
regularizer with its quadratic warm-up (Formal et al., SPLADE v2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F


def scores(queries: torch.Tensor, docs: torch.Tensor) -> torch.Tensor:
    """Dot products [queries, documents] of sparse bag-of-words vectors (dense tensors here)."""
    return queries @ docs.T


def _world() -> tuple[int, int]:
    """(rank, world size) under torch.distributed with several processes, else (0, 1)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def info_nce(queries: torch.Tensor, docs: torch.Tensor, group: int) -> torch.Tensor:
    """Contrastive loss with in-batch and hard negatives. `docs` holds `group` documents per query,
    the positive first: query i's positive is row i * group; every other row is a negative for it.

    Under torch.distributed every process's documents are negatives too (a differentiable all-gather;
    processes hold equal shares), so the mean of the processes' losses is the single-process loss of
    the global batch. The gather's backward sums every process's gradient for a process's documents,
    and DDP's averaging divides by the number of processes: the update is the global batch's.
    """
    rank, world = _world()
    if world > 1:
        from torch.distributed.nn.functional import all_gather

        offset = rank * docs.shape[0]
        docs = torch.cat(all_gather(docs))
    else:
        offset = 0
    logits = scores(queries, docs)
    targets = offset + torch.arange(queries.shape[0], device=queries.device) * group
    return F.cross_entropy(logits, targets)


def margin_mse(queries: torch.Tensor, docs: torch.Tensor, teacher: torch.Tensor, group: int) -> torch.Tensor:
    """MarginMSE (Hofstätter et al.): student and teacher margins positive - negative, per hard negative."""
    student = (queries.unsqueeze(1) * docs.view(queries.shape[0], group, -1)).sum(-1)
    return F.mse_loss(student[:, :1] - student[:, 1:], teacher[:, :1] - teacher[:, 1:])


def kl_distillation(queries: torch.Tensor, docs: torch.Tensor, teacher: torch.Tensor, group: int) -> torch.Tensor:
    """KL(teacher || student) over each query's own documents (positive and hard negatives)."""
    student = (queries.unsqueeze(1) * docs.view(queries.shape[0], group, -1)).sum(-1)
    return F.kl_div(F.log_softmax(student, dim=1), F.log_softmax(teacher, dim=1), log_target=True, reduction="batchmean")


def flops(weights: torch.Tensor) -> torch.Tensor:
    """FLOPS regularizer: sum over terms of the squared mean weight over the (global) batch.

    Under torch.distributed the mean is over every process's rows (a differentiable all-reduce), so
    the penalty, and the sparsity it buys, does not depend on the number of processes.
    """
    total, rows = weights.sum(dim=0), weights.shape[0]
    _, world = _world()
    if world > 1:
        from torch.distributed.nn.functional import all_reduce

        # The all-reduce's backward sums the (identical) upstream gradients of every process, which
        # DDP's gradient averaging divides back: the update is that of the global-batch penalty.
        total = all_reduce(total)
        rows *= world
    return (total / rows).square().sum()


@dataclass(frozen=True)
class FlopsSchedule:
    """lambda(step) = lambda_max * min(1, (step / warmup)^2): sparsity is enforced gradually."""

    lambda_max: float
    warmup_steps: int

    def __call__(self, step: int) -> float:
        if self.warmup_steps <= 0:
            return self.lambda_max
        return self.lambda_max * min(1.0, (step / self.warmup_steps) ** 2)

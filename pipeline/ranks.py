"""Which share of a job this process does: a torchrun rank (torch.distributed, NCCL on GPUs, gloo on
CPUs), a scheduler's shard (`--shard i/N`, e.g. a Slurm array task), or the whole job."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from pipeline.errors import PipelineError

# An encode rank may wait at the final barrier for hours while slower ranks finish their parts.
BARRIER_TIMEOUT = timedelta(days=7)


class ShardError(PipelineError, ValueError):
    pass


@dataclass(frozen=True)
class Ranks:
    rank: int
    world: int
    torchrun: bool  # ranks started together, with barriers between them

    @property
    def device(self) -> torch.device:
        if torch.cuda.is_available():
            return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) if self.torchrun else 0}")
        return torch.device("cpu")

    def barrier(self) -> None:
        if self.torchrun:
            dist.barrier()

    def close(self) -> None:
        if self.torchrun and dist.is_initialized():
            dist.destroy_process_group()


def parse_shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    try:
        shard = int(index), int(count)
    except ValueError:
        shard = (-1, 0)
    if not 0 <= shard[0] < shard[1]:
        raise ShardError(f"--shard {text!r}: expected i/N with 0 <= i < N, e.g. 0/4")
    return shard


def join(shard: str | None = None) -> Ranks:
    """This process's place: torchrun's environment first, then `shard`, else the whole job.

    Under torchrun on a CPU, the ranks share the cores: each takes its share of torch's threads."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        if shard is not None:
            raise ShardError("--shard and torchrun both split the job: use one")
        if not dist.is_initialized():
            if torch.cuda.is_available():
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=BARRIER_TIMEOUT)
        if not torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
        return Ranks(dist.get_rank(), world, torchrun=True)
    if shard is not None:
        rank, count = parse_shard(shard)
        return Ranks(rank, count, torchrun=False)
    return Ranks(0, 1, torchrun=False)

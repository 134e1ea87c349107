"""Stage `train`: fine-tune a SPLADE model (any supported MLM) with the MLM-head rescaling fix.

The head is rescaled once, right after loading (`rescale`: none | k | auto), then trained with a
ranking loss (InfoNCE with in-batch and hard negatives, or MarginMSE / KL distillation from teacher
scores) plus FLOPS regularization of queries and documents under a quadratic warm-up. AdamW with
linear warm-up and decay, gradient clipping and accumulation, autocast where the device supports it,
seeded and deterministic on CPU. Checkpoints are Hugging Face folders with the trainer state, so a
killed run resumes on the same trajectory; a collapse (NaN/Inf loss, or active terms per document
going to ~0 or to most of the vocabulary) stops the run and keeps the last good checkpoint.
Multi-GPU: `torchrun --nproc_per_node N -m pipeline train ...` (DDP; in-batch negatives and FLOPS
on the global batch, so the loss does not depend on N).
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from pipeline.errors import PipelineError
from pipeline.files import atomic_path, write_json
from pipeline.progress import Progress
from pipeline.ranks import join
from pipeline.splade.model import SpladeEncoder
from pipeline.splade.rescale import prepare_head
from pipeline.training import losses
from pipeline.training.config import TrainConfig
from pipeline.training.examples import draw_batch, load_examples, read_teacher

log = logging.getLogger(__name__)

# Settings that may differ between a run and its resumption (they do not change the trajectory;
# `steps` does, through the learning-rate schedule).
RESUMABLE = {"save_every", "out"}
AUTO_SAMPLE = 64  # training documents on which `auto` measures the head
MONITORED = ("loss", "rank_loss", "flops_q", "flops_d", "active_q", "active_d")


class CollapseError(PipelineError, RuntimeError):
    pass


class ResumeError(PipelineError, ValueError):
    pass


def _autocast(precision: str, device: torch.device):
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp32":
        return nullcontext(), None
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    return torch.autocast(device.type, dtype=dtype), scaler


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _latest_checkpoint(out: Path) -> Path | None:
    checkpoints = sorted((out / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    return checkpoints[-1] if checkpoints else None


def _rng_states(world: int) -> list[dict]:
    """Every process's random state (CPU, and each GPU's), gathered for rank 0 to save: dropout draws
    from them, so a resumed run needs them all to stay on its trajectory."""
    state = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    if world == 1:
        return [state]
    states = [None] * world
    dist.all_gather_object(states, state)
    return states


def _restore_rng(states: list[dict], rank: int, world: int, checkpoint: Path) -> None:
    if len(states) != world:
        raise ResumeError(f"cannot resume from {checkpoint} with {world} processes: it was trained with {len(states)}")
    torch.set_rng_state(states[rank]["cpu"])
    if states[rank]["cuda"]:
        torch.cuda.set_rng_state_all(states[rank]["cuda"])


def _save_checkpoint(out: Path, step: int, encoder, optimizer, scheduler, scaler, rng: list[dict],
                     config: TrainConfig) -> Path:
    target = out / "checkpoints" / f"step-{step:07d}"
    with atomic_path(target, directory=True) as staging:
        encoder.model.save_pretrained(staging, encoder.tokenizer)
        torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler else None, "rng": rng}, staging / "trainer_state.pt")
        write_json(staging / "train_config.json", asdict(config))
    return target


def refuse_collapsed(model: str | Path, accept: bool = False) -> None:
    """A model folder whose training collapsed holds its last good checkpoint and `collapse.json`:
    refused unless `accept` (encode's --accept-collapsed), so that it is never evaluated unnoticed."""
    report = Path(model) / "collapse.json"
    if report.is_file():
        reason = json.loads(report.read_text())["reason"]
        if not accept:
            raise CollapseError(f"{model}: its training collapsed ({reason}); it holds the last good checkpoint. "
                                "Pass --accept-collapsed (Make: ACCEPT_COLLAPSED=1) to use it anyway")
        log.warning("%s: using a model whose training collapsed (%s)", model, reason)


def _check_resumable(checkpoint: Path, config: TrainConfig) -> None:
    saved = json.loads((checkpoint / "train_config.json").read_text())
    differ = {key: (saved.get(key), value) for key, value in asdict(config).items()
              if key not in RESUMABLE and saved.get(key) != value}
    if differ:
        detail = ", ".join(f"{key}: checkpoint {old!r} vs now {new!r}" for key, (old, new) in differ.items())
        raise ResumeError(f"cannot resume from {checkpoint}: it was trained with other settings ({detail})")


def _prepare_model(config: TrainConfig, device: torch.device, resume_from: Path | None,
                   sample: list[str]) -> tuple[SpladeEncoder, dict]:
    """Load the model; at init (not on resume) inflate and rescale its head as configured, `auto`
    measuring the head on `sample` (training documents)."""
    if resume_from is not None:
        encoder = SpladeEncoder.load(resume_from, device=str(device))
        return encoder, getattr(encoder.model.mlm.config, "splade_rescale", None) or {"k": 1.0}
    encoder = SpladeEncoder.load(config.model, device=str(device))
    record = prepare_head(encoder.model, encoder.tokenizer, inflate=config.inflate, bias_shift=config.bias_shift,
                          rescale=config.rescale, scale_bias=config.scale_bias, sample=sample)
    if "rule" in record:
        log.info("auto rescale: %s = %.4g (projection spread %.4g, target %.4g: %s)", record["rule"], record["k"],
                 record["projection_spread"], record["target_spread"], record["target_source"])
    return encoder, record


def auto_sample(examples: list) -> list[str]:
    """The training documents on which `auto` measures the head: the first examples' positives."""
    return [example.positives[0][1] for example in examples[:AUTO_SAMPLE]]


def _path(value: str | None) -> Path | None:
    return None if value is None else Path(value)


def train(config: TrainConfig, *, resume: bool = False, examples: list | None = None) -> dict:
    """Train as `config` says. `config.out` receives the final model (a Hugging Face folder),
    `checkpoints/step-N/`, `train_log.jsonl` (one line per step) and `train_run.json` (the settings
    with the rescaling record and the number of processes). `examples`: those of `config.data`, already
    loaded (a sweep trains many models on the same data; loading searches BM25 for every query)."""
    config.validate()
    ranks = join()
    rank, world = ranks.rank, ranks.world
    out = Path(config.out)
    device = ranks.device
    _seed_everything(config.seed)
    torch.use_deterministic_algorithms(device.type == "cpu", warn_only=True)

    checkpoint = _latest_checkpoint(out) if resume else None
    if resume and checkpoint is None:
        raise ResumeError(f"nothing to resume in {out / 'checkpoints'}")
    if resume and (out / "collapse.json").is_file():
        raise CollapseError(f"{out}: this run collapsed ({json.loads((out / 'collapse.json').read_text())['reason']}); "
                            "resuming would collapse again: delete it or use another output to train afresh")
    if checkpoint is not None:
        _check_resumable(checkpoint, config)
    if examples is None:
        examples = load_examples(config.data, negatives_index=_path(config.negatives_index), limit=config.limit)
    encoder, rescale_record = _prepare_model(config, device, checkpoint, auto_sample(examples))
    model = encoder.model.train()
    teacher = read_teacher(Path(config.teacher)) if config.teacher else None

    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(
        (step + 1) / max(1, config.warmup_steps),
        max(0.0, (config.steps - step) / max(1, config.steps - config.warmup_steps))))
    if world > 1 and config.batch_size % world:
        raise PipelineError(f"batch size {config.batch_size} does not split over {world} processes")
    autocast, scaler = _autocast(config.precision, device)
    start = 0
    if checkpoint is not None:
        state = torch.load(checkpoint / "trainer_state.pt", weights_only=True, map_location="cpu")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler and state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        _restore_rng(state["rng"], rank, world, checkpoint)
        start = state["step"]
    ddp = (torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
           if world > 1 else model)
    lambda_q = losses.FlopsSchedule(config.lambda_q, config.flops_warmup)
    lambda_d = losses.FlopsSchedule(config.lambda_d, config.flops_warmup)

    log_path = out / "train_log.jsonl"
    if rank == 0:
        if checkpoint is None:
            _clear_previous_run(out)
        out.mkdir(parents=True, exist_ok=True)
        kept = [line for line in (log_path.read_text().splitlines() if log_path.exists() and checkpoint else [])
                if json.loads(line)["step"] <= start]
        log_path.write_text("".join(line + "\n" for line in kept))
        write_json(out / "train_run.json", {**asdict(config), "rescale_record": rescale_record, "world_size": world})
    collapse_grace = max(5, config.steps // 10)
    strikes, last_good, history = 0, checkpoint, []
    started = time.perf_counter()
    progress = Progress(range(start, config.steps), initial=start, total=config.steps, desc="train", disable=rank != 0)
    for step in progress:
        optimizer.zero_grad(set_to_none=True)
        record = {"step": step + 1, "loss": 0.0, "rank_loss": 0.0, "flops_q": 0.0, "flops_d": 0.0,
                  "active_q": 0.0, "active_d": 0.0}
        for micro in range(config.grad_accum):
            batch = draw_batch(examples, step * config.grad_accum + micro, config.batch_size, config.negatives,
                               config.seed, teacher, shard=(rank, world))
            q_in, _ = encoder.tokenize(batch.queries, config.max_query_length)
            d_in, _ = encoder.tokenize(batch.docs, config.max_doc_length)
            with autocast:
                q = ddp(q_in["input_ids"], q_in["attention_mask"]).float()
                d = ddp(d_in["input_ids"], d_in["attention_mask"]).float()
            if config.loss == "infonce":
                rank_loss = losses.info_nce(q, d, batch.group)
            else:
                scores = torch.tensor(batch.teacher, device=device)
                objective = losses.margin_mse if config.loss == "marginmse" else losses.kl_distillation
                rank_loss = objective(q, d, scores, batch.group)
            flops_q, flops_d = losses.flops(q), losses.flops(d)
            loss = rank_loss + lambda_q(step) * flops_q + lambda_d(step) * flops_d
            (scaler.scale(loss) if scaler else loss).div(config.grad_accum).backward()
            for key, value in (("loss", loss), ("rank_loss", rank_loss), ("flops_q", flops_q), ("flops_d", flops_d),
                               ("active_q", (q > 0).sum(1).float().mean()), ("active_d", (d > 0).sum(1).float().mean())):
                record[key] += value.item() / config.grad_accum
        if world > 1:  # every process decides on the same, global, figures
            values = torch.tensor([record[key] for key in MONITORED], dtype=torch.float64, device=device)
            dist.all_reduce(values)
            record.update(zip(MONITORED, (values / world).tolist()))
        if not math.isfinite(record["loss"]):
            _stop(out, rank, last_good, f"loss is {record['loss']} at step {step + 1}")
        if scaler:
            scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm).item()
        stepped = True
        if scaler:
            scale = scaler.get_scale()
            scaler.step(optimizer)
            scaler.update()
            stepped = scaler.get_scale() >= scale  # update() lowers the scale exactly when inf/NaN gradients skipped the step
        else:
            optimizer.step()
        if stepped:  # a skipped step leaves the learning rate where it was, as Hugging Face's Trainer does
            scheduler.step()
        record.update(lr=scheduler.get_last_lr()[0], grad_norm=grad_norm, lambda_q=lambda_q(step),
                      lambda_d=lambda_d(step), seconds=time.perf_counter() - started)
        history.append(record)
        if rank == 0:
            with open(log_path, "a") as stream:
                stream.write(json.dumps(record) + "\n")
            progress.set_postfix(loss=f"{record['loss']:.3f}", flops_d=f"{record['flops_d']:.2f}",
                                 active_d=f"{record['active_d']:.0f}")
        vocab = model.vocab_size
        degenerate = record["active_d"] < config.collapse_min_terms or record["active_d"] > config.collapse_max_fraction * vocab
        strikes = strikes + 1 if degenerate and step + 1 > collapse_grace else 0
        if strikes >= config.collapse_patience:
            _stop(out, rank, last_good, _degenerate(record, vocab, strikes, config))
        if ((step + 1) % config.save_every == 0 or step + 1 == config.steps) and strikes == 0:
            rng = _rng_states(world)
            if rank == 0:
                last_good = _save_checkpoint(out, step + 1, encoder, optimizer, scheduler, scaler, rng, config)
            if world > 1:
                dist.barrier()
    progress.close()
    if strikes:  # it ended degenerate, too few steps to stop it early: the final model would be an older checkpoint
        _stop(out, rank, last_good, _degenerate(record, vocab, strikes, config) + ", when the run ended")
    if rank == 0:
        _publish(out, last_good)
    ranks.close()
    steps_done = config.steps - start
    seconds = time.perf_counter() - started
    return {"steps": steps_done, "seconds": seconds, "steps_per_second": steps_done / seconds if seconds else None,
            "rescale": rescale_record, "history": history, "model": str(out)}


def _degenerate(record: dict, vocab: int, strikes: int, config: TrainConfig) -> str:
    return (f"active terms per document at {record['active_d']:.1f} of {vocab} for {strikes} steps (step "
            f"{record['step']}); allowed {config.collapse_min_terms} to {config.collapse_max_fraction:.0%} of the vocabulary")


def _publish(out: Path, checkpoint: Path | None) -> None:
    """Copy a checkpoint's Hugging Face files into `out` itself: what `make beir-eval MODEL=out` loads.
    The weights go last: Make takes `model.safetensors` as the sign of a finished run."""
    if checkpoint is None:
        return
    files = sorted((item for item in checkpoint.iterdir() if item.is_file() and item.name != "trainer_state.pt"),
                   key=lambda item: item.name == "model.safetensors")
    for item in files:
        with atomic_path(out / item.name) as staging:
            shutil.copy2(item, staging)


def _clear_previous_run(out: Path) -> None:
    """A fresh (not resumed) run starts from an empty output: no earlier checkpoint or model survives."""
    if (out / "checkpoints").exists():
        log.warning("%s: removing the checkpoints of an earlier run (use --resume to continue it)", out)
        shutil.rmtree(out / "checkpoints")
    for name in ("collapse.json", "model.safetensors", "train_log.jsonl"):
        (out / name).unlink(missing_ok=True)


def _stop(out: Path, rank: int, last_good: Path | None, reason: str) -> None:
    kept = f"kept {last_good}" if last_good else "no checkpoint was saved before it"
    if rank == 0:
        _publish(out, last_good)
        write_json(out / "collapse.json", {"reason": reason, "last_good_checkpoint": str(last_good) if last_good else None})
    raise CollapseError(f"training collapsed: {reason}; {kept}")



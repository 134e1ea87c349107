"""Training on CPU with the real default model: losses, schedule, resume, collapse, DDP (gloo)."""

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pipeline.data import DataError
from pipeline.splade.model import SpladeEncoder
from pipeline.train import CollapseError, ResumeError, train
from pipeline.training.config import TrainConfig
from pipeline.training import losses
from pipeline.training.examples import draw_batch, from_qrels, from_tsv, load_examples, read_teacher

from conftest import QRELS, QUERIES, ROOT, write_beir_folder


def config(model_path, triples, out, **overrides) -> TrainConfig:
    settings = dict(model=model_path, data=str(triples), out=str(out), steps=6, batch_size=4, negatives=1, lr=1e-4,
                    warmup_steps=2, flops_warmup=4, max_query_length=16, max_doc_length=32, save_every=3)
    return TrainConfig(**{**settings, **overrides})


def log_rows(out):
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_flops_warmup_is_quadratic():
    schedule = losses.FlopsSchedule(lambda_max=0.01, warmup_steps=10)
    assert [schedule(step) for step in (0, 5, 10, 20)] == [0.0, pytest.approx(0.0025), 0.01, 0.01]
    assert losses.FlopsSchedule(0.5, 0)(0) == 0.5


def test_losses_on_known_values():
    queries = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    docs = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 4.0], [1.0, 0.0]])  # positive first, group of 2
    scores = queries @ docs.T
    expected = (torch.logsumexp(scores[0], 0) - scores[0, 0] + torch.logsumexp(scores[1], 0) - scores[1, 2]) / 2
    torch.testing.assert_close(losses.info_nce(queries, docs, 2), expected)
    own = torch.tensor([[3.0, 0.0], [8.0, 0.0]])  # each query's scores on its own group
    torch.testing.assert_close(losses.margin_mse(queries, docs, own, 2), torch.tensor(0.0))
    torch.testing.assert_close(losses.kl_distillation(queries, docs, own, 2), torch.tensor(0.0), atol=1e-6, rtol=0)
    weights = torch.tensor([[1.0, 0.0, 2.0], [3.0, 0.0, 0.0]])
    torch.testing.assert_close(losses.flops(weights), torch.tensor(2.0**2 + 1.0**2))


def test_a_few_steps_lower_the_loss(model_path, triples, tmp_path):
    def loss_of(model_dir):
        encoder = SpladeEncoder.load(model_dir, device="cpu")
        batch = draw_batch(from_tsv(triples), 0, 5, 1, seed=0)
        with torch.no_grad():
            q, _ = encoder.tokenize(batch.queries, 16)
            d, _ = encoder.tokenize(batch.docs, 32)
            return losses.info_nce(encoder.model(q["input_ids"], q["attention_mask"]),
                                   encoder.model(d["input_ids"], d["attention_mask"]), batch.group).item()

    before = loss_of(model_path)
    train(config(model_path, triples, tmp_path / "run", steps=8, lr=3e-4, lambda_q=0.0, lambda_d=0.0))
    assert loss_of(tmp_path / "run") < before


def make_train(out, triples, *args, **popen):
    """`make train` as a user runs it, on the triples file (no BM25 index needed); its stderr goes to
    `<out>.stderr` (a pipe could fill up and block it). One thread: in the full suite two uninterrupted
    2-thread runs of this command once differed in the 7th digit from step 2 on (the machine busy with
    the suite's JVM), so bitwise equality is asked of a run whose arithmetic cannot depend on the load."""
    command = ["make", "--no-print-directory", "-C", str(ROOT), "train", f"OUT={out}", f"TRAIN_DATA={triples}",
               "TRAIN_ARGS=" + " ".join(args)]
    with open(f"{out}.stderr", "w") as stderr:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr,
                                env={**os.environ, "OMP_NUM_THREADS": "1"}, **popen)


def stderr_of(out) -> str:
    return open(f"{out}.stderr").read()


TRAIN_ARGS = ("--steps 9 --save-every 3 --batch-size 4 --lr 1e-4 --warmup-steps 2 --flops-warmup 4 "
              "--max-query-length 16 --max-doc-length 32").split()


def test_make_train_killed_at_a_random_step_resumes_to_the_same_weights(triples, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert make_train(straight, triples, *TRAIN_ARGS).wait() == 0
    kill_after = random.randrange(4, 9)  # steps logged when the kill lands (checkpoints at 3 and 6)
    process = make_train(killed, triples, *TRAIN_ARGS, start_new_session=True)
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if (killed / "train_log.jsonl").exists() and len(log_rows(killed)) >= kill_after:
            os.killpg(process.pid, signal.SIGKILL)  # make and the training process under it
            break
        time.sleep(0.02)
    process.wait()
    assert len(log_rows(killed)) < 9, f"the run finished before it could be killed (after step {kill_after})"
    assert not (killed / "model.safetensors").exists()
    again = make_train(killed, triples, *TRAIN_ARGS)
    assert again.wait() == 0, stderr_of(killed)[-3000:]
    assert log_rows(killed) == log_rows(straight), f"killed after step {kill_after}"
    a = SpladeEncoder.load(straight, device="cpu").model.state_dict()
    b = SpladeEncoder.load(killed, device="cpu").model.state_dict()
    assert all(torch.equal(a[key], b[key]) for key in a), f"killed after step {kill_after}"


def test_resume_restores_the_grad_scaler_and_random_states(model_path, triples, tmp_path):
    """fp16 autocast (CPU) with a GradScaler: resuming from the step-2 checkpoint ends on the same weights."""
    settings = dict(steps=4, save_every=2, precision="fp16")
    train(config(model_path, triples, tmp_path / "straight", **settings))
    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "step-0000004")
    state = torch.load(tmp_path / "resumed" / "checkpoints" / "step-0000002" / "trainer_state.pt", weights_only=True)
    assert state["scaler"]["scale"] > 0 and len(state["rng"]) == 1
    train(config(model_path, triples, tmp_path / "resumed", **settings), resume=True)
    a = SpladeEncoder.load(tmp_path / "straight", device="cpu").model.state_dict()
    b = SpladeEncoder.load(tmp_path / "resumed", device="cpu").model.state_dict()
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_a_step_the_grad_scaler_skips_leaves_the_learning_rate_where_it_was(model_path, triples, tmp_path, recwarn):
    """fp16's first step overflows at the GradScaler's initial scale (2^16): the optimizer skips it, and so does the
    schedule (torch warns when a schedule steps ahead of its optimizer)."""
    train(config(model_path, triples, tmp_path / "run", steps=4, precision="fp16"))
    assert not [w for w in recwarn if "lr_scheduler.step()" in str(w.message)]
    schedule = [1e-4 * factor for factor in (0.5, 1.0, 1.0, 0.5, 0.0)]  # after k optimizer steps: warm-up 2, then linear
    rates = [row["lr"] for row in log_rows(tmp_path / "run")]
    assert rates[0] == pytest.approx(schedule[0])  # the skipped first step left it
    taken = {0}  # each step takes the optimizer's step or skips it: the optimizer steps each logged rate may follow
    for rate in rates:
        taken = {k for k in taken | {k + 1 for k in taken} if k < len(schedule) and rate == pytest.approx(schedule[k])}
        assert taken, rates


def test_resume_with_other_settings_is_refused(model_path, triples, tmp_path):
    with pytest.raises(ResumeError, match="nothing to resume"):
        train(config(model_path, triples, tmp_path / "run", steps=3), resume=True)
    train(config(model_path, triples, tmp_path / "run", steps=3))
    with pytest.raises(ResumeError, match=r"other settings \(lr: checkpoint 0.0001 vs now 0.001\)"):
        train(config(model_path, triples, tmp_path / "run", steps=3, lr=1e-3), resume=True)


def test_rescaled_training_saves_a_rescaled_untied_head(model_path, triples, tmp_path):
    train(config(model_path, triples, tmp_path / "run", steps=2, save_every=2, rescale="auto", inflate=16.0))
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["tie_word_embeddings"] is False
    record = saved["splade_rescale"]
    # auto: the inflated head's spread over the theory's target, 16 times SPLADE-tiny's ratio (0.56 to 0.64)
    assert record["k"] == record["ratio"] and 16 * 0.4 < record["k"] < 16 * 0.9 and saved["splade_inflated"] == 16.0
    assert record["target_spread"] == pytest.approx(math.sqrt(2 * math.log(saved["vocab_size"])))


def test_collapse_stops_and_keeps_the_last_good_checkpoint(model_path, triples, tmp_path):
    out = tmp_path / "run"
    # Any active term is "most of the vocabulary" here: the run must stop once the grace period ends.
    settings = config(model_path, triples, out, steps=10, save_every=5, collapse_max_fraction=1e-6, collapse_patience=2)
    with pytest.raises(CollapseError, match="active terms per document .* for 2 steps"):
        train(settings)
    report = json.loads((out / "collapse.json").read_text())
    assert report["last_good_checkpoint"].endswith("step-0000005")
    assert (out / "model.safetensors").is_file() and len(log_rows(out)) == 7
    with pytest.raises(CollapseError, match="this run collapsed .*resuming would collapse again"):
        train(settings, resume=True)


def test_a_run_that_ends_degenerate_is_a_collapse_not_an_older_checkpoint_published_as_final(model_path, triples, tmp_path):
    out = tmp_path / "run"
    # steps 1-5 are the grace period; at step 6 any active term is "most of the vocabulary": one strike of the 5
    # that stop a run early, and not saved. The final model would silently be step 3's.
    settings = config(model_path, triples, out, steps=6, collapse_max_fraction=1e-6)
    with pytest.raises(CollapseError, match=r"for 1 steps \(step 6\).*, when the run ended; kept .*step-0000003"):
        train(settings)
    report = json.loads((out / "collapse.json").read_text())
    assert report["last_good_checkpoint"].endswith("step-0000003") and (out / "model.safetensors").is_file()
    assert len(log_rows(out)) == 6


def test_make_train_fails_on_a_collapsed_run_every_time(triples, tmp_path):
    out = tmp_path / "run"
    args = [*TRAIN_ARGS, "--collapse-max-fraction", "1e-6", "--collapse-patience", "2"]
    first = make_train(out, triples, *args)
    assert first.wait() != 0 and "error: training collapsed" in stderr_of(out)
    assert (out / "model.safetensors").is_file()  # the last good checkpoint, kept for inspection
    second = make_train(out, triples, *args)
    assert second.wait() != 0 and f"error: {out}: its training collapsed" in stderr_of(out)


def test_nan_loss_stops_the_run(model_path, triples, tmp_path):
    with pytest.raises(CollapseError, match="loss is nan"):
        train(config(model_path, triples, tmp_path / "run", inflate=1e38))


def test_distillation_losses_move_the_student_towards_the_teacher(model_path, triples, tmp_path):
    """The teacher ranks each triple's negative above its positive: training on it must bring the
    student's margins closer to the teacher's, which the MarginMSE and KL losses measure."""
    teacher = tmp_path / "teacher.tsv"
    teacher.write_text("".join(f"{n} {n}+ 1.0\n{n} {n}- 9.0\n" for n in range(1, 11)))
    scores = read_teacher(teacher)
    examples = from_tsv(triples)
    batch = draw_batch(examples, 0, 10, 1, seed=0, teacher=scores)
    for loss in ("marginmse", "kl"):
        objective = losses.margin_mse if loss == "marginmse" else losses.kl_distillation

        def loss_of(model_dir):
            encoder = SpladeEncoder.load(model_dir, device="cpu")
            with torch.no_grad():
                q, _ = encoder.tokenize(batch.queries, 16)
                d, _ = encoder.tokenize(batch.docs, 32)
                return objective(encoder.model(q["input_ids"], q["attention_mask"]),
                                 encoder.model(d["input_ids"], d["attention_mask"]), torch.tensor(batch.teacher), 2).item()

        before = loss_of(model_path)
        train(config(model_path, triples, tmp_path / loss, steps=8, lr=3e-4, lambda_q=0.0, lambda_d=0.0, loss=loss,
                     teacher=str(teacher)))
        assert loss_of(tmp_path / loss) < 0.9 * before, loss
    with pytest.raises(Exception, match="needs --teacher"):
        train(config(model_path, triples, tmp_path / "x", loss="kl"))


def test_distillation_losses_on_known_values():
    queries = torch.tensor([[1.0, 0.0]])
    docs = torch.tensor([[2.0, 0.0], [1.0, 0.0]])  # student: positive 2, negative 1
    teacher = torch.tensor([[5.0, 1.0]])
    torch.testing.assert_close(losses.margin_mse(queries, docs, teacher, 2), torch.tensor((1.0 - 4.0) ** 2))
    student, target = torch.log_softmax(torch.tensor([2.0, 1.0]), 0), torch.log_softmax(torch.tensor([5.0, 1.0]), 0)
    torch.testing.assert_close(losses.kl_distillation(queries, docs, teacher, 2), (target.exp() * (target - student)).sum())


def test_limit_takes_the_first_examples_of_a_triples_file(triples):
    assert len(load_examples(str(triples))) > 2
    assert load_examples(str(triples), limit=2) == load_examples(str(triples))[:2]


def test_malformed_triples_name_file_and_line(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("query\tpositive\tnegative\nonly\ttwo\n")
    with pytest.raises(DataError, match=r"bad.tsv:2: expected 'query<TAB>positive<TAB>negative', got 2 fields"):
        from_tsv(path)


def test_queries_without_positive_are_left_out(tmp_path, caplog):
    from pipeline.index import index

    folder = write_beir_folder(tmp_path / "beir", queries={**QUERIES, "q9": "an unjudged query about deserts"})
    index(tmp_path / "bm25", corpus=str(folder))
    examples = from_qrels(str(folder), tmp_path / "bm25", depth=5)
    assert sorted(e.qid for e in examples) == sorted(QUERIES)
    assert "1 of 6 queries have no positive document" in caplog.text
    assert all(neg[0] not in QRELS[e.qid] for e in examples for neg in e.negatives)
    assert "queries have no unjudged BM25 hit" in caplog.text  # q1's only BM25 hits are its positives


def _flops_worker(rank, world, init_file, weights, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    local = weights[rank::world].clone().requires_grad_()
    value = losses.flops(local)
    value.backward()
    results[rank] = (value.item(), local.grad.clone())
    dist.destroy_process_group()


def test_flops_is_computed_on_the_global_batch_under_ddp():
    torch.manual_seed(0)
    weights = torch.rand(8, 50) * (torch.rand(8, 50) > 0.7)
    single = weights.clone().requires_grad_()
    expected = losses.flops(single)
    expected.backward()
    with tempfile.TemporaryDirectory() as folder, mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_flops_worker, args=(2, os.path.join(folder, "init"), weights, results), nprocs=2)
        results = dict(results)
    for rank in range(2):
        value, grad = results[rank]
        assert value == pytest.approx(expected.item(), rel=1e-6)
        # The all-reduce's backward sums both processes' upstream gradients: each process holds
        # world_size x its rows' share, and DDP's averaging over the 2 processes gives the exact gradient.
        torch.testing.assert_close(grad, 2 * single.grad[rank::2], rtol=1e-5, atol=1e-8)


def test_torchrun_trains_with_two_processes(model_path, triples, tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "pipeline", "train", "--model", model_path, "--data", str(triples), "--out", str(out),
               "--steps", "2", "--save-every", "2", "--batch-size", "4", "--max-doc-length", "32", "--max-query-length", "16"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "train_run.json").read_text())["world_size"] == 2
    assert len(log_rows(out)) == 2 and (out / "model.safetensors").is_file()


def _info_nce_worker(rank, world, init_file, queries, docs, group, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    local_queries = queries[rank::world].clone().requires_grad_()
    local_docs = docs.view(queries.shape[0], group, -1)[rank::world].reshape(-1, docs.shape[1]).clone().requires_grad_()
    value = losses.info_nce(local_queries, local_docs, group)
    value.backward()
    results[rank] = (value.item(), local_queries.grad.clone(), local_docs.grad.clone())
    dist.destroy_process_group()


def test_in_batch_negatives_span_the_global_batch_under_ddp():
    """Each process holds every other query of the global batch (as draw_batch shards it); the mean of
    the processes' losses is the single-process loss, and their gradients, averaged as DDP does, the
    single-process gradients."""
    torch.manual_seed(0)
    group, world = 2, 2
    queries, docs = torch.rand(8, 30), torch.rand(16, 30)
    single_q, single_d = queries.clone().requires_grad_(), docs.clone().requires_grad_()
    expected = losses.info_nce(single_q, single_d, group)
    expected.backward()
    with tempfile.TemporaryDirectory() as folder, mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_info_nce_worker, args=(world, os.path.join(folder, "init"), queries, docs, group, results), nprocs=world)
        results = dict(results)
    assert sum(results[rank][0] for rank in range(world)) / world == pytest.approx(expected.item(), rel=1e-6)
    doc_grads = single_d.grad.view(8, group, -1)
    for rank in range(world):
        _, q_grad, d_grad = results[rank]
        # Each process's gradient is world_size x its rows' share; DDP divides by world_size.
        torch.testing.assert_close(q_grad / world, single_q.grad[rank::world], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(d_grad / world, doc_grads[rank::world].reshape(-1, 30), rtol=1e-5, atol=1e-7)


def _model_loss_worker(rank, world, init_file, model_path, triples, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    results[rank] = _batch_loss(model_path, triples, (rank, world))
    dist.destroy_process_group()


def _batch_loss(model_path, triples, shard):
    """The training loss (InfoNCE + FLOPS) of global batch 0 on this process's shard, and the decoder's gradient."""
    torch.manual_seed(0)
    encoder = SpladeEncoder.load(model_path, device="cpu")  # eval mode: no dropout, so runs compare exactly
    batch = draw_batch(from_tsv(triples), 0, 8, 1, seed=0, shard=shard)
    q_in, _ = encoder.tokenize(batch.queries, 16)
    d_in, _ = encoder.tokenize(batch.docs, 32)
    q = encoder.model(q_in["input_ids"], q_in["attention_mask"])
    d = encoder.model(d_in["input_ids"], d_in["attention_mask"])
    loss = losses.info_nce(q, d, batch.group) + 0.01 * losses.flops(q) + 0.008 * losses.flops(d)
    loss.backward()
    return loss.item(), encoder.model.head.decoder.weight.grad.clone()


def test_ddp_loss_of_a_batch_equals_the_single_process_loss(model_path, triples):
    """The real model and batches: 2 gloo processes, each on half of the global batch, against one."""
    single_loss, single_grad = _batch_loss(model_path, str(triples), (0, 1))
    with tempfile.TemporaryDirectory() as folder, mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_model_loss_worker, args=(2, os.path.join(folder, "init"), model_path, str(triples), results), nprocs=2)
        results = dict(results)
    ddp_loss = (results[0][0] + results[1][0]) / 2
    print(f"single-process loss {single_loss:.8f}, 2-process DDP loss {ddp_loss:.8f}")
    assert ddp_loss == pytest.approx(single_loss, rel=1e-5)
    torch.testing.assert_close((results[0][1] + results[1][1]) / 2, single_grad, rtol=1e-4, atol=1e-6)

"""Training on CPU with the real default model: losses, schedule, resume, collapse, DDP (gloo)."""

import json
import os
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
from pipeline.training.examples import draw_batch, from_qrels, from_tsv

from conftest import DOCS, QRELS, QUERIES, ROOT, write_beir_folder

TRIPLES = [(QUERIES[q], " ".join(DOCS[next(iter(judged))]), " ".join(DOCS[negative]))
           for (q, judged), negative in zip(QRELS.items(), ["d11", "d03", "d12", "d06", "d05"])]


@pytest.fixture
def triples(tmp_path):
    path = tmp_path / "triples.tsv"
    path.write_text("".join("\t".join(row) + "\n" for row in TRIPLES * 2))
    return path


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


def test_a_killed_run_resumes_on_the_same_trajectory(model_path, triples, tmp_path):
    settings = config(model_path, triples, tmp_path / "straight", steps=9)
    train(settings)
    killed = tmp_path / "killed"
    with pytest.raises(ResumeError, match="nothing to resume"):
        train(config(model_path, triples, killed, steps=9), resume=True)
    command = [sys.executable, "-m", "pipeline", "train", "--model", model_path, "--data", str(triples), "--out", str(killed),
               *(f"--{key.replace('_', '-')}={value}" for key, value in vars(settings).items()
                 if key not in ("model", "data", "out") and value is not None and not isinstance(value, bool))]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (killed / "checkpoints" / "step-0000003").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert len(log_rows(killed)) < 9, "the run finished before it could be killed"
    train(config(model_path, triples, killed, steps=9), resume=True)
    assert log_rows(killed) == log_rows(tmp_path / "straight")
    a = SpladeEncoder.load(tmp_path / "straight", device="cpu").model.state_dict()
    b = SpladeEncoder.load(killed, device="cpu").model.state_dict()
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_resume_with_other_settings_is_refused(model_path, triples, tmp_path):
    train(config(model_path, triples, tmp_path / "run", steps=3))
    with pytest.raises(ResumeError, match=r"other settings \(lr: checkpoint 0.0001 vs now 0.001\)"):
        train(config(model_path, triples, tmp_path / "run", steps=3, lr=1e-3), resume=True)


def test_rescaled_training_saves_a_rescaled_untied_head(model_path, triples, tmp_path):
    train(config(model_path, triples, tmp_path / "run", steps=2, save_every=2, rescale="auto", inflate=16.0))
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["tie_word_embeddings"] is False
    assert saved["splade_rescale"]["k"] == pytest.approx(16, rel=0.05) and saved["splade_inflated"] == 16.0


def test_collapse_stops_and_keeps_the_last_good_checkpoint(model_path, triples, tmp_path):
    out = tmp_path / "run"
    # Any active term is "most of the vocabulary" here: the run must stop once the grace period ends.
    settings = config(model_path, triples, out, steps=10, save_every=5, collapse_max_fraction=1e-6, collapse_patience=2)
    with pytest.raises(CollapseError, match="active terms per document .* for 2 steps"):
        train(settings)
    report = json.loads((out / "collapse.json").read_text())
    assert report["last_good_checkpoint"].endswith("step-0000005")
    assert (out / "model.safetensors").is_file() and len(log_rows(out)) == 7


def test_nan_loss_stops_the_run(model_path, triples, tmp_path):
    with pytest.raises(CollapseError, match="loss is nan"):
        train(config(model_path, triples, tmp_path / "run", inflate=1e38))


def test_distillation_losses_train(model_path, triples, tmp_path):
    teacher = tmp_path / "teacher.tsv"
    teacher.write_text("".join(f"{n} {n}+ 5.0\n{n} {n}- 1.0\n" for n in range(1, 11)))
    for loss in ("marginmse", "kl"):
        result = train(config(model_path, triples, tmp_path / loss, steps=2, save_every=2, loss=loss, teacher=str(teacher)))
        assert result["steps"] == 2
    with pytest.raises(Exception, match="needs --teacher"):
        train(config(model_path, triples, tmp_path / "x", loss="kl"))


def test_malformed_triples_name_file_and_line(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("query\tpositive\tnegative\nonly\ttwo\n")
    with pytest.raises(DataError, match=r"bad.tsv:2: expected 'query<TAB>positive<TAB>negative', got 2 fields"):
        from_tsv(path)


def test_queries_without_positive_are_left_out(tmp_path, caplog):
    from pipeline.index import index

    folder = write_beir_folder(tmp_path / "beir", queries={**QUERIES, "q9": "an unjudged query about deserts"})
    index(tmp_path / "bm25", dataset=str(folder))
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
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
               "-m", "pipeline", "train", "--model", model_path, "--data", str(triples), "--out", str(out),
               "--steps", "2", "--save-every", "2", "--batch-size", "4", "--max-doc-length", "32", "--max-query-length", "16"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "train_run.json").read_text())["world_size"] == 2
    assert len(log_rows(out)) == 2 and (out / "model.safetensors").is_file()

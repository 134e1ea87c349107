"""Stage `bench`: encoding speed, memory and exactness on this machine, ours beside the peers in one run
(speed goals live here, not in timed tests). Writes `runs/bench.json` and `runs/bench.md`.

- encoders: ours, sentence-transformers, Pyserini and the plain fp32 reference on the same texts
  (`pipeline.peer_encoders`), each in its own process, `rounds` times in turn: the median docs/s (a
  shared machine's speed drifts by 10-30 % within minutes: one run each can put a slow spell on one
  encoder alone), the largest peak RSS, and the ratios of the medians;
- exactness: our weights against the reference's (differing quantized entries, max float difference);
- roofline: this machine's GEMM throughput in fp32 / bf16 / int8 (`pipeline.roofline`), and our
  screened projection's rate as a fraction of the best;
- exact limit: the docs/s this machine allows with output equal to the fp32 model's (`exact_limit`),
  and ours as a fraction of it;
- the encode stage as a user runs it (`python -m pipeline encode`, model load included) on the dataset
  and on the dataset replicated `replicas` times: wall time and peak RSS (memory must stay flat);
- training: forward + backward steps/s of a SPLADE batch;
- GPU (when CUDA is available, `pipeline.gpu_bench`): ours against sentence-transformers on SPLADE-tiny
  and a BERT-base-size SPLADE (the FLOPs of SPLADE-v3), passages of at most 128 tokens.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils import flop_counter

from pipeline import data, gpu_bench, peer_encoders, roofline
from pipeline.files import atomic_path, write_json
from pipeline.splade import screen_kernels
from pipeline.splade.model import SpladeEncoder
from pipeline.training import losses

ROUNDS = 3
# torch's FLOP counter knows the GPU's attention kernels, not the CPU's
CPU_ATTENTION_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
                       lambda query, key, value, *rest, out_shape=None, **options: flop_counter.sdpa_flop_count(query, key, value)}


def projection_rate(model: str, texts: list[str], *, max_length: int, batch_size: int) -> dict:
    """GFLOP/s of our projection, states computed beforehand: the dense projection's FLOPs over the real
    tokens (2 x tokens x hidden x vocabulary) per second spent in the whole of it (screen, bound and
    exact fp32 recheck, as encode runs it) and in its screen alone (the low-precision product and max-pool),
    on the length-sorted batches encode makes (so with the padding encode computes, no more). Also the FLOPs
    of the encoder body (transformer layers and head transform, with that padding) that gave the states."""
    from pipeline.encode import length_sorted_batches
    from pipeline.splade.screened_projection import _padding_as_first_token

    encoder = SpladeEncoder.load(model, device="cpu")
    projection, flops, body_flops, seconds = encoder.projection(), 0, 0, {"whole": 0.0, "screen": 0.0}
    documents = [data.Document(str(at), text) for at, text in enumerate(texts)]
    with torch.inference_mode():
        for documents_batch in length_sorted_batches(documents, batch_size):
            batch, _ = encoder.tokenize([document.text for document in documents_batch], max_length)
            mask = batch["attention_mask"]
            with flop_counter.FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as body:  # entering clears it
                states = encoder.model.head.transform(encoder.model.hidden_states(batch["input_ids"], mask))
            body_flops += body.get_total_flops()
            padded = _padding_as_first_token(states, mask.bool())
            for part, run in (("whole", lambda: projection.sparse(states, mask)), ("screen", lambda: projection.screen(padded))):
                run()  # warm-up at this shape
                started = time.perf_counter()
                run()
                seconds[part] += time.perf_counter() - started
            flops += 2 * int(mask.sum()) * states.shape[-1] * projection.vocab_size
    return {"screening_dtype": str(projection.dtype).removeprefix("torch."),
            "screen_kernel": screen_kernels.fused_screen() if projection.fused is not None else None,
            "projection_gflops": flops / seconds["whole"] / 1e9, "screen_gflops": flops / seconds["screen"] / 1e9,
            "projection_flops": flops, "body_flops": body_flops}


def exact_limit(roof: dict, projection: dict, docs: int) -> dict:
    """The docs/s this machine allows with output equal to the fp32 model's: the body's FLOPs at its best fp32
    GEMM rate (exact output needs fp32 layers) plus the projection's at its best GEMM rate in any precision (a
    screen may run in any, its recheck is a few percent more), and nothing else taking time."""
    fp32 = max(roof["gflops"]["fp32"].values())
    seconds = (projection["body_flops"] / fp32 + projection["projection_flops"] / roof["best_gflops"]) / 1e9
    return {"docs_per_second": docs / seconds, "body_gflops_fp32": fp32}


def median_run(runs: list[dict]) -> dict:
    """One encoder's runs as one: median time and rate, largest peak memory, and each run's rate."""
    merged = {**runs[0], "seconds": statistics.median(run["seconds"] for run in runs),
              "rounds_docs_per_second": [run["docs_per_second"] for run in runs]}
    merged["docs_per_second"] = merged["docs"] / merged["seconds"]
    for peak in ("peak_rss_mb", "peak_gpu_memory_mb"):
        if peak in merged:
            merged[peak] = max(run[peak] for run in runs)
    return merged


def replicated_folder(dataset: str, replicas: int, folder: Path) -> Path:
    """`dataset` as a BEIR folder with its corpus `replicas` times (ids suffixed -rN), built once."""
    if (folder / "qrels" / "test.tsv").is_file():
        return folder
    corpus = data.load(dataset)
    with atomic_path(folder, directory=True) as staging:
        (staging / "qrels").mkdir()
        with open(staging / "corpus.jsonl", "w", encoding="utf-8") as out:
            for replica in range(replicas):
                for doc in corpus.docs():
                    out.write(json.dumps({"_id": f"{doc.id}-r{replica}", "title": "", "text": doc.text}) + "\n")
        with open(staging / "queries.jsonl", "w", encoding="utf-8") as out:
            for qid, text in corpus.queries().items():
                out.write(json.dumps({"_id": qid, "text": text}) + "\n")
        with open(staging / "qrels" / "test.tsv", "w", encoding="utf-8") as out:
            out.write("query-id\tcorpus-id\tscore\n")
            for qid, judged in corpus.qrels().items():
                out.writelines(f"{qid}\t{docid}-r0\t{grade}\n" for docid, grade in judged.items())
    return folder


def encode_stage(model: str, dataset: str, out: Path) -> dict:
    """`python -m pipeline encode` as a user runs it: wall time (model load included) and peak RSS."""
    started = time.perf_counter()
    log_file = out.with_name(out.name + ".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w") as stderr:  # --fresh: an earlier bench's parts must not be resumed, nor timed
        process = subprocess.Popen([sys.executable, "-m", "pipeline", "encode", "--model", model, "--dataset", dataset,
                                    "--out", str(out), "--fresh"], stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        said = [line for line in log_file.read_text().splitlines() if line.strip()]
        raise RuntimeError(f"encode of {dataset} failed with status {os.waitstatus_to_exitcode(status)}: "
                           f"{said[-1] if said else ''} (all of it in {log_file})")
    stats = json.loads((out / "stats.json").read_text())
    return {"dataset": dataset, "docs": stats["docs"]["texts"], "wall_seconds": time.perf_counter() - started,
            "peak_rss_mb": usage.ru_maxrss / 1024, "docs_per_second": stats["docs_per_second"]}


def training_rate(model: str, texts: list[str]) -> float:
    encoder = SpladeEncoder.load(model, device="cpu")
    splade = encoder.model.train()
    texts = list(itertools.islice(itertools.cycle(texts), 16))
    queries, _ = encoder.tokenize([text[:200] for text in texts[:8]], 64)
    documents, _ = encoder.tokenize(texts, 128)
    steps, started = 3, time.perf_counter()
    for _ in range(steps):
        q = splade(queries["input_ids"], queries["attention_mask"])
        d = splade(documents["input_ids"], documents["attention_mask"])
        (losses.info_nce(q, d, 2) + 0.01 * losses.flops(d)).backward()
    return steps / (time.perf_counter() - started)


def bench(model: str, dataset: str, out: Path, markdown: Path, *, docs: int = 1000, replicas: int = 8,
          batch_size: int = 32, max_length: int = 256, rounds: int = ROUNDS) -> dict:
    texts = [doc.text for doc in itertools.islice(data.load(dataset).docs(), docs)]
    work = out.parent / "bench"
    results: dict = {"model": model, "dataset": dataset, "docs": len(texts), "max_length": max_length,
                     "batch_size": batch_size, "threads": torch.get_num_threads(), "rounds": rounds}
    runs, weights = {name: [] for name in peer_encoders.ENCODERS}, {}
    for round_number in range(1, rounds + 1):  # in turn, so that a slow spell of a shared machine falls on each alike
        for name in peer_encoders.ENCODERS:
            run = peer_encoders.run_isolated(name, model, texts, max_length=max_length, batch_size=batch_size, device="cpu")
            weights[name] = run.pop("weights")  # the same each round: every encoder here is deterministic
            runs[name].append(run)
            print(f"{name:24} {run['docs_per_second']:8.1f} docs/s  peak RSS {run['peak_rss_mb']:6.0f} MB  "
                  f"(round {round_number} of {rounds})", flush=True)
    results["encoders"] = {name: median_run(name_runs) for name, name_runs in runs.items()}
    ours = results["encoders"]["ours"]["docs_per_second"]
    results["speedup"] = {name: ours / run["docs_per_second"] for name, run in results["encoders"].items() if name != "ours"}
    results["exactness"] = peer_encoders.compare(weights["ours"], weights["reference"])
    results["roofline"] = roofline.measure()
    results["projection"] = projection_rate(model, texts, max_length=max_length, batch_size=batch_size)
    for part in ("projection", "screen"):
        results["projection"][f"{part}_fraction_of_best_gemm"] = results["projection"][f"{part}_gflops"] / results["roofline"]["best_gflops"]
    results["exact_limit"] = exact_limit(results["roofline"], results["projection"], len(texts))
    results["exact_limit"]["ours_fraction"] = ours / results["exact_limit"]["docs_per_second"]
    results["encode_stage"] = [
        encode_stage(model, dataset, work / "encoded-1x"),
        encode_stage(model, str(replicated_folder(dataset, replicas, work / f"{data.load(dataset).name.replace('/', '-')}-x{replicas}")),
                     work / f"encoded-{replicas}x"),
    ]
    results["train_steps_per_second_8q_16d_128tok"] = training_rate(model, texts)
    if torch.cuda.is_available():
        results["gpu"] = gpu_bench.gpu_section(model, texts, work)
    write_json(out, results)
    with atomic_path(markdown) as staging:
        staging.write_text(format_markdown(results))
    print(format_markdown(results))
    return results


def format_markdown(results: dict) -> str:
    roof, projection, exact, limit = results["roofline"], results["projection"], results["exactness"], results["exact_limit"]
    kernel = f" on the {projection['screen_kernel']} kernel" if projection["screen_kernel"] else ""
    lines = [
        f"# Encoding benchmark: {results['model']} on {results['docs']} {results['dataset']} documents",
        f"max length {results['max_length']}, batches of {results['batch_size']}, {results['threads']} threads, "
        f"CPU capability {roof['cpu_capability']}",
        "", f"| encoder | docs/s (median of {results['rounds']} runs in turn) | each run | peak RSS (MB) | ours is |",
        "|---|---|---|---|---|",
    ]
    for name, run in results["encoders"].items():
        ratio = "" if name == "ours" else f"{results['speedup'][name]:.1f}x faster"
        each = ", ".join(f"{rate:.1f}" for rate in run["rounds_docs_per_second"])
        lines.append(f"| {name} | {run['docs_per_second']:.1f} | {each} | {run['peak_rss_mb']:.0f} | {ratio} |")
    lines += [
        "", f"Exactness against the reference: {exact['differing_quantized_entries']} of "
        f"{exact['reference_nonzero_entries']} quantized entries differ; max float difference {exact['max_float_difference']:.2e}.",
        "", "| GEMM GFLOP/s | " + " | ".join(roofline.SHAPES) + " |", "|---|" + "---|" * len(roofline.SHAPES),
    ]
    lines += [f"| {dtype} | " + " | ".join(f"{rate:.0f}" for rate in rates.values()) + " |"
              for dtype, rates in roof["gflops"].items()]
    lines += [
        "", f"Projection ({projection['screening_dtype']} screen{kernel}), "
        f"as GFLOP/s of the dense projection over real tokens; the best measured GEMM is {roof['best_gflops']:.0f} ({roof['best_at']}):",
        f"- screen (low-precision product, max-pool, bound): {projection['screen_gflops']:.0f} GFLOP/s, "
        f"{100 * projection['screen_fraction_of_best_gemm']:.0f} % of the best GEMM;",
        f"- whole projection (screen and exact fp32 recheck, as encode runs it): {projection['projection_gflops']:.0f} GFLOP/s, "
        f"{100 * projection['projection_fraction_of_best_gemm']:.0f} %.",
        "", f"Exact limit of this machine: {limit['docs_per_second']:.0f} docs/s (the body's "
        f"{projection['body_flops'] / results['docs'] / 1e9:.2f} GFLOP per document at the best fp32 GEMM, "
        f"{limit['body_gflops_fp32']:.0f} GFLOP/s, and the projection's {projection['projection_flops'] / results['docs'] / 1e9:.2f} "
        f"at the best GEMM); ours runs at {100 * limit['ours_fraction']:.0f} % of it.",
        "", "| encode stage | docs | wall s | docs/s | peak RSS (MB) |", "|---|---|---|---|---|",
    ]
    lines += [f"| {run['dataset']} | {run['docs']} | {run['wall_seconds']:.1f} | {run['docs_per_second']:.1f} | {run['peak_rss_mb']:.0f} |"
              for run in results["encode_stage"]]
    lines += ["", f"Training: {results['train_steps_per_second_8q_16d_128tok']:.2f} steps/s (8 queries, 16 docs, 128 tokens)."]
    if "gpu" in results:
        lines += ["", *gpu_bench.format_markdown(results["gpu"])]
    return "\n".join(lines) + "\n"

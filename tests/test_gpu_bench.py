"""The GPU section of `make bench`, its steps run on the CPU on a tiny input: every encoder in its own
process, ours exact and its bf16 body not, the BERT-base stand-in made as sparse as a trained SPLADE."""

import copy

import torch

from pipeline.gpu_bench import ENCODERS, TARGET_TERMS, format_markdown, gpu_section
from pipeline.splade.model import SpladeEncoder

from conftest import DOCS
from test_rescale import TINY

TEXTS = [f"{title} {text}" for title, text in DOCS.values() if text.strip()]


def test_gpu_section_on_a_tiny_input(model_path, tmp_path):
    section = gpu_section(model_path, TEXTS, tmp_path, passages=24, base_config=copy.deepcopy(TINY["bert"]), device="cpu")
    assert set(section["models"]) == {"splade-tiny", "bert-base"} and section["gemm"]["best_gflops"] > 0
    for measured in section["models"].values():
        assert set(measured["runs"]) == set(ENCODERS)
        assert all(run["docs"] == 24 and run["docs_per_second"] > 0 for run in measured["runs"].values())
        assert measured["exactness"]["differing_quantized_entries"] == 0 and measured["exactness"]["max_float_difference"] < 1e-5
        assert measured["exactness_bf16_body"]["max_float_difference"] > 0
    assert any(line.startswith("| bert-base | ours, bf16 body |") for line in format_markdown(section))

    stand_in = SpladeEncoder.load(tmp_path / "bert-base-random", device="cpu")
    weights, _ = stand_in.encode(TEXTS, 128)  # the calibration texts: TARGET_TERMS terms each on average
    assert abs((weights > 0).sum(dim=1).float().mean().item() - TARGET_TERMS) <= 1
    assert torch.isfinite(weights).all()

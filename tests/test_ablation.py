"""The ablation stage end to end on a tiny collection: four variants trained, encoded, indexed, searched
and scored, with their tables and plot."""

import json
import shutil

import pytest
import safetensors.torch

from pipeline.ablation import _retrieval, ablation, variants


def test_ablation_trains_and_scores_the_four_variants(model_path, triples, beir_folder, tmp_path):
    out = tmp_path / "ablation"
    # Training triples need no BM25 index: the negatives index is never opened.
    rows = ablation(model_path, str(triples), tmp_path / "no-index", str(beir_folder), out, inflate=16, steps=2,
                    batch_size=4)
    assert [row["variant"] for row in rows] == [name for name, *_ in variants(16)]
    k = {row["variant"]: row["k"] for row in rows}
    assert k["a-inflated-no-rescale"] == 1 and k["b-inflated-fixed-rescale"] == 16 and k["d-not-inflated-no-rescale"] == 1
    # auto: 16 times SPLADE-tiny's spread over the theory's target (about 0.6 on training documents)
    assert 16 * 0.4 < k["c-inflated-auto-rescale"] < 16 * 0.9
    for row in rows:
        if not row["collapsed"]:
            assert 0 <= row["ndcg@10"] <= 1 and 0 <= row["recall@100"] <= 1, row
    # The inflated head gives denser vectors at init than its rescaled variants.
    init = {row["variant"]: row["active_terms_init"] for row in rows}
    assert init["a-inflated-no-rescale"] > init["b-inflated-fixed-rescale"]
    assert json.loads(out.with_suffix(".json").read_text()) == rows
    markdown = out.with_suffix(".md").read_text()
    assert all(f"| {name} |" in markdown for name, *_ in variants(16))
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_variant_is_scored_from_its_last_good_checkpoint_and_encoded_afresh_when_trained_again(model_path, beir_folder, tmp_path):
    model, work = tmp_path / "variant", tmp_path / "work"
    shutil.copytree(model_path, model)
    # collapsed: its folder holds the last good checkpoint and collapse.json, which encode refuses unless accepted
    (model / "collapse.json").write_text(json.dumps({"reason": "active terms at 0.0", "last_good_checkpoint": None}))
    first = _retrieval(model, str(beir_folder), work, "variant")
    # trained again (the stage run anew): other weights, whose parts an earlier run's folder must not refuse
    weights = safetensors.torch.load_file(model / "model.safetensors")
    weights = {name: tensor * 0.5 if tensor.is_floating_point() else tensor for name, tensor in weights.items()}
    safetensors.torch.save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    second = _retrieval(model, str(beir_folder), work, "variant")
    for metrics in (first, second):
        assert 0 < metrics["ndcg@10"] <= 1 and 0 < metrics["recall@100"] <= 1

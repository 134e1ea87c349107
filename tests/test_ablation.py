"""The ablation stage end to end on a tiny collection: four variants trained, encoded, indexed, searched
and scored, with their tables and plot."""

import json

import pytest

from pipeline.ablation import ablation, variants


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

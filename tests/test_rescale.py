"""Rescaling on real transformers models: tiny random BERT, DistilBERT and ModernBERT built in code on
the default model's real vocabulary (30,522 WordPiece tokens), and the real default model."""

import copy
import json
import math
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForMaskedLM, BertConfig, DistilBertConfig, ModernBertConfig, RobertaConfig

from pipeline.splade.families import UnsupportedModelError, mlm_head
from pipeline.splade.model import Splade, SpladeEncoder
from pipeline.splade.rescale import (DENSE_BIAS_SHIFT, RescaleError, auto_factor, inflate_head, parse_rescale,
                                     prepare_head, rescale_head)

from conftest import DOCS, ROOT

VOCAB = 30522
SPECIAL = dict(pad_token_id=0)
TINY = {
    "bert": BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, **SPECIAL),
    "distilbert": DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=1, n_heads=2, hidden_dim=64, **SPECIAL),
    "modernbert": ModernBertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=64, pad_token_id=0, bos_token_id=101, eos_token_id=102,
                                   cls_token_id=101, sep_token_id=102, global_attn_every_n_layers=1),
}


def tiny_model(family: str) -> Splade:
    torch.manual_seed(0)
    return Splade(AutoModelForMaskedLM.from_config(copy.deepcopy(TINY[family]))).eval()


def logits_and_projection(model: Splade, batch):
    """Full MLM logits, and their bias part, the decoder bias broadcast."""
    with torch.no_grad():
        logits = model.mlm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    bias = mlm_head(model.mlm).decoder.bias
    return logits, (torch.zeros(logits.shape[-1]) if bias is None else bias.detach().clone())


@pytest.fixture(scope="module")
def batch(encoder):
    tokens, _ = encoder.tokenize(["glaciers carve valleys", "interest rates rose again this quarter"], 32)
    return tokens


@pytest.mark.parametrize("family", ["bert", "distilbert", "modernbert", "default"])
def test_rescale_divides_the_projection_keeps_bias_and_embeddings(family, batch, model_path, tmp_path):
    if family == "default":
        encoder = SpladeEncoder.load(model_path, device="cpu")
        model, tokenizer = encoder.model, encoder.tokenizer
    else:
        model, tokenizer = tiny_model(family), SpladeEncoder.load(model_path, device="cpu").tokenizer
    head = mlm_head(model.mlm)
    assert head.tied, f"{family} ships with the decoder tied to the input embeddings"
    embeddings = model.mlm.get_input_embeddings().weight.detach().clone()
    before, bias = logits_and_projection(model, batch)

    record = rescale_head(model, 4.0)

    after, bias_after = logits_and_projection(model, batch)
    torch.testing.assert_close(after, (before - bias) / 4 + bias, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bias_after, bias)
    assert torch.equal(model.mlm.get_input_embeddings().weight, embeddings)
    assert not mlm_head(model.mlm).tied and record["untied"] and record["k"] == 4.0

    model.save_pretrained(tmp_path, tokenizer)
    reloaded = SpladeEncoder.load(tmp_path, device="cpu").model
    again, _ = logits_and_projection(reloaded, batch)
    assert torch.equal(again, after)
    assert not mlm_head(reloaded.mlm).tied
    assert torch.equal(reloaded.mlm.get_input_embeddings().weight, embeddings)
    assert reloaded.mlm.config.splade_rescale["k"] == 4.0
    with pytest.raises(RescaleError, match="already rescaled"):
        rescale_head(reloaded, 2.0)


def test_scale_bias_option_divides_the_bias_too(batch):
    model = tiny_model("bert")
    with torch.no_grad():
        mlm_head(model.mlm).decoder.bias.normal_()
    before, _ = logits_and_projection(model, batch)
    rescale_head(model, 8.0, scale_bias=True)
    after, _ = logits_and_projection(model, batch)
    torch.testing.assert_close(after, before / 8, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", ["0", "-2", "nan", "inf", "big"])
def test_bad_factors_are_refused(bad):
    with pytest.raises(RescaleError):
        parse_rescale(bad)


def test_rescale_head_refuses_zero():
    with pytest.raises(RescaleError, match="positive"):
        rescale_head(tiny_model("bert"), 0.0)


def test_unknown_family_names_the_supported_ones():
    config = RobertaConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    with pytest.raises(UnsupportedModelError, match="'roberta'.*supported: bert, distilbert, modernbert"):
        Splade(AutoModelForMaskedLM.from_config(config))


def test_auto_target_comes_from_theory_and_is_measured_on_held_apart_texts(encoder, model_path):
    """auto's target is sqrt(2 ln V), no figure measured on a model. On texts that took no part in
    choosing it (the test collection's documents, not head_stats' sample), SPLADE-tiny's spread,
    recomputed here from the full MLM logits, lies below the target: k = 1 comes from the floor, with
    the measured ratio kept in the record; inflating the head by 16 gives k = 16 x that ratio."""
    model = SpladeEncoder.load(model_path, device="cpu").model
    texts = [f"{title} {text}" for title, text in DOCS.values() if text.strip()]
    record = auto_factor(model, encoder.tokenizer, texts)
    assert record["target_spread"] == pytest.approx(math.sqrt(2 * math.log(VOCAB)))
    batch = encoder.tokenizer(texts, truncation=True, max_length=256, padding=True, return_tensors="pt")
    logits, bias = logits_and_projection(model, batch)
    projection = (logits - bias)[batch["attention_mask"].bool()].double()
    spread = projection.var(dim=1, unbiased=False).mean().sqrt().item()
    assert record["projection_spread"] == pytest.approx(spread, rel=1e-4)
    assert record["ratio"] == pytest.approx(spread / record["target_spread"], rel=1e-4)
    assert 0.4 < record["ratio"] < 0.9 and record["k"] == 1.0
    inflate_head(model, 16)
    assert auto_factor(model, encoder.tokenizer, texts)["k"] == pytest.approx(16 * record["ratio"], rel=1e-6)


def test_a_head_without_decoder_bias_rescales_and_refuses_a_bias_shift():
    config = copy.deepcopy(TINY["modernbert"])
    config.decoder_bias = False
    model = Splade(AutoModelForMaskedLM.from_config(config))
    assert mlm_head(model.mlm).decoder.bias is None
    weight = mlm_head(model.mlm).decoder.weight.detach().clone()
    assert prepare_head(model, None, rescale="4", scale_bias=True)["k"] == 4
    assert torch.equal(mlm_head(model.mlm).decoder.weight, weight / 4)
    with pytest.raises(RescaleError, match="ModernBertForMaskedLM head has no decoder bias .*no bias to shift"):
        prepare_head(Splade(AutoModelForMaskedLM.from_config(config)), None, bias_shift=6.0)


def test_dense_surrogate_is_dense_at_init_and_rescaling_does_not_undo_it(model_path):
    """The bias shift makes more than a third of the vocabulary active on held-apart texts. Dividing W by
    16 leaves the shifted bias and makes the vectors denser still; dividing the bias too only scales
    every logit, so the same terms stay active."""
    texts = [f"{title} {text}" for title, text in DOCS.values() if text.strip()]

    def active_fraction(**head) -> float:
        encoder = SpladeEncoder.load(model_path, device="cpu")
        prepare_head(encoder.model, encoder.tokenizer, sample=texts, **head)
        weights, _ = encoder.encode(texts, 128)
        return (weights > 0).float().mean().item()

    healthy, dense = active_fraction(), active_fraction(bias_shift=DENSE_BIAS_SHIFT)
    assert healthy < 0.01 and dense > 1 / 3
    assert active_fraction(bias_shift=DENSE_BIAS_SHIFT, rescale="16") > dense
    assert active_fraction(bias_shift=DENSE_BIAS_SHIFT, rescale="16", scale_bias=True) == pytest.approx(dense, abs=1e-3)


def test_head_stats_json_on_the_default_model(model_path):
    result = subprocess.run([sys.executable, "-m", "pipeline", "head-stats", "--model", model_path, "--json"],
                            capture_output=True, text=True, cwd=ROOT, check=True)
    stats = json.loads(result.stdout)
    assert stats["tied"] is True and stats["k"] == 1.0
    assert stats["decoder_frobenius"] == pytest.approx(119.9, abs=0.05)
    for key in ("decoder_mean_row_norm", "active_terms_mean", "cosine_unrelated_mean", "flops", "weight_max"):
        assert key in stats


def test_head_stats_after_rescaling_reports_both(model_path):
    from pipeline.head_stats import head_stats

    stats = head_stats(model_path, "16")
    assert stats["k"] == 16 and stats["before"]["tied"] and not stats["tied"]
    assert stats["decoder_frobenius"] == pytest.approx(stats["before"]["decoder_frobenius"] / 16, rel=1e-5)


def test_sentence_transformers_sparse_encoder_loads_a_rescaled_checkpoint(model_path, tmp_path):
    from sentence_transformers import SparseEncoder

    encoder = SpladeEncoder.load(model_path, device="cpu")
    inflate_head(encoder.model, 16)
    rescale_head(encoder.model, 16.0)
    encoder.model.save_pretrained(tmp_path, encoder.tokenizer)
    texts = ["what causes earthquakes", "Glaciers are slow rivers of ice that carve valleys in mountains."]
    ours, _ = SpladeEncoder.load(tmp_path, device="cpu").encode(texts, 128)
    theirs = SparseEncoder(str(tmp_path), device="cpu").encode(texts, convert_to_tensor=True).to_dense()
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)

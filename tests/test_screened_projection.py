"""The screened projection gives the fp32 SPLADE weights: its bound holds, its candidates cover every
positive weight, and its output equals the plain computation, on the real model and on adversarial heads."""

import pytest
import torch

from pipeline.encode import quantize, vocabulary_terms
from pipeline.splade.screened_projection import (
    CPU_TILING,
    CUDA_TILING,
    ScreenedProjection,
    Tiling,
    error_factor,
    screening_dtype,
)

from conftest import DOCS, QUERIES

TEXTS = [f"{title} {text}" for title, text in DOCS.values() if text.strip()] + list(QUERIES.values())


def exact_weights(states, mask, weight, bias):
    """SPLADE-max as written, in float64: log(1 + relu(logits)), masked, max over tokens."""
    logits = states.double() @ weight.double().T + bias.double()
    return torch.log1p(torch.relu(logits)).masked_fill(~mask.bool().unsqueeze(-1), 0).amax(dim=1)


def random_case(seed, *, documents=5, length=9, hidden=32, vocab=1000, shift=0.0, scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    states = torch.randn(documents, length, hidden, generator=generator) * 3
    weight = torch.randn(vocab, hidden, generator=generator) * 0.2 * scale
    bias = torch.randn(vocab, generator=generator) * 0.5 + shift
    mask = torch.ones(documents, length, dtype=torch.long)
    for document in range(documents):
        mask[document, 1 + document * 2 % length :] = 0
    return states, mask, weight, bias


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("shift", "scale"), [(0.0, 1.0), (-1.0, 16.0), (2.0, 1.0), (0.0, 0.01)],
                         ids=["plain", "inflated", "dense", "tiny-logits"])
def test_screen_bounds_every_max_logit_and_the_output_is_exact(dtype, shift, scale):
    states, mask, weight, bias = random_case(0, shift=shift, scale=scale)
    projection = ScreenedProjection(weight, bias, dtype=dtype)
    padded = torch.where(mask.bool().unsqueeze(-1), states, states[:, :1])
    exact_max = (padded.double() @ weight.double().T).amax(dim=1) + bias.double()
    assert (projection.screen(padded).double() >= exact_max).all()
    ours = projection(states, mask)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), exact_weights(states, mask, weight, bias), rtol=1e-5, atol=1e-5)


def test_the_bound_is_what_low_precision_rounding_can_do():
    """Rounding inputs and output to bf16 moves a logit by up to ~3 units in the 8th bit of sum |h w|."""
    states, _, weight, _ = random_case(1, hidden=64)
    tokens = states.reshape(-1, 64)
    low = (tokens.bfloat16() @ weight.bfloat16().T).double()
    exact = tokens.double() @ weight.double().T
    worst = ((low - exact).abs() / (tokens.abs().double() @ weight.abs().double().T)).max().item()
    assert 0 < worst <= error_factor(torch.bfloat16, 64) < 4 * 2.0**-8
    assert error_factor(torch.float32, 64) < 1e-5


@pytest.mark.parametrize("tiling", [Tiling(rows=3, terms=7), Tiling(rows=20, terms=999), CPU_TILING, CUDA_TILING],
                         ids=["tiny", "ragged", "cpu", "cuda"])
def test_tiling_does_not_change_the_weights(tiling):
    """Tiles smaller than a document, ragged edges, and the GPU's large tiles (run here on the CPU)."""
    states, mask, weight, bias = random_case(2, documents=7, length=11, vocab=2000)
    reference = ScreenedProjection(weight, bias, dtype=torch.float32)(states, mask)
    torch.testing.assert_close(ScreenedProjection(weight, bias, tiling=tiling)(states, mask), reference)


def test_no_candidates_and_no_bias():
    states, mask, weight, _ = random_case(3)
    projection = ScreenedProjection(weight, torch.full((weight.shape[0],), -1e4))
    assert not projection(states, mask).any()
    torch.testing.assert_close(ScreenedProjection(weight, None)(states, mask).double(),
                               exact_weights(states, mask, weight, torch.zeros(weight.shape[0])), rtol=1e-5, atol=1e-5)


def test_real_model_weights_equal_the_plain_fp32_computation(encoder):
    """Every quantized weight equals the plain SPLADE-max of the fp32 model (full logits, masked max)."""
    terms = vocabulary_terms(encoder.tokenizer, encoder.model.vocab_size)
    batch, _ = encoder.tokenize(TEXTS, max_length=256)
    with torch.inference_mode():
        ours = encoder.weights(batch)
        logits = encoder.model.mlm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    plain = (torch.log1p(torch.relu(logits)) * batch["attention_mask"].unsqueeze(-1)).amax(dim=1)
    torch.testing.assert_close(ours, plain, rtol=0, atol=1e-6)
    assert quantize(ours, terms, 100) == quantize(plain, terms, 100)
    assert (ours > 0).sum(dim=1).min() > 10


@pytest.mark.parametrize("kernels", [True, False], ids=["c-kernel-if-any", "torch-screen"])
def test_left_padding_is_never_pooled(kernels):
    """A tokenizer that pads on the left puts padding first: padding positions take a copy of the first
    *real* token, so the weights are the masked max (they took the padding's own state before)."""
    states, mask, weight, bias = random_case(6, length=12)
    mask[0] = 1  # a document without padding beside the padded ones
    left = torch.stack([row.roll(len(row) - int(row.sum())) for row in mask])  # each row's real tokens last
    states_left = torch.stack([document.roll(len(row) - int(row.sum()), dims=0) for document, row in zip(states, mask)])
    assert all(torch.equal(row, torch.arange(len(row)) >= len(row) - row.sum()) for row in left)
    assert (left[:, 0] == 0).sum() == len(left) - 1
    ours = ScreenedProjection(weight, bias, kernels=kernels)(states_left + 100 * (1 - left).unsqueeze(-1), left)
    torch.testing.assert_close(ours.double(), exact_weights(states, mask, weight, bias), rtol=1e-5, atol=1e-5)


def test_screening_dtype_follows_the_cpu():
    from pipeline.splade.screened_projection import cpu_flags

    expected = torch.bfloat16 if cpu_flags() & {"amx_bf16", "avx512_bf16"} else torch.float32
    assert screening_dtype("cpu") == expected
    assert screening_dtype("cuda") == torch.bfloat16


def test_the_projection_follows_training_updates(encoder):
    """A changed decoder gives a new projection (training then evaluating in one process)."""
    decoder = encoder.model.head.decoder
    first = encoder.projection()
    assert encoder.projection() is first
    with torch.no_grad():
        decoder.bias.add_(0.0)
    assert encoder.projection() is not first


def test_states_that_are_not_finite_give_weights_that_are_not(encoder):
    """A model gone to NaN must not encode as empty vectors: every weight of such a document is rechecked,
    so the encode stage sees the NaN and refuses it."""
    from pipeline.encode import quantized_entries
    from pipeline.errors import PipelineError

    states, mask, weight, bias = random_case(5)
    states[1, 0, 0] = torch.nan
    sparse = ScreenedProjection(weight, bias).sparse(states, mask)
    assert sparse.values[sparse.documents == 1].isnan().all() and sparse.values[sparse.documents != 1].isfinite().all()
    with pytest.raises(PipelineError, match="not finite"):
        quantized_entries(sparse, 100)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_a_bias_far_below_the_products_keeps_the_torch_screen_selective(dtype):
    """Products h.w mostly positive and the sparsity from a large negative bias alone (a random-init MLM made
    sparse): the torch screen's candidates stay close to the positive weights. (With the bias added after
    the max, every pair whose products were positive on one token was a candidate.)"""
    states, _, weight, _ = random_case(2, documents=8, length=16, hidden=64, vocab=4000)
    mask = torch.ones(states.shape[:2], dtype=torch.long)
    products = (states.double() @ weight.double().T).amax(dim=1)
    bias = torch.full((weight.shape[0],), -products.flatten().quantile(0.98).item())
    projection = ScreenedProjection(weight, bias, dtype=dtype, kernels=False)
    candidates, positives = int((projection.screen(states) > 0).sum()), int((products + bias > 0).sum())
    assert 0 < positives <= candidates <= 2 * positives
    torch.testing.assert_close(projection(states, mask).double(), exact_weights(states, mask, weight, bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_the_output_stays_exact_under_reduced_fp32_matmul_precision(dtype):
    """`torch.set_float32_matmul_precision("medium")` lets oneDNN (on a CPU with bf16 instructions) and
    cuBLAS run fp32 products in lower precision; the screen's bound and the recheck must not follow it."""
    states, mask, weight, bias = random_case(3, hidden=64)
    torch.set_float32_matmul_precision("medium")
    try:
        ours = ScreenedProjection(weight, bias, dtype=dtype, kernels=False)(states, mask)
    finally:
        torch.set_float32_matmul_precision("highest")
    torch.testing.assert_close(ours.double(), exact_weights(states, mask, weight, bias), rtol=1e-5, atol=1e-5)


def _one_pair(states: list[float], weight: list[float], logit_above_zero: float | None = None, bias: float = 0.0):
    """One document of one token and one term; the bias sets the exact logit to `logit_above_zero` where given."""
    states, weight = torch.tensor([[states]]), torch.tensor([weight])
    if logit_above_zero is not None:
        bias = logit_above_zero - (states.double() @ weight.double().T).item()
    return states, torch.ones(1, 1, dtype=torch.long), weight, torch.tensor([bias])


# Magnitudes at fp32's ends, where the bound's own fp32 arithmetic underflows or overflows.
EXTREMES = {
    # cancelling terms under tiny states: their fp32 norm (sqrt of squares ~1e-48) underflowed to 0, and the bound with it
    "tiny-states": _one_pair([1e-24, 1e-24], [1.0, -1.0 + 2**-12], logit_above_zero=1.2e-28),
    "tiny-weights": _one_pair([1.0, 1.0], [1e-24, -1e-24 * (1 - 2**-12)], logit_above_zero=1.2e-28),
    # subnormal weights under huge states: their slack, cast to fp32 to nearest, lost 30 % (rounded up since)
    "subnormal-weights": _one_pair([-1e17, -1e17], [-4.6382979169151445e-43, -3.3350903450930646e-43], logit_above_zero=2e-29),
    # a document of zeros under rows whose norm overflows fp32: 0 x inf made the bound NaN, which passed for <= 0
    "zeros-under-a-huge-row": _one_pair([0.0] * 4, [2.5e38] * 4, bias=0.5),
    "zeros-under-a-row-whose-squares-overflow": _one_pair([0.0] * 4, [2e19] * 4, bias=0.5),
}


@pytest.mark.parametrize("options", [{}, {"kernels": False, "dtype": torch.bfloat16}, {"kernels": False, "dtype": torch.float32}],
                         ids=["c-kernel-if-any", "torch-bf16", "torch-fp32"])
@pytest.mark.parametrize("case", EXTREMES)
def test_no_weight_is_lost_at_fp32s_extremes(options, case):
    states, mask, weight, bias = EXTREMES[case]
    expected = torch.log1p(torch.relu(states @ weight.T + bias)).amax(dim=1)
    assert (expected > 0).all()
    # equal up to the logit's own rounding, which cancellation makes large against the logit
    torch.testing.assert_close(ScreenedProjection(weight, bias, **options)(states, mask), expected, rtol=1e-3, atol=0)

"""The C kernels of the screen: their max-pooled logits are those of the bf16-rounded (AMX) or int8-quantized
(AVX512-VNNI) inputs, their bound holds, and the projection they screen gives the same weights as the torch
screen. On a CPU with AMX or AVX512-VNNI the kernels must build and run (each screen the CPU has); elsewhere
their tests are skipped, saying so, and the torch screen runs."""

import subprocess
import sys

import pytest
import torch

from pipeline.splade import screen_kernels
from pipeline.splade.screen_kernels import AMX_FLAGS, VNNI_FLAGS, cpu_flags
from pipeline.splade.screened_projection import ScreenedProjection, _padding_as_first_token, accumulation_factor

from conftest import ROOT
from test_screened_projection import exact_weights, random_case

HAS_AMX, HAS_VNNI = AMX_FLAGS <= cpu_flags(), VNNI_FLAGS <= cpu_flags()
needs_kernel = pytest.mark.skipif(not (HAS_AMX or HAS_VNNI), reason="this CPU has neither AMX (amx_tile, amx_bf16) "
                                                                    "nor AVX512-VNNI: the torch screen runs")
needs_amx = pytest.mark.skipif(not HAS_AMX, reason="this CPU has no AMX (amx_tile, amx_bf16)")
needs_vnni = pytest.mark.skipif(not HAS_VNNI, reason="this CPU has no AVX512-VNNI")
SHAPES = pytest.mark.parametrize(("documents", "length", "hidden", "vocab"),
                                 [(3, 32, 32, 64), (5, 64, 128, 1000), (1, 96, 40, 33)],
                                 ids=["one-tile", "ragged-vocab", "ragged-hidden"])


@needs_kernel
def test_the_kernel_builds_and_loads_where_the_cpu_has_amx_or_avx512_vnni():
    assert screen_kernels.load() is not None
    assert screen_kernels.fused_screen() == ("amx" if HAS_AMX else "avx512_vnni")


def random_screen_case(documents, hidden, vocab):
    generator = torch.Generator().manual_seed(documents + hidden)
    weight = torch.randn(vocab, hidden, generator=generator)
    bias, fixed = torch.randn(vocab, generator=generator), torch.rand(vocab, generator=generator) / 4
    slacks = (torch.rand(vocab, generator=generator), torch.rand(vocab, generator=generator))
    scales = (torch.rand(documents, generator=generator), torch.rand(documents, generator=generator))
    return generator, weight, bias, fixed, slacks, scales


def screened_with_threads(screen, threads, *inputs):
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return screen(*inputs)
    finally:
        torch.set_num_threads(saved)


def assert_max_pooled(upper, blocks, logits, bias, fixed, slacks, scales):
    """upper = max logit + bias + bound; the block named is the best one, where it beats the second best by more
    than twice the bound, -1 elsewhere."""
    documents, length, vocab = logits.shape
    bound = fixed.double() + scales[0].double()[:, None] * slacks[0].double() + scales[1].double()[:, None] * slacks[1].double()
    assert upper.shape == blocks.shape == (documents, vocab)
    torch.testing.assert_close(upper.double(), logits.amax(dim=1) + bias.double() + bound, rtol=1e-5, atol=1e-4)
    block_maxima = logits.view(documents, length // 32, 32, vocab).amax(dim=2)
    best = block_maxima.topk(min(2, length // 32), dim=1)
    gap = best.values[:, 0] - (best.values[:, 1] if length > 32 else -torch.inf)
    expected = torch.where(gap > 2 * bound, best.indices[:, 0], -1)
    clear = (gap - 2 * bound).abs() > 1e-3  # not within fp32's rounding of the decision
    assert clear.float().mean() > 0.9 and torch.equal(blocks[clear].long(), expected[clear])


@needs_amx
@SHAPES
@pytest.mark.parametrize("threads", [1, 2])
def test_the_amx_kernel_max_pools_the_bf16_logits(documents, length, hidden, vocab, threads):
    """Tiles, VNNI packing, padding of hidden and vocabulary, and the split of terms among threads."""
    generator, weight, bias, fixed, slacks, scales = random_screen_case(documents, hidden, vocab)
    tokens, weight = torch.randn(documents, length, hidden, generator=generator).bfloat16(), weight.bfloat16()
    assert screen_kernels.fused_screen() == "amx"  # AMX state granted
    screen = screen_kernels.AmxScreen(screen_kernels.load(), weight, bias, fixed, slacks)
    upper, blocks = screened_with_threads(screen, threads, tokens, scales)
    assert_max_pooled(upper, blocks, tokens.double() @ weight.double().T, bias, fixed, slacks, scales)


@needs_vnni
@SHAPES
@pytest.mark.parametrize("threads", [1, 2])
def test_the_vnni_kernel_max_pools_the_scaled_int8_logits(documents, length, hidden, vocab, threads):
    """s_t s_v (q_t . q_v) of each token's and term's int8 quantization: the unsigned bytes' offsets, the packing,
    padding of hidden and vocabulary, and the split of terms among threads."""
    generator, weight, bias, fixed, slacks, scales = random_screen_case(documents, hidden, vocab)
    states = torch.randn(documents, length, hidden, generator=generator) * 3
    library = screen_kernels.load()
    tokens, token_scales, offsets, *_ = screen_kernels.quantized_with_norms(library, states)
    levels, term_scales = screen_kernels.quantized_rows(weight)
    screen = screen_kernels.VnniScreen(library, levels, term_scales, bias, fixed, slacks)
    upper, blocks = screened_with_threads(screen, threads, tokens, token_scales, offsets, scales)
    logits = ((tokens[..., :hidden].double() * token_scales.double()[..., None])
              @ (levels.double() * term_scales.double()[:, None]).T)
    assert_max_pooled(upper, blocks, logits, bias, fixed, slacks, scales)


@needs_vnni
@pytest.mark.parametrize("hidden", [128, 40, 7])
def test_the_int8_screens_inputs_are_each_tokens_quantization_and_norms(hidden):
    """q = round(x / s) with s = max |x| / 127 (so within +-127, the largest entry at +-127), zeros past hidden,
    offsets -128 sum(q), the three largest norms; a token of zeros has scale 0; a NaN is kept."""
    generator = torch.Generator().manual_seed(hidden)
    states = torch.randn(4, 64, hidden, generator=generator) * 3
    states[1, 3] = 0
    states[3, 5, hidden - 1] = torch.nan
    tokens, scales, offsets, norms, residual, quantized = screen_kernels.quantized_with_norms(screen_kernels.load(), states)
    assert tokens.shape == (4, 64, -(-hidden // 32) * 32) and not tokens[..., hidden:].any()
    expected_scales = states.abs().amax(dim=2) / 127
    number = ~states.isnan().any(dim=2)
    torch.testing.assert_close(scales[number], expected_scales[number], rtol=1e-6, atol=0)
    levels = tokens[..., :hidden].float()
    assert levels.abs().max() == 127 and scales[1, 3] == 0 and not levels[1, 3].any()
    torch.testing.assert_close(levels[number], torch.round(states / expected_scales.clamp_min(1e-30)[..., None])[number],
                               rtol=0, atol=1)  # x / s rounded: the last bit of the division may differ
    assert torch.equal(offsets, -128 * tokens.int().sum(dim=2))
    back = levels * scales[..., None]
    for ours, theirs in ((norms, states.norm(dim=2)), (residual, (states - back).norm(dim=2)), (quantized, back.norm(dim=2))):
        assert ours[3].isnan()
        torch.testing.assert_close(ours[:3], theirs[:3].amax(dim=1), rtol=1e-5, atol=0)


@needs_kernel
@pytest.mark.parametrize(("length", "hidden", "density"), [(32, 128, 0.3), (96, 40, 0.05), (64, 7, 1.0)],
                         ids=["one-block", "odd-shapes", "every-term"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("with_blocks", [False, True], ids=["all-tokens", "named-blocks"])
def test_the_recheck_kernel_gives_each_candidates_fp32_max_dot(length, hidden, density, threads, with_blocks):
    """Groups of 8 terms with a shorter last one, documents with no candidate, and a NaN that must stay; with
    blocks, each candidate's max over its block's 32 tokens (over all of them where its block is -1)."""
    generator = torch.Generator().manual_seed(length + hidden)
    states, weight = torch.randn(6, length, hidden, generator=generator), torch.randn(300, hidden, generator=generator)
    chosen = torch.rand(6, 300, generator=generator) < density
    chosen[2] = False
    states[4, length - 1, hidden // 2] = torch.nan
    if with_blocks:  # a NaN in each block of document 4, wherever its candidates' blocks lie
        states[4, ::32, hidden // 2] = torch.nan
    documents, terms = chosen.nonzero(as_tuple=True)
    blocks = torch.randint(-1, length // 32, terms.shape, generator=generator, dtype=torch.int16) if with_blocks else None
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        maxima = screen_kernels.max_dots(screen_kernels.load(), states, weight, documents, terms, blocks)
    finally:
        torch.set_num_threads(saved)
    products = torch.einsum("ctk,ck->ct", states.double()[documents], weight.double()[terms])
    if with_blocks:  # the tokens outside a candidate's block: never its max
        block_of_token = torch.arange(length) // 32
        products[(blocks[:, None] >= 0) & (block_of_token[None, :] != blocks[:, None])] = -torch.inf
    expected = products.amax(dim=1)
    assert maxima.shape == terms.shape and maxima[documents == 4].isnan().all()
    torch.testing.assert_close(maxima[documents != 4].double(), expected[documents != 4], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of 32"):
        screen_kernels.max_dots(screen_kernels.load(), states[:, :31], weight, documents, terms)


# In a child process, whose address space is then capped just above what it holds: the recheck's buffer
# for a document's states (128 MB) cannot be had.
RECHECK_WITHOUT_MEMORY = """
import resource, torch
from pipeline.splade import screen_kernels
library = screen_kernels.load()
states, weight = torch.zeros(1, 2048, 16384), torch.zeros(4, 16384)
documents, terms = torch.zeros(3, dtype=torch.int64), torch.arange(3)
screen_kernels.max_dots(library, states[:, :32, :64].contiguous(), weight[:, :64].contiguous(), documents, terms)
used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (used + 64 * 2**20, resource.RLIM_INFINITY))
try:
    screen_kernels.max_dots(library, states, weight, documents, terms)
except MemoryError as error:
    print(error)
"""


@needs_kernel
def test_a_recheck_without_memory_for_its_buffers_says_so():
    result = subprocess.run([sys.executable, "-c", RECHECK_WITHOUT_MEMORY], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == ("the recheck kernel could not allocate its buffers per thread: a document's states "
                                     "(2048 x 16384 floats) and an index per candidate of a document (up to 3)")


@needs_kernel
@pytest.mark.parametrize("hidden", [128, 40, 7])
def test_the_screens_inputs_are_torchs_rounding_and_norms(hidden):
    """bf16 rounding (to nearest even, ties included) and the three largest norms, a NaN kept."""
    generator = torch.Generator().manual_seed(hidden)
    states = torch.randn(4, 64, hidden, generator=generator) * 3
    states[0, 0, 0] = 1 + 2**-8  # a tie: to even, 1
    states[0, 0, 1] = 1 + 3 * 2**-8  # a tie: to even, 1 + 2^-6
    states[3, 5, hidden - 1] = torch.nan
    low, norms, residual, rounded = screen_kernels.rounded_with_norms(screen_kernels.load(), states)
    number = ~states.isnan()  # torch's NaN stays NaN, its bits aside
    assert torch.equal(low[number].view(torch.int16), states[number].bfloat16().view(torch.int16))
    assert low[~number].isnan().all()
    back = low.float()
    for ours, theirs in ((norms, states.norm(dim=2)), (residual, (states - back).norm(dim=2)), (rounded, back.norm(dim=2))):
        assert ours[3].isnan()
        torch.testing.assert_close(ours[:3], theirs[:3].amax(dim=1), rtol=1e-6, atol=0)


@needs_kernel
@pytest.mark.parametrize("vocab", [30522, 16, 7])
def test_candidate_pairs_are_torchs_nonzero_of_the_entries_not_at_most_zero(vocab):
    """Row-major pairs of the entries above zero or NaN (a bound that proves nothing), in a view with padded rows (as
    the kernel's output is read); +inf is a candidate, 0 and -0 are not; a ragged last group of 16 terms."""
    generator = torch.Generator().manual_seed(vocab)
    padded = torch.randn(5, vocab + 9, generator=generator) - 2
    padded[:, vocab:] = 1.0  # beyond the view: never read
    upper = padded[:, :vocab]
    upper[0, :2] = torch.tensor([0.0, -0.0])  # not above zero
    upper[1] = torch.nan
    upper[2] = torch.inf
    upper[3, vocab - 1] = 1.0
    upper[4] = -1.0
    documents, terms = screen_kernels.candidate_pairs(screen_kernels.load(), upper)
    expected = (~(upper <= 0)).nonzero(as_tuple=True)
    assert torch.equal(documents, expected[0]) and torch.equal(terms, expected[1])
    assert (documents == 1).sum() == (documents == 2).sum() == vocab and not (documents == 4).any()


@needs_kernel
def test_the_kernel_refuses_lengths_its_tiles_cannot_take():
    library, zeros, scales = screen_kernels.load(), torch.zeros(32), (torch.zeros(1), torch.zeros(1))
    if screen_kernels.fused_screen() == "amx":
        screen = screen_kernels.AmxScreen(library, torch.ones(32, 32).bfloat16(), zeros, zeros, (zeros, zeros))
        inputs = (torch.ones(1, 31, 32).bfloat16(), scales)
    else:
        screen = screen_kernels.VnniScreen(library, torch.ones(32, 32, dtype=torch.int8), torch.ones(32), zeros, zeros,
                                           (zeros, zeros))
        inputs = (torch.ones(1, 31, 32, dtype=torch.int8), torch.ones(1, 31), torch.zeros(1, 31, dtype=torch.int32), scales)
    with pytest.raises(ValueError, match="multiple of 32"):
        screen(*inputs)


@needs_kernel
@pytest.mark.parametrize(("shift", "scale", "hidden"), [(0.0, 1.0, 32), (-1.0, 16.0, 64), (2.0, 1.0, 40), (0.0, 0.01, 128)],
                         ids=["plain", "inflated", "dense", "tiny-logits"])
def test_the_kernels_bound_holds_and_the_weights_equal_the_torch_screens(shift, scale, hidden):
    states, mask, weight, bias = random_case(4, documents=6, length=40, hidden=hidden, vocab=3000, shift=shift, scale=scale)
    fused = ScreenedProjection(weight, bias)
    assert fused.fused is not None
    padded = torch.where(mask.bool().unsqueeze(-1), states, states[:, :1])
    exact_max = (padded.double() @ weight.double().T).amax(dim=1) + bias.double()
    assert (fused.screen(padded).double() >= exact_max).all()
    ours = fused(states, mask)
    torch_screen = ScreenedProjection(weight, bias, dtype=torch.bfloat16, kernels=False)
    assert torch_screen.fused is None
    theirs = torch_screen(states, mask)  # the same candidates, rechecked in fp32 by torch's bmm instead of the kernel
    assert torch.equal(ours != 0, theirs != 0)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)
    torch.testing.assert_close(ours.double(), exact_weights(states, mask, weight, bias), rtol=1e-5, atol=1e-5)


@needs_kernel
def test_the_kernels_bound_keeps_few_candidates(encoder):
    """Residual norms instead of the worst case: on AMX fewer pairs to recheck on real states than the torch
    screen's bf16 bound, in int8 at most twice the positive weights; the same weights."""
    batch, _ = encoder.tokenize(["Glaciers are slow rivers of ice that carve valleys in mountains. " * 20,
                                 "Vaccines train the immune system to recognise a virus."], 256)
    with torch.inference_mode():
        states = encoder.model.head.transform(encoder.model.hidden_states(batch["input_ids"], batch["attention_mask"]))
    decoder = encoder.model.head.decoder
    fused = ScreenedProjection(decoder.weight, decoder.bias)
    plain = ScreenedProjection(decoder.weight, decoder.bias, kernels=False)
    padded = torch.where(batch["attention_mask"].bool().unsqueeze(-1), states, states[:, :1])
    weights = fused(states, batch["attention_mask"])
    candidates, positives = int((fused.screen(padded) > 0).sum()), int((weights > 0).sum())
    print(f"{candidates / positives:.2f} candidates per positive weight")
    if fused.dtype == torch.bfloat16:
        assert 0 < candidates < (plain.screen(padded) > 0).sum()
    else:
        assert 0 < positives <= candidates <= 2 * positives
    assert torch.equal(weights, plain(states, batch["attention_mask"]))
    assert 0 < accumulation_factor(128) < 1e-4


@needs_kernel
def test_the_block_the_screen_names_holds_the_exact_maximum(encoder):
    """On real states most candidates are rechecked on one block of 32 tokens, and that block's max is the
    document's; where two blocks tie for the maximum (a block copied into the next), none is named."""
    batch, _ = encoder.tokenize(["Glaciers form where snow outlasts the summer; compacted over centuries, the firn turns to "
                                 "ice that flows downhill under its own weight, carving cirques, aretes and U-shaped valleys. "
                                 "Meltwater streams sort the debris into eskers and outwash plains, while moraines mark the "
                                 "furthest advance. Cores drilled through ice sheets keep bubbles of ancient air, a record "
                                 "of temperature and carbon dioxide over 800,000 years. Retreating glaciers now raise sea "
                                 "levels and threaten the summer water supply of hundreds of millions of people.",
                                 "Vaccines train the immune system to recognise a virus."], 256)
    with torch.inference_mode():
        states = encoder.model.head.transform(encoder.model.hidden_states(batch["input_ids"], batch["attention_mask"]))
    decoder = encoder.model.head.decoder
    projection = ScreenedProjection(decoder.weight, decoder.bias)
    padded = _padding_as_first_token(states, batch["attention_mask"].bool())  # as `sparse` pads: 32 tokens a block
    assert padded.shape[1] >= 96

    def exact_block_maxima(states):
        return torch.einsum("dth,vh->dvt", states.double(), decoder.weight.double()).unflatten(2, (-1, 32)).amax(dim=3)

    upper, blocks = projection.screened(padded)
    documents, terms = (upper > 0).nonzero(as_tuple=True)
    named, maxima = blocks[documents, terms].long(), exact_block_maxima(padded)[documents, terms]
    single = named >= 0
    assert single.float().mean() > 0.5
    assert torch.equal(maxima[single].gather(1, named[single, None]).squeeze(1), maxima[single].amax(dim=1))
    tied = padded.clone()
    tied[0, 32:64] = tied[0, :32]
    _, blocks = projection.screened(tied)
    best = exact_block_maxima(tied)[0].argmax(dim=1)  # the first of two equal blocks
    assert (best == 0).any() and (blocks[0][best == 0] == -1).all()


@needs_kernel
@pytest.mark.parametrize(("hidden", "magnitude"), [(40, 1e-24), (768, 1e-24), (7, 1e-37)])
def test_tiny_states_lose_no_weight(hidden, magnitude):
    """Squares of entries this small underflow in fp32, and the norms and the bound would with them (and 127 / max
    overflows at the smallest): such a document is rechecked whole, so every positive fp32 weight is kept."""
    generator = torch.Generator().manual_seed(hidden)
    states = torch.randn(2, 32, hidden, generator=generator) * magnitude
    states[..., 1::2] = 0  # zeros as well (0 times an overflowed 127 / max is NaN)
    weight = torch.randn(300, hidden, generator=generator)
    exact_max = (states.double() @ weight.double().T).amax(dim=1)
    bias = (exact_max[0].abs() * 1e-3 - exact_max[0]).float()  # document 0's weights just above 0
    mask = torch.ones(states.shape[:2], dtype=torch.long)
    ours = ScreenedProjection(weight, bias)(states, mask)
    exact = exact_max + bias.double()
    assert (exact[0] > 0).all() and torch.equal(ours > 0, exact > 0)


@needs_kernel
def test_a_decoder_weight_that_is_not_finite_goes_to_the_torch_screen():
    """Its bound would not be finite: the torch screen runs, and the weight reaches the output for encode to refuse."""
    states, mask, weight, bias = random_case(6)
    weight[3, 0] = torch.inf
    projection = ScreenedProjection(weight, bias)
    assert projection.fused is None and ScreenedProjection(weight[:3], bias[:3]).fused is not None
    assert projection(states, mask)[:, 3].isinf().any()


def test_without_a_compiler_the_torch_screen_runs(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    assert screen_kernels.load.__wrapped__() is None
    monkeypatch.setenv("PIPELINE_SCREEN_KERNELS", "0")
    assert screen_kernels.load.__wrapped__() is None


@needs_kernel
def test_the_build_is_cached_by_source_and_flags(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = screen_kernels.load.__wrapped__()
    built = list((tmp_path / "splade-pipeline").iterdir())
    assert first is not None and len(built) == 1 and built[0].suffix == ".so"
    stamp = built[0].stat().st_mtime_ns
    assert screen_kernels.load.__wrapped__() is not None
    assert built[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt


@needs_kernel
def test_a_compiler_without_amx_still_builds_the_int8_screen(monkeypatch, tmp_path):
    """A compiler that refuses -mamx-tile (GCC < 11) builds the library without its AMX code, once; the int8
    screen and the passes are there, the AMX screen is not."""
    import shutil

    compiler = tmp_path / "cc-without-amx"
    compiler.write_text(f'#!/bin/sh\nfor flag in "$@"; do [ "$flag" = -mamx-tile ] && exit 1; done\nexec {shutil.which("cc")} "$@"\n')
    compiler.chmod(0o755)
    monkeypatch.setenv("CC", str(compiler))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    library = screen_kernels.load.__wrapped__()
    assert library is not None and not hasattr(library, "amx_request") and hasattr(library, "vnni_max_pool")
    built = list((tmp_path / "splade-pipeline").iterdir())
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    assert screen_kernels.load.__wrapped__() is not None and built[0].stat().st_mtime_ns == stamp

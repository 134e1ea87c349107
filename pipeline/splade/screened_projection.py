"""SPLADE's max-pooled vocabulary projection at low-precision speed, with the fp32 result.

`weights[d, v] = log(1 + relu(max over d's tokens t of (h_t . w_v) + b_v))` costs hidden x vocabulary
multiply-adds per token, ~90 % of encoding. A document has a few hundred positive terms out of
~30,000, so the product only has to find *which* (document, term) pairs can be positive:

1. screen: the product in bf16 (AMX, or int8 on AVX512-VNNI, on a CPU; tensor cores on a GPU), tile by tile so
   the [tokens x vocabulary] logits never exist whole, each tile max-pooled while it is in cache;
2. bound: bf16 rounds h and w to 8 significant bits and the product to bf16, with fp32 accumulation,
   so |screened - exact| <= eps * sum_i |h_ti| |w_vi| <= eps * ||h_t|| ||w_v|| (eps ~ 3 * 2^-8);
   a pair is a candidate when its screened max plus that bound plus b_v is not at most zero (a NaN proves nothing);
3. recheck: each candidate's max logit is computed again in fp32 (a few hundred terms x the
   document's tokens): the output equals the fp32 computation, and every other weight is exactly 0.
   (fp32 sums in another order than torch's GEMM: the last bit may differ, which a quantized weight
   shows only when it lies that close to a rounding boundary; `make bench` counts such entries.)

On a CPU with AMX the screen is a fused C kernel (`screen_kernels`) that max-pools each block of bf16
logits as it leaves the tile registers and adds the bound in the same pass (the steps around it, and the
recheck, are C passes of the same source). Its output stays fp32 and it knows each rounding residual
r = x - bf16(x), so its bound is tighter (`accumulation_factor`): ~1.15 candidates per positive weight
on SciFact, against ~1.75 for the worst-case bound above. It also names the block of 32 tokens that
holds a pair's maximum where the bound proves it (its best block beats the second by more than twice
the bound), and the recheck then sums that block's tokens alone. Without AMX, on AVX512-VNNI (AMD Zen 4,
Intel Cascade Lake to Ice Lake), the same kernel screens in int8: each token and each term is quantized
with a scale of its own, the integer products are exact, and the bound knows each quantization residual
(`int8_bound_scales`): ~1.9 candidates per positive weight on SciFact, at int8's rate, twice bf16's.

Elsewhere (a GPU, or a CPU with neither) the screen is torch's GEMM, tile by tile, with the bias as one
more column of the product, and the max-pool of a tile reads its bf16 bits as int16, which a CPU reduces
~7x faster than bf16.
Integer order is float order for non-negative floats only, and most logits are negative, so the tile is
computed with -w: where every token's -logit is >= 0, the integer minimum is the float minimum and gives
the max logit; where one is negative, a logit is positive and the pair is a candidate anyway. Where
bf16 is not faster than fp32 (no AMX or AVX512-BF16), the same steps run in fp32 (int32 bits).
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import torch

from pipeline.splade import screen_kernels
from pipeline.splade.screen_kernels import cpu_flags

# Unit roundoff of each screening dtype, and the integer type its bits are read as.
UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float32: 2.0**-24}
BITS_AS_INT = {torch.bfloat16: torch.int16, torch.float32: torch.int32}
FP32_UNIT_ROUNDOFF = 2.0**-24
# bf16 products on AMX (and maybe oneDNN's elsewhere) flush subnormal inputs and results to zero: each of the
# hidden products then moves by at most this much times (1 + |h_i| + |w_i|), on top of the rounding.
FLUSHED = 2.0**-126
MARGIN = 1.01  # on every bound: the fp32 arithmetic that computes the bound itself


def _gamma(hidden_size: int) -> float:
    """Relative error bound of an fp32 sum of `hidden_size` products, in any order (gamma_K)."""
    return hidden_size * FP32_UNIT_ROUNDOFF / (1 - hidden_size * FP32_UNIT_ROUNDOFF)


def error_factor(dtype: torch.dtype, hidden_size: int) -> float:
    """eps with |screened - exact fp32| <= eps * sum_i |h_i w_i| for one logit.

    Inputs rounded to `dtype` (relative u each, so 2u + u^2 per product), fp32 accumulation of
    `hidden_size` terms (gamma_K, for the screen and again for the fp32 reference), output rounded to
    `dtype` (u, of a value at most (1 + 2u + u^2 + gamma_K) times the sum). Doubled gamma_K and a
    MARGIN cover the order of operations.
    """
    u, gamma = UNIT_ROUNDOFF[dtype], _gamma(hidden_size)
    products = 2 * u + u * u
    return MARGIN * (products + 2 * gamma + u * (1 + products + gamma))


def accumulation_factor(hidden_size: int) -> float:
    """The AMX screen's bound, which knows each rounding residual r = x - bf16(x) and keeps fp32 sums:
    |screened - exact fp32| <= ||r_h|| ||w|| + ||bf16(h)|| ||r_w|| + this * ||h|| ||w|| (times MARGIN):
    h.w - bf16(h).bf16(w) = r_h.w + bf16(h).r_w exactly, and both fp32 sums (screen and reference) add
    gamma_K each, doubled for the order of operations, of norms grown by at most (1 + u)^2 by rounding.
    Measured residuals are ~0.42 u of the norms, so this bound is ~3.5x tighter than `error_factor`'s."""
    return 2 * 2 * _gamma(hidden_size) * (1 + UNIT_ROUNDOFF[torch.bfloat16]) ** 2


class SparseWeights(NamedTuple):
    """The positive weights of [documents, vocabulary], in row-major order (as `nonzero` lists them)."""

    documents: torch.Tensor
    terms: torch.Tensor
    values: torch.Tensor
    shape: tuple[int, int]

    def dense(self) -> torch.Tensor:
        weights = torch.zeros(self.shape, device=self.values.device)
        weights[self.documents, self.terms] = self.values
        return weights


@dataclass(frozen=True)
class Tiling:
    """How much of the [tokens x vocabulary] product is live at once: `rows` tokens (whole documents)
    by `terms` vocabulary entries. On a CPU a tile stays in the core's L2 cache (2048 x 512 bf16 is
    2 MiB for both cores); a GPU needs large tiles to fill its SMs and bounds memory the same way."""

    rows: int
    terms: int


CPU_TILING = Tiling(rows=2048, terms=512)
LENGTH_MULTIPLE = screen_kernels.TILE  # also what the C kernel's blocks take
CUDA_TILING = Tiling(rows=32768, terms=8192)
# What each C screen (`screen_kernels.fused_screen`) computes its products in.
KERNEL_DTYPES = {"amx": torch.bfloat16, "avx512_vnni": torch.int8}


def int8_bound_scales(hidden_size: int, norms: torch.Tensor, residuals: torch.Tensor,
                      quantized: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The int8 screen's bound, (a, b) per document, for a[d] * slack_a[v] + b[d] * slack_b[v] with
    slack_a = MARGIN (||r_w|| + 3u ||s_w q_w||) and slack_b = MARGIN ||w||, from the document's largest token
    norms of h, of its computed residual r_h = h - s_h q_h, and of s_h q_h.

    h.w - s_h s_w (q_h.q_w) = s_h q_h.r_w + r_h.w exactly, bounded by ||s_h q_h|| ||r_w|| + ||r_h|| ||w||. The
    integer dot product is exact; its conversion to fp32 and the two scalings round 3 times (3u of
    ||s_h q_h|| ||s_w q_w||). The residual's computation, fl(h - fl(s_h q_h)), is off by at most u ||s_h q_h||
    more (doubled), and the fp32 reference sum by gamma_K ||h|| ||w|| (doubled, as in `accumulation_factor`). The
    `fixed` term both kernels add, K * 2^-126 (1 + ||w||), covers subnormal roundings (here only the scalings')."""
    u = FP32_UNIT_ROUNDOFF
    return quantized, residuals + 2 * u * quantized + 2 * _gamma(hidden_size) * norms


@functools.cache
def screening_dtype(device_type: str) -> torch.dtype:
    """bf16 on a GPU, and on a CPU with bf16 instructions (AMX: ~2-4x fp32's speed, AVX512-BF16: ~2x);
    without them bf16 is emulated, ~10x slower than fp32 (both seen on our machines), so fp32.
    Decided from the CPU's flags, not a timing: a timing on a busy machine can say anything."""
    if device_type == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if cpu_flags() & {"amx_bf16", "avx512_bf16"} else torch.float32


class ScreenedProjection:
    """The exact SPLADE-max weights of token states [documents, tokens, hidden] under a decoder.

    The screen runs on this CPU's C kernel (`screen_kernels.fused_screen`: bf16 on AMX, int8 on AVX512-VNNI) unless
    `kernels` is False, `dtype` names another precision, or the decoder holds a weight that is not finite; otherwise
    it is torch's GEMM in `dtype` (by default `screening_dtype`'s)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, *, dtype: torch.dtype | None = None,
                 tiling: Tiling | None = None, kernels: bool = True):
        weight = weight.detach().float()
        device = weight.device
        self.tiling = tiling or (CUDA_TILING if device.type == "cuda" else CPU_TILING)
        self.weight = weight
        self.bias = torch.zeros(weight.shape[0], device=device) if bias is None else bias.detach().float()
        fused = (kernels and device.type == "cpu" and torch.isfinite(weight).all() and torch.isfinite(self.bias).all()
                 and screen_kernels.fused_screen())
        if dtype == torch.int8 and fused != "avx512_vnni":
            raise ValueError("an int8 screen runs on the AVX512-VNNI kernel alone, which this CPU does not run")
        self.fused, self.kernels = None, None
        if fused and dtype in (None, KERNEL_DTYPES[fused]):
            self.dtype, self.kernels = KERNEL_DTYPES[fused], screen_kernels.load()
            # Norms in float64: fp32 squares of tiny entries would underflow (then the bound with them).
            hidden, norms = weight.shape[1], weight.double().norm(dim=1)
            fixed = _rounded_up(hidden * FLUSHED * (1 + norms))
            if fused == "amx":  # the bound of `accumulation_factor`
                rounded = weight.to(torch.bfloat16)
                residual_norms = (weight.double() - rounded.double()).norm(dim=1)
                slacks = (MARGIN * norms, MARGIN * (residual_norms + hidden * FLUSHED))
                self.fused = screen_kernels.AmxScreen(self.kernels, rounded, self.bias, fixed, [_rounded_up(slack) for slack in slacks])
            else:  # the bound of `int8_bound_scales`
                levels, scales = screen_kernels.quantized_rows(weight)
                back = levels.double() * scales.double()[:, None]
                residual_norms, quantized_norms = (weight.double() - back).norm(dim=1), back.norm(dim=1)
                slacks = (MARGIN * (residual_norms + 3 * FP32_UNIT_ROUNDOFF * quantized_norms), MARGIN * norms)
                self.fused = screen_kernels.VnniScreen(self.kernels, levels, scales, self.bias, fixed,
                                                       [_rounded_up(slack) for slack in slacks])
        else:
            self.dtype = dtype or screening_dtype(device.type)
            # The bias rides in the product as one more column, [h, 1] . [w, b] = h.w + b: the tile's logits
            # are then negative nearly everywhere, as its integer reading needs, however a model splits
            # them between h.w and b (a large negative b with h.w > 0 would make every pair a candidate).
            # Zero columns keep the width a multiple of 8, as tensor cores want.
            # Its error is bounded apart: eps * (sum |h_i w_i| + |b|) <= eps * (||h|| ||w|| + |b|).
            hidden = weight.shape[1]
            augmented = torch.cat([weight, self.bias[:, None], weight.new_zeros(weight.shape[0], 7 - hidden % 8)], dim=1)
            columns, factor = augmented.shape[1], error_factor(self.dtype, augmented.shape[1])
            self.negated = (-augmented).to(self.dtype)  # negation is exact: the bound holds for -w as for w
            # in float64 (fp32 squares of tiny entries underflow, of huge ones overflow), rounded up to fp32
            self.bound = _rounded_up(factor * weight.double().norm(dim=1) + columns * FLUSHED)  # times the token's norm
            self.fixed_bound = _rounded_up(factor * self.bias.double().abs() + columns * FLUSHED * (1 + augmented.double().norm(dim=1)))

    @property
    def vocab_size(self) -> int:
        return self.weight.shape[0]

    def __call__(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[documents, vocabulary] float32 weights; `mask` marks the real tokens (one at least each)."""
        return self.sparse(states, mask).dense()

    def sparse(self, states: torch.Tensor, mask: torch.Tensor) -> SparseWeights:
        """The positive weights alone: what an index stores, without [documents, vocabulary] passes."""
        states = _padding_as_first_token(states.float(), mask.bool())
        with fp32_matmuls():
            upper, blocks = self.screened(states)
            # a NaN bound (0 x inf: a document of zeros under a weight row too large for fp32 norms) proves nothing
            documents, terms = (screen_kernels.candidate_pairs(self.kernels, upper) if self.kernels is not None
                                else (~(upper <= 0)).nonzero(as_tuple=True))
            pair_blocks = None if blocks is None else blocks[documents, terms]
            weights = torch.log1p(torch.relu(self.recheck(states, documents, terms, pair_blocks)))
        kept = weights != 0  # NaN stays, for the caller to refuse
        return SparseWeights(documents[kept], terms[kept], weights[kept], (states.shape[0], self.vocab_size))

    def screen(self, states: torch.Tensor) -> torch.Tensor:
        """An upper bound of each (document, term) max logit + bias (+inf where the torch screen saw a positive one)."""
        return self.screened(states)[0]

    def screened(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`screen`'s bounds, and where the C kernel ran, the block of 32 tokens that holds each exact maximum
        (-1 where the bound does not prove one; `screen_kernels.Screened`)."""
        blocks = None
        if isinstance(self.fused, screen_kernels.AmxScreen):  # `accumulation_factor`, from each document's largest norms
            # The kernel's blocks take 32 tokens (a copy of one changes no max).
            low, norms, residual, rounded = screen_kernels.rounded_with_norms(self.kernels, _length_padded(states))
            upper, blocks = self.fused(low, (residual + accumulation_factor(states.shape[2]) * norms, rounded))
        elif self.fused is not None:
            tokens, token_scales, offsets, norms, residual, quantized = screen_kernels.quantized_with_norms(
                self.kernels, _length_padded(states))
            upper, blocks = self.fused(tokens, token_scales, offsets, int8_bound_scales(states.shape[2], norms, residual, quantized))
        else:  # the bound of `error_factor`, on [h, 1, 0...] . [w, b, 0...]
            low = states.new_zeros(*states.shape[:2], self.negated.shape[1], dtype=self.dtype)
            low[..., : states.shape[2]], low[..., states.shape[2]] = states, 1
            norms = _rounded_up(torch.linalg.vector_norm(states, dim=2, dtype=torch.float64).amax(dim=1))
            upper = self.tiled_max(low) + self.fixed_bound + norms[:, None] * self.bound[None, :]
        if not (finite := torch.isfinite(norms)).all():  # NaN or Inf states: every weight is rechecked, and not finite
            upper[~finite] = torch.inf
            if blocks is not None:
                blocks[~finite] = -1
        return upper, blocks

    def tiled_max(self, low: torch.Tensor) -> torch.Tensor:
        """Each (document, term) max logit of low-precision states, +inf where one is positive; torch ops."""
        documents, length, hidden = low.shape
        bits = BITS_AS_INT[self.dtype]
        per_tile = max(1, self.tiling.rows // length)
        negated_min = torch.empty(documents, self.vocab_size, dtype=bits, device=low.device)
        block = torch.empty(per_tile * length * self.tiling.terms, dtype=self.dtype, device=low.device)
        for first in range(0, documents, per_tile):
            tokens = low[first : first + per_tile].reshape(-1, hidden)
            for start in range(0, self.vocab_size, self.tiling.terms):
                negated = self.negated[start : start + self.tiling.terms]
                logits = block[: tokens.shape[0] * negated.shape[0]].view(tokens.shape[0], negated.shape[0])
                torch.mm(tokens, negated.T, out=logits)
                torch.amin(logits.view(bits).view(-1, length, negated.shape[0]), dim=1,
                           out=negated_min[first : first + per_tile, start : start + negated.shape[0]])
        screened_max = -negated_min.view(self.dtype).float()
        screened_max[negated_min < 0] = torch.inf  # a positive logit (or -0.0): keep, recheck
        return screened_max

    def recheck(self, states: torch.Tensor, documents: torch.Tensor, terms: torch.Tensor,
                blocks: torch.Tensor | None = None) -> torch.Tensor:
        """fp32 max logit + bias of each (document, term) pair, pairs given in document order; where `blocks` (the
        C screen's, per pair) names a block of 32 tokens, the kernel's recheck sums that block's alone."""
        if terms.numel() == 0:
            return torch.zeros(0, device=states.device)
        if self.kernels is not None:  # where the C screen runs, its source's fused recheck
            return screen_kernels.max_dots(self.kernels, states, self.weight, documents, terms, blocks) + self.bias[terms]
        counts = torch.bincount(documents, minlength=states.shape[0])
        width = int(counts.max())
        # Each document's terms, padded to `width` with term 0 (computed, then dropped).
        offsets = torch.cumsum(counts, 0) - counts
        slot = torch.arange(terms.numel(), device=states.device) - offsets[documents]
        padded = torch.zeros(states.shape[0], width, dtype=torch.long, device=states.device)
        padded[documents, slot] = terms
        per_group = max(1, self.tiling.rows // states.shape[1])
        maxima = torch.cat([self._group_maxima(states[first : first + per_group], padded[first : first + per_group])
                            for first in range(0, states.shape[0], per_group)])
        return maxima[documents, slot] + self.bias[terms]

    def _group_maxima(self, states: torch.Tensor, terms: torch.Tensor) -> torch.Tensor:
        """[documents, width] fp32 max logits of each document's `terms` over its tokens: the rows of w
        taken by index_select (a third of advanced indexing's time) and the product laid out
        [terms x tokens], so that the max runs along contiguous memory (~1.7x faster in all)."""
        documents, width = terms.shape
        rows = torch.index_select(self.weight, 0, terms.flatten()).view(documents, width, -1)
        return torch.bmm(rows, states.transpose(1, 2)).amax(dim=2)


def _rounded_up(values: torch.Tensor) -> torch.Tensor:
    """float64 terms of a bound as fp32, never below their value: a plain cast rounds to nearest, and in the subnormal
    range (a tiny weight row's slack) by up to 50 %, which no MARGIN covers."""
    rounded = values.float()
    return torch.where(rounded.double() < values, torch.nextafter(rounded, torch.tensor(torch.inf, device=values.device)), rounded)


def _padding_as_first_token(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Padding positions take a copy of the document's first real token (the first position, unless the
    tokenizer pads on the left): a max over all positions is then the max over real tokens, with no
    masking in the tiles. The length is padded to a multiple of LENGTH_MULTIPLE the same way, so that a
    corpus meets a few tile shapes (oneDNN compiles a kernel for each new shape, ~25 ms here) instead of
    one per length."""
    if mask.all():  # no padding (a batch of documents cut at the maximum length): no copy
        return _length_padded(states)
    first_real = states[torch.arange(states.shape[0], device=states.device), mask.int().argmax(dim=1)]
    return _length_padded(torch.where(mask.unsqueeze(-1), states, first_real.unsqueeze(1)))


def _length_padded(states: torch.Tensor) -> torch.Tensor:
    extra = -states.shape[1] % LENGTH_MULTIPLE
    return torch.cat([states, states[:, :1].expand(-1, extra, -1)], dim=1) if extra else states


@contextmanager
def fp32_matmuls():
    """The bound needs fp32 accumulation and the recheck IEEE fp32 products, whatever the user has set:
    TF32 or bf16 for fp32 products (`torch.set_float32_matmul_precision`, which oneDNN follows on a CPU
    with bf16 instructions too), or reduced-precision reductions of bf16 products on a GPU."""
    cuda = torch.backends.cuda.matmul
    if hasattr(cuda, "fp32_precision"):  # torch >= 2.9: per backend (reading the legacy flags may raise)
        settings = [(cuda, "fp32_precision", "ieee"), (torch.backends.mkldnn.matmul, "fp32_precision", "ieee")]
    else:
        settings = [(cuda, "allow_tf32", False)]
    settings.append((cuda, "allow_bf16_reduced_precision_reduction", False))
    saved = [getattr(backend, name) for backend, name, _ in settings]
    for backend, name, value in settings:
        setattr(backend, name, value)
    try:
        yield
    finally:
        for (backend, name, _), value in zip(settings, saved):
            setattr(backend, name, value)

"""The screen's max-pooled projection in C (`screen_kernels.c`): in bf16 on Intel AMX tiles or, on a CPU without
AMX, in int8 on AVX512-VNNI dot products (AMD Zen 4 and later, Intel Cascade Lake to Ice Lake); built with the
system's C compiler on first use, cached, and called through ctypes.

oneDNN's GEMM writes the [tokens x terms] logits out and a second pass max-pools them; the kernel max-pools each
32 x 32 block of logits as it leaves the registers, so the logits never reach memory (on AMX ~3x the torch
screen's rate on our 2-core machine, `make bench`; it computes the tiles of the next 32 tokens while max-pooling
the last ones; on AVX512-VNNI 8 tokens x 32 terms of int32 sums stay in registers, ~2.1x the torch bf16 screen on
a 2-core AMD EPYC). It keeps the best and second best block of 32 tokens of each (document, term): where the
bound proves that the best block holds the exact maximum, the recheck sums that block's tokens alone (most
candidates on real states). The same library, in AVX-512, holds the passes around it: the states' bf16 rounding
or int8 quantization with the norms the bound needs (`rounded_with_norms`, `quantized_with_norms`), the candidate
pairs (`candidate_pairs`), and their fp32 recheck (`max_dots`). Its OpenMP threads share the terms (the
documents, in the recheck); built with -fopenmp and loaded after torch, it resolves to torch's own libgomp, so it
runs on torch's thread pool (torch.set_num_threads) rather than fighting a second pool for the cores.

`fused_screen()` says which screen this CPU runs (from /proc/cpuinfo): None where it has neither AMX nor
AVX512-VNNI, no C compiler is found, the build fails, or PIPELINE_SCREEN_KERNELS=0: the torch screen runs
instead, with the same output. Where Linux refuses AMX state, or the compiler knows no AMX (GCC < 11, Clang < 12:
the library is then built without its AMX code), the int8 screen runs.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("screen_kernels.c")
FLAGS = ["-O2", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-fopenmp", "-shared", "-fPIC"]
AMX_COMPILE_FLAGS = ["-mamx-tile", "-mamx-bf16"]  # without them (GCC < 11, Clang < 12): -DWITHOUT_AMX
TILE = 32  # tokens, hidden entries and terms per step of the kernel
AMX_FLAGS = {"amx_tile", "amx_bf16"}
# Without AMX: int8 dot products, and the AVX-512 the passes around the screen use.
VNNI_FLAGS = {"avx512_vnni", "avx512f", "avx512bw", "avx512vl"}
# Terms per block: the block's packed weights (terms x hidden entries) stay in a core's L2 while documents pass.
BLOCK_BYTES = 512 * 1024


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _cache_folder() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "splade-pipeline"


def _library(compiler: str, flags: list[str]) -> Path:
    """Where the library built by `compiler` with `flags` is cached: named by a hash of the source and flags."""
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join([compiler, *flags]).encode()).hexdigest()[:16]
    return _cache_folder() / f"screen_kernels-{digest}.so"


def _build(compiler: str, flags: list[str]) -> Path:
    """The kernels' shared library, compiled once per source and flags; written to a temporary name and renamed,
    so that concurrent ranks never load a half-written file."""
    library = _library(compiler, flags)
    if not library.is_file():
        library.parent.mkdir(parents=True, exist_ok=True)
        staging = library.with_name(f"{library.name}.{os.getpid()}.tmp")
        try:
            subprocess.run([compiler, *flags, "-o", str(staging), str(SOURCE)], check=True, capture_output=True, text=True)
            os.replace(staging, library)
        finally:
            staging.unlink(missing_ok=True)
    return library


def _build_with_amx_if_known(compiler: str) -> Path:
    """The library with its AMX code where the compiler knows AMX; else without it (the int8 screen still runs).
    A library built without it earlier is taken as it is: the compiler's refusal is not asked again."""
    without_amx = FLAGS + ["-DWITHOUT_AMX"]
    if _library(compiler, without_amx).is_file():
        return _library(compiler, without_amx)
    try:
        return _build(compiler, FLAGS + AMX_COMPILE_FLAGS)
    except subprocess.CalledProcessError:
        log.info("%s knows no AMX (GCC >= 11 and Clang >= 12 do): the kernels are built without the AMX screen", compiler)
        return _build(compiler, without_amx)


def cpu_flags() -> set[str]:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return set()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


@functools.cache
def load() -> ctypes.CDLL | None:
    """The kernels, ready to run in this process, or None (and why, logged once)."""
    if os.environ.get("PIPELINE_SCREEN_KERNELS", "1") == "0":
        return None
    compiler = shutil.which(os.environ.get("CC") or "cc")
    if compiler is None:
        log.info("no C compiler (cc, or $CC): the screen runs on torch's GEMM instead of the C kernel")
        return None
    try:
        library = ctypes.CDLL(str(_build_with_amx_if_known(compiler)))
    except (OSError, subprocess.CalledProcessError) as error:
        said = getattr(error, "stderr", "") or str(error)
        log.warning("could not build the screen's C kernel with %s (%s): the screen runs on torch's GEMM",
                    compiler, said.strip().splitlines()[-1] if said.strip() else error)
        return None
    if hasattr(library, "amx_max_pool"):
        library.amx_max_pool.argtypes = [ctypes.c_void_p] * 10 + [ctypes.c_int64] * 5
        library.amx_max_pool.restype = None
    library.vnni_max_pool.argtypes = [ctypes.c_void_p] * 13 + [ctypes.c_int64] * 5
    library.quantized_with_norms.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 4
    library.max_dots.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 3
    library.max_dots.restype = ctypes.c_int
    library.candidate_pairs.argtypes = [ctypes.c_void_p] + [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 2
    library.candidate_pairs.restype = ctypes.c_int64
    library.rounded_with_norms.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 3
    for name in ("vnni_max_pool", "quantized_with_norms", "rounded_with_norms"):
        getattr(library, name).restype = None
    return library


@functools.cache
def fused_screen() -> str | None:
    """What the fused screen runs on in this process: "amx" (bf16 tiles), "avx512_vnni" (int8 dot products), or
    None (the torch screen runs)."""
    flags = cpu_flags()
    has_amx, has_vnni = AMX_FLAGS <= flags, VNNI_FLAGS <= flags
    if not (has_amx or has_vnni) or (library := load()) is None:
        return None
    if has_amx and hasattr(library, "amx_request") and library.amx_request() == 0:
        return "amx"
    if has_amx and hasattr(library, "amx_request"):
        log.warning("Linux refused this process AMX state: the screen runs on %s",
                    "AVX512-VNNI" if has_vnni else "torch's GEMM")
    return "avx512_vnni" if has_vnni else None


class Screened(NamedTuple):
    """The screen's output: each (document, term)'s upper bound of its max logit + bias, and the block of 32 tokens
    that holds the exact maximum where the bound proves there is one (int16; -1 where it does not)."""

    upper: torch.Tensor
    blocks: torch.Tensor


class _KernelScreen:
    """What both screens share: the bias and the bound's terms over a vocabulary padded to 32 (padding terms are
    never candidates), the blocks of terms each thread takes, and the output."""

    def __init__(self, library: ctypes.CDLL, vocab: int, hidden: int, bias: torch.Tensor, fixed: torch.Tensor,
                 slacks: tuple[torch.Tensor, torch.Tensor], *, bytes_per_entry: int):
        self.library, self.vocab_size, self.hidden = library, vocab, _round_up(hidden, TILE)
        padded_vocab = _round_up(vocab, TILE)
        self.bias = torch.full((padded_vocab,), -torch.inf)
        self.bias[:vocab] = bias
        self.fixed, *self.slacks = [torch.zeros(padded_vocab) for _ in range(3)]
        for padded_slack, slack in zip([self.fixed, *self.slacks], [fixed, *slacks]):
            padded_slack[:vocab] = slack
        self.block_terms = max(TILE, BLOCK_BYTES // (self.hidden * bytes_per_entry) // TILE * TILE)

    def _padded(self, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        padded = torch.zeros(self.bias.shape[0], self.hidden, dtype=dtype)
        padded[: weight.shape[0], : weight.shape[1]] = weight
        return padded

    def _run(self, kernel, tokens: torch.Tensor, inputs: list[torch.Tensor], scales: tuple[torch.Tensor, torch.Tensor]) -> Screened:
        documents, length, hidden = tokens.shape
        if length % TILE:
            raise ValueError(f"the screen kernel takes documents of a multiple of {TILE} tokens, not {length}")
        if hidden != self.hidden:
            tokens = F.pad(tokens, (0, self.hidden - hidden))
        tokens, scales = tokens.contiguous(), [scale.float().contiguous() for scale in scales]
        out = torch.empty(documents, self.bias.shape[0])
        blocks = torch.empty(documents, self.bias.shape[0], dtype=torch.int16)
        kernel(tokens.data_ptr(), *(tensor.data_ptr() for tensor in inputs), self.bias.data_ptr(), self.fixed.data_ptr(),
               *(slack.data_ptr() for slack in self.slacks), *(scale.data_ptr() for scale in scales),
               out.data_ptr(), blocks.data_ptr(), documents, length, self.hidden, out.shape[1], self.block_terms)
        return Screened(out[:, : self.vocab_size], blocks[:, : self.vocab_size])


class AmxScreen(_KernelScreen):
    """upper[d, v] = max over document d's tokens of tokens[d] @ weight[v] (bf16 products summed in fp32 on AMX tiles)
    + bias[v] + bound[d, v], bound = fixed[v] + scales[0][d] * slacks[0][v] + scales[1][d] * slacks[1][v] (the
    screen's error bound), in one pass; blocks[d, v] is the block whose maximum exceeds every other block's
    by more than twice the bound (so the exact maximum is in it), else -1. The process must have been granted
    AMX state (`fused_screen` asks for it)."""

    def __init__(self, library: ctypes.CDLL, weight: torch.Tensor, bias: torch.Tensor, fixed: torch.Tensor,
                 slacks: tuple[torch.Tensor, torch.Tensor]):
        super().__init__(library, *weight.shape, bias, fixed, slacks, bytes_per_entry=2)
        # AMX's B operand: 16 terms x 32 hidden entries per tile, entries in adjacent pairs per term (VNNI).
        padded = self._padded(weight, torch.bfloat16)
        self.packed = padded.view(-1, 16, self.hidden // TILE, 16, 2).permute(0, 2, 3, 1, 4).contiguous()

    def __call__(self, tokens: torch.Tensor, scales: tuple[torch.Tensor, torch.Tensor]) -> Screened:
        """[documents, vocabulary] fp32 bounds and int16 blocks of bf16 tokens [documents, length, hidden] (length a
        multiple of 32), with fp32 scales [documents]."""
        return self._run(self.library.amx_max_pool, tokens, [self.packed], scales)


class VnniScreen(_KernelScreen):
    """`AmxScreen`'s bounds and blocks in int8 on AVX512-VNNI: the logit of token t and term v is
    s_t * s_v * (q_t . q_v) of int8 rows q and fp32 scales s (`quantized_rows`, `quantized_with_norms`)."""

    def __init__(self, library: ctypes.CDLL, weight: torch.Tensor, term_scales: torch.Tensor, bias: torch.Tensor,
                 fixed: torch.Tensor, slacks: tuple[torch.Tensor, torch.Tensor]):
        super().__init__(library, *weight.shape, bias, fixed, slacks, bytes_per_entry=1)
        # q_v + 128 as unsigned bytes, 16 terms x 4 hidden entries per vector: [vocabulary / 16][hidden / 4][16][4].
        shifted = (self._padded(weight, torch.int16) + 128).to(torch.uint8)
        self.packed = shifted.view(-1, 16, self.hidden // 4, 4).permute(0, 2, 1, 3).contiguous()
        self.term_scales = torch.zeros(self.bias.shape[0])
        self.term_scales[: weight.shape[0]] = term_scales

    def __call__(self, tokens: torch.Tensor, token_scales: torch.Tensor, token_offsets: torch.Tensor,
                 scales: tuple[torch.Tensor, torch.Tensor]) -> Screened:
        """[documents, vocabulary] fp32 bounds and int16 blocks of int8 tokens [documents, length, hidden] (length a
        multiple of 32) with their scales and offsets [documents, length] (`quantized_with_norms`)."""
        inputs = [token_scales.float().contiguous(), token_offsets.int().contiguous(), self.packed, self.term_scales]
        return self._run(self.library.vnni_max_pool, tokens, inputs, scales)


def quantized_rows(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row x of fp32 `matrix` as q * s: s = max |x| / 127 (fp32) and q = round(x / s) (int8, dividing in
    float64; `quantized_with_norms` multiplies by an fp32 reciprocal, so its levels may differ by one). Any levels
    keep the bound sound: it is computed from the residual x - s q of the levels chosen."""
    scales = matrix.float().abs().amax(dim=1) / 127
    levels = torch.round(matrix.double() / torch.where(scales > 0, scales, 1).double()[:, None])
    return levels.clamp(-127, 127).to(torch.int8), scales


def candidate_pairs(library: ctypes.CDLL, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(documents, terms) of the entries of fp32 `upper` [documents, vocabulary] (rows contiguous) that are not <= 0
    (positive, or NaN), in row-major order: `(~(upper <= 0)).nonzero(as_tuple=True)` in one pass (~2.5x faster on
    our 2 cores)."""
    if upper.dtype != torch.float32 or upper.stride(1) != 1:
        raise ValueError("candidate_pairs takes fp32 rows with contiguous entries")
    pairs = torch.empty(2, upper.numel(), dtype=torch.int64)  # room for every entry: pages touched only as written
    count = library.candidate_pairs(upper.data_ptr(), upper.shape[0], upper.stride(0), upper.shape[1],
                                   pairs[0].data_ptr(), pairs[1].data_ptr())
    return pairs[0, :count], pairs[1, :count]


def rounded_with_norms(library: ctypes.CDLL, states: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """fp32 states [documents, length, hidden] as bf16 (torch's rounding), and per document the largest token
    norm of the states, of their rounding residual and of the rounded states ([documents] each, all NaN where
    a norm is NaN): the screen's inputs, in one pass instead of six torch ones."""
    states = states.float().contiguous()
    low, norms = torch.empty(states.shape, dtype=torch.bfloat16), torch.empty(states.shape[0], 3)
    library.rounded_with_norms(states.data_ptr(), low.data_ptr(), norms.data_ptr(), *states.shape)
    return low, *norms.unbind(dim=1)


def quantized_with_norms(library: ctypes.CDLL, states: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """fp32 states [documents, length, hidden] as int8 tokens (hidden padded to a multiple of 32 with zeros), their
    scales and offsets [documents, length] (`VnniScreen`), and per document the largest token norm of the states, of
    the residual states - s * q and of s * q ([documents] each; NaN, or infinite, where a norm is): the int8 screen's
    inputs in one pass."""
    states = states.float().contiguous()
    documents, length, hidden = states.shape
    tokens = torch.empty(documents, length, _round_up(hidden, TILE), dtype=torch.int8)
    scales, offsets = torch.empty(documents, length), torch.empty(documents, length, dtype=torch.int32)
    norms = torch.empty(documents, 3)
    library.quantized_with_norms(states.data_ptr(), tokens.data_ptr(), scales.data_ptr(), offsets.data_ptr(),
                                 norms.data_ptr(), documents, length, hidden, tokens.shape[2])
    return tokens, scales, offsets, *norms.unbind(dim=1)


def max_dots(library: ctypes.CDLL, states: torch.Tensor, weight: torch.Tensor, documents: torch.Tensor,
             terms: torch.Tensor, blocks: torch.Tensor | None = None) -> torch.Tensor:
    """The screen's exact recheck: for each candidate (document, term), given in document order, the fp32
    max over the document's tokens of token . weight[term], NaN where one is NaN; over the 32 tokens of
    `blocks[c]` alone where it is >= 0 (the screen's `Screened.blocks` of the pair: that block holds the max).
    fp32 states [documents, length, hidden] (length a multiple of 32) and weight [vocabulary, hidden]; its sums
    and maxima stay in registers (~1.5x torch's bmm, which writes every [terms x tokens] product out)."""
    count, length, hidden = states.shape
    if length % TILE or weight.shape[1] != hidden:
        raise ValueError(f"the recheck kernel takes documents of a multiple of {TILE} tokens and a weight of their "
                         f"hidden size, not {length} tokens of {hidden} and a weight of {weight.shape[1]}")
    starts = torch.zeros(count + 1, dtype=torch.int64)
    torch.cumsum(torch.bincount(documents, minlength=count), 0, out=starts[1:])
    states, weight, terms = states.float().contiguous(), weight.float().contiguous(), terms.to(torch.int64).contiguous()
    if blocks is not None:
        blocks = blocks.to(torch.int16).contiguous()
    out = torch.empty(terms.numel())
    if library.max_dots(states.data_ptr(), weight.data_ptr(), starts.data_ptr(), terms.data_ptr(),
                        None if blocks is None else blocks.data_ptr(), out.data_ptr(), count, length, hidden):
        most = int(starts.diff().max()) if count else 0
        raise MemoryError(f"the recheck kernel could not allocate its buffers per thread: a document's states "
                          f"({length} x {hidden} floats) and an index per candidate of a document (up to {most})")
    return out

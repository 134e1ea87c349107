"""The screen's max-pooled bf16 projection in C (`screen_kernels.c`), on Intel AMX tiles or, on a CPU without AMX
(AMD Zen 4 and later), on AVX512-BF16 dot products; built with the system's C compiler on first use, cached, and
called through ctypes.

oneDNN's bf16 GEMM writes the [tokens x terms] logits out and a second pass max-pools them; the kernel
max-pools each 32 x 32 block of logits as it leaves the registers, so the logits never reach memory
(on AMX ~3x the torch screen's rate on our 2-core machine, `make bench`; it computes the tiles of the next 32
tokens while max-pooling the last ones; on AVX512-BF16 ~1.25x, 8 tokens x 32 terms of sums in registers). It
keeps the best and second best block of 32 tokens of each (document, term): where the bound proves that the
best block holds the exact maximum, the recheck sums that block's tokens alone (most candidates on real states).
The same library, in AVX-512, holds the passes around it: the states' bf16 rounding with the norms the bound
needs (`rounded_with_norms`), the candidate pairs (`positive_pairs`), and their fp32 recheck (`max_dots`). Its
OpenMP threads share the terms (the documents, in the recheck); built with -fopenmp and loaded after torch, it
resolves to torch's own libgomp, so it runs on torch's thread pool (torch.set_num_threads) rather than fighting
a second pool for the cores.

`fused_screen()` says which screen this CPU runs (from /proc/cpuinfo): None where it has neither AMX nor
AVX512-BF16, no C compiler is found, the build fails (e.g. a compiler without AMX intrinsics, GCC < 11), or
PIPELINE_SCREEN_KERNELS=0: the torch screen runs instead, with the same output. Where Linux refuses AMX state,
the AVX512-BF16 screen runs.
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
FLAGS = ["-O2", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-mamx-tile", "-mamx-bf16", "-fopenmp",
         "-shared", "-fPIC"]
TILE = 32  # tokens, hidden entries and terms per step of the kernel
AMX_FLAGS = {"amx_tile", "amx_bf16"}
# Without AMX: bf16 dot products, and the AVX-512 the passes around the screen use.
DOT_FLAGS = {"avx512_bf16", "avx512f", "avx512bw", "avx512vl"}
# Terms per block: the block's packed weights (terms x hidden bf16) stay in a core's L2 while documents pass.
BLOCK_BYTES = 512 * 1024


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _cache_folder() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "splade-pipeline"


def _build(compiler: str) -> Path:
    """The kernel's shared library, compiled once per source and flags (named by their hash); written to a
    temporary name and renamed, so that concurrent ranks never load a half-written file."""
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join([compiler, *FLAGS]).encode()).hexdigest()[:16]
    library = _cache_folder() / f"screen_kernels-{digest}.so"
    if not library.is_file():
        library.parent.mkdir(parents=True, exist_ok=True)
        staging = library.with_name(f"{library.name}.{os.getpid()}.tmp")
        try:
            subprocess.run([compiler, *FLAGS, "-o", str(staging), str(SOURCE)], check=True, capture_output=True, text=True)
            os.replace(staging, library)
        finally:
            staging.unlink(missing_ok=True)
    return library


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
        log.info("no C compiler (cc, or $CC): the screen runs on torch's bf16 GEMM instead of the C kernel")
        return None
    try:
        library = ctypes.CDLL(str(_build(compiler)))
    except (OSError, subprocess.CalledProcessError) as error:
        said = getattr(error, "stderr", "") or str(error)
        log.warning("could not build the screen's C kernel with %s (%s): the screen runs on torch's bf16 GEMM",
                    compiler, said.strip().splitlines()[-1] if said.strip() else error)
        return None
    library.max_pool.argtypes = [ctypes.c_void_p] * 10 + [ctypes.c_int64] * 5 + [ctypes.c_int]
    library.max_pool.restype = None
    library.max_dots.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 3
    library.max_dots.restype = ctypes.c_int
    library.positive_pairs.argtypes = [ctypes.c_void_p] + [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 2
    library.positive_pairs.restype = ctypes.c_int64
    library.rounded_with_norms.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 3
    library.rounded_with_norms.restype = None
    return library


@functools.cache
def fused_screen() -> str | None:
    """What the fused screen runs on in this process: "amx", "avx512_bf16", or None (the torch screen runs)."""
    flags = cpu_flags()
    has_amx, has_dot = AMX_FLAGS <= flags, DOT_FLAGS <= flags
    if not (has_amx or has_dot) or (library := load()) is None:
        return None
    if has_amx and library.amx_request() == 0:
        return "amx"
    if has_amx:
        log.warning("Linux refused this process AMX state: the screen runs on %s",
                    "AVX512-BF16" if has_dot else "torch's bf16 GEMM")
    return "avx512_bf16" if has_dot else None


class Screened(NamedTuple):
    """The screen's output: each (document, term)'s upper bound of its max logit + bias, and the block of 32 tokens
    that holds the exact maximum where the bound proves there is one (int16; -1 where it does not)."""

    upper: torch.Tensor
    blocks: torch.Tensor


class FusedScreen:
    """upper[d, v] = max over document d's tokens of tokens[d] @ weight[v] (bf16 products summed in fp32)
    + bias[v] + bound[d, v], bound = fixed[v] + scales[0][d] * slacks[0][v] + scales[1][d] * slacks[1][v] (the
    screen's error bound), in one pass; blocks[d, v] is the block whose maximum exceeds every other block's
    by more than twice the bound (so the exact maximum is in it), else -1. On `instructions`, as `fused_screen`
    names them: "amx" (tiles; this process must have been granted AMX state) or "avx512_bf16"."""

    def __init__(self, library: ctypes.CDLL, weight: torch.Tensor, bias: torch.Tensor, fixed: torch.Tensor,
                 slacks: tuple[torch.Tensor, torch.Tensor], *, instructions: str):
        vocab, hidden = weight.shape
        self.library, self.instructions, self.vocab_size, self.hidden = library, instructions, vocab, _round_up(hidden, TILE)
        padded_vocab = _round_up(vocab, TILE)
        padded = torch.zeros(padded_vocab, self.hidden, dtype=torch.bfloat16)
        padded[:vocab, :hidden] = weight
        # AMX's B operand: 16 terms x 32 hidden entries per tile, entries in adjacent pairs per term (VNNI); the
        # dot products read the same bytes as [vocabulary / 16][hidden / 2][16 terms][2].
        self.packed = padded.view(-1, 16, self.hidden // TILE, 16, 2).permute(0, 2, 3, 1, 4).contiguous()
        self.bias = torch.full((padded_vocab,), -torch.inf)  # padding terms: never candidates
        self.bias[:vocab] = bias
        self.fixed, *self.slacks = [torch.zeros(padded_vocab) for _ in range(3)]
        for padded_slack, slack in zip([self.fixed, *self.slacks], [fixed, *slacks]):
            padded_slack[:vocab] = slack
        self.block_terms = max(TILE, BLOCK_BYTES // (self.hidden * 2) // TILE * TILE)

    def __call__(self, tokens: torch.Tensor, scales: tuple[torch.Tensor, torch.Tensor]) -> Screened:
        """[documents, vocabulary] fp32 bounds and int16 blocks of bf16 tokens [documents, length, hidden] (length a
        multiple of 32), with fp32 scales [documents]."""
        documents, length, hidden = tokens.shape
        if length % TILE:
            raise ValueError(f"the screen kernel takes documents of a multiple of {TILE} tokens, not {length}")
        if hidden != self.hidden:
            tokens = F.pad(tokens, (0, self.hidden - hidden))
        tokens, scales = tokens.contiguous(), [scale.float().contiguous() for scale in scales]
        out = torch.empty(documents, self.bias.shape[0])
        blocks = torch.empty(documents, self.bias.shape[0], dtype=torch.int16)
        self.library.max_pool(tokens.data_ptr(), self.packed.data_ptr(), self.bias.data_ptr(), self.fixed.data_ptr(),
                              *(slack.data_ptr() for slack in self.slacks), *(scale.data_ptr() for scale in scales),
                              out.data_ptr(), blocks.data_ptr(), documents, length, self.hidden, out.shape[1],
                              self.block_terms, self.instructions == "amx")
        return Screened(out[:, : self.vocab_size], blocks[:, : self.vocab_size])


def positive_pairs(library: ctypes.CDLL, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(documents, terms) of the positive entries of fp32 `upper` [documents, vocabulary] (rows contiguous),
    in row-major order: `(upper > 0).nonzero(as_tuple=True)` in one pass (~2.5x faster on our 2 cores)."""
    if upper.dtype != torch.float32 or upper.stride(1) != 1:
        raise ValueError("positive_pairs takes fp32 rows with contiguous entries")
    pairs = torch.empty(2, upper.numel(), dtype=torch.int64)  # room for every entry: pages touched only as written
    count = library.positive_pairs(upper.data_ptr(), upper.shape[0], upper.stride(0), upper.shape[1],
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

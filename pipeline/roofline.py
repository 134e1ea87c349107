"""This machine's measured matrix-multiply throughput, the limit encoding speed is judged against.

Three shapes: a large square GEMM (the usual roofline figure), the vocabulary projection done whole
([tokens x hidden] x [hidden x vocabulary], its output far beyond cache), and one cache-resident tile
of the screened projection (`pipeline.splade.screened_projection.CPU_TILING`); in fp32, bf16 and int8.
"""

from __future__ import annotations

import time

import torch

from pipeline.splade.screened_projection import CPU_TILING

SHAPES = {  # name: (rows, inner, columns)
    "square_2048": (2048, 2048, 2048),
    "projection_whole": (4096, 128, 30522),
    "projection_tile": (CPU_TILING.rows, 128, CPU_TILING.terms),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}


def _multiply(dtype: torch.dtype):
    if dtype == torch.int8:
        return lambda left, right, out: torch._int_mm(left, right, out=out)
    return lambda left, right, out: torch.mm(left, right, out=out)


def gemm_rate(dtype: torch.dtype, rows: int, inner: int, columns: int, *, seconds: float = 0.5) -> float:
    """Sustained GFLOP/s (GOP/s for int8) of rows x inner x columns products, repeated for `seconds`.
    The right operand is a transposed row-major matrix, as a decoder weight is read."""
    if dtype == torch.int8:
        left = torch.randint(-127, 128, (rows, inner), dtype=dtype)
        right = torch.randint(-127, 128, (columns, inner), dtype=dtype).T
        out = torch.empty(rows, columns, dtype=torch.int32)
    else:
        left, right = torch.randn(rows, inner).to(dtype), torch.randn(columns, inner).to(dtype).T
        out = torch.empty(rows, columns, dtype=dtype)
    multiply = _multiply(dtype)
    multiply(left, right, out)  # warm-up: kernel selection and JIT
    repeats, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds or repeats < 2:
        multiply(left, right, out)
        repeats += 1
    return 2 * rows * inner * columns * repeats / elapsed / 1e9


def measure() -> dict:
    """{dtype: {shape: rate}} plus the best rate and where it was seen."""
    rates = {name: {shape: gemm_rate(dtype, *dims) for shape, dims in SHAPES.items()} for name, dtype in DTYPES.items()}
    best = max(((rate, dtype, shape) for dtype, by_shape in rates.items() for shape, rate in by_shape.items()))
    return {"gflops": rates, "best_gflops": best[0], "best_at": f"{best[1]} {best[2]}",
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}

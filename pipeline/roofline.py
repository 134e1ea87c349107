"""This machine's measured matrix-multiply throughput, the limit encoding speed is judged against.

On a CPU, three shapes: a large square GEMM (the usual roofline figure), the vocabulary projection done
whole ([tokens x hidden] x [hidden x vocabulary], its output far beyond cache), and one cache-resident
tile of the screened projection (`pipeline.splade.screened_projection.CPU_TILING`); in fp32, bf16 and
int8. On a GPU, a square GEMM large enough to fill it and BERT-base's projection of a batch of 256
passages of 128 tokens, in true fp32 (no TF32) and bf16.
"""

from __future__ import annotations

import time

import torch

from pipeline.splade.screened_projection import CPU_TILING, fp32_matmuls

SHAPES = {  # name: (rows, inner, columns)
    "square_2048": (2048, 2048, 2048),
    "projection_whole": (4096, 128, 30522),
    "projection_tile": (CPU_TILING.rows, 128, CPU_TILING.terms),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}
GPU_SHAPES = {"square_8192": (8192, 8192, 8192), "projection_bert_base": (256 * 128, 768, 30522)}
GPU_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _multiply(dtype: torch.dtype):
    if dtype == torch.int8:
        return lambda left, right, out: torch._int_mm(left, right, out=out)
    return lambda left, right, out: torch.mm(left, right, out=out)


def gemm_rate(dtype: torch.dtype, rows: int, inner: int, columns: int, *, seconds: float = 0.5,
              device: str = "cpu") -> float:
    """Sustained GFLOP/s (GOP/s for int8) of rows x inner x columns products, repeated for `seconds`.
    The right operand is a transposed row-major matrix, as a decoder weight is read."""
    if dtype == torch.int8:
        left = torch.randint(-127, 128, (rows, inner), dtype=dtype, device=device)
        right = torch.randint(-127, 128, (columns, inner), dtype=dtype, device=device).T
        out = torch.empty(rows, columns, dtype=torch.int32, device=device)
    else:
        left = torch.randn(rows, inner, device=device).to(dtype)
        right = torch.randn(columns, inner, device=device).to(dtype).T
        out = torch.empty(rows, columns, dtype=dtype, device=device)
    multiply, wait = _multiply(dtype), torch.cuda.synchronize if device == "cuda" else lambda: None
    with fp32_matmuls():  # true fp32 on a GPU, whatever TF32 setting the user has on
        multiply(left, right, out)  # warm-up: kernel selection and JIT
        wait()
        repeats, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds or repeats < 2:
            multiply(left, right, out)
            repeats += 1
            wait()
    return 2 * rows * inner * columns * repeats / elapsed / 1e9


def measure(device: str = "cpu") -> dict:
    """{dtype: {shape: rate}} plus the best rate and where it was seen, on the CPU or the GPU."""
    shapes, dtypes = (GPU_SHAPES, GPU_DTYPES) if device == "cuda" else (SHAPES, DTYPES)
    rates = {name: {shape: gemm_rate(dtype, *dims, device=device) for shape, dims in shapes.items()}
             for name, dtype in dtypes.items()}
    best = max(((rate, dtype, shape) for dtype, by_shape in rates.items() for shape, rate in by_shape.items()))
    found = {"gflops": rates, "best_gflops": best[0], "best_at": f"{best[1]} {best[2]}"}
    if device == "cuda":
        return {**found, "device": torch.cuda.get_device_name()}
    return {**found, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}

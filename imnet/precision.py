"""Devices and numeric precision: one policy for training and inference.

    device = resolve_device("auto")                 # cuda, else mps, else cpu
    precision = resolve_precision(device, "auto")   # "bf16" where it runs fast, else "fp32"
    with autocast(device, precision):
        loss = model(...)

bfloat16 autocast halves memory traffic and, on hardware with bf16 matrix units, multiplies matmul
throughput (NVIDIA Ampere and later; x86 CPUs with AVX-512-BF16 / AMX). On CPUs without them it
is emulated and far slower than float32 (measured on an AVX2-only AMD EPYC: 0.9 GFLOP/s in bf16
against 139 in fp32; on a Xeon with AVX-512-BF16 but no AMX, 136-147 against 240-252). So "auto"
decides per device:

- cuda: bf16 when `torch.cuda.is_bf16_supported()`.
- mps: fp32 (bf16 support differs between macOS releases; fp32 is always correct).
- cpu: a measured check, done once per process (~50 ms): bf16 is chosen only when a bf16 matmul
  runs at least `CPU_BF16_MIN_SPEEDUP` times faster than the same one in fp32.

"bf16" and "fp32" force the choice. Whatever was chosen is what a run records in its config.
"""

from __future__ import annotations

import contextlib
import functools
import time

import torch

__all__ = ["PRECISIONS", "resolve_device", "resolve_precision", "autocast", "bf16_is_fast"]

PRECISIONS = ("auto", "bf16", "fp32")

CPU_BF16_MIN_SPEEDUP = 1.5
"""bf16 must beat fp32 by this factor on the CPU's matmul to be chosen: below it, the rounding costs
accuracy for little time."""


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> the best available of cuda, mps, cpu; otherwise the named device, checked."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name not in ("cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but PyTorch sees no CUDA GPU here; use --device cpu")
    if name == "mps" and not _mps_available():
        raise ValueError("--device mps was asked for, but MPS is not available here; use --device cpu")
    return torch.device(name)


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_precision(device: torch.device | str, requested: str = "auto") -> str:
    """The precision to run with on `device`: "bf16" or "fp32" (see the module docstring)."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested != "auto":
        return requested
    return "bf16" if bf16_is_fast(torch.device(device).type) else "fp32"


@functools.cache
def bf16_is_fast(device_type: str) -> bool:
    """Whether bfloat16 autocast pays on this kind of device (cached: measured once per process)."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type != "cpu":
        return False
    return _cpu_bf16_speedup() >= CPU_BF16_MIN_SPEEDUP


def _cpu_bf16_speedup(size: int = 256, repeats: int = 3) -> float:
    """Throughput of a bf16 matmul over an fp32 one of the same size on this CPU."""

    def seconds(dtype: torch.dtype) -> float:
        a = torch.randn(size, size).to(dtype)
        b = torch.randn(size, size).to(dtype)
        a @ b  # warm-up: first calls pick kernels
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
        return best

    return seconds(torch.float32) / max(seconds(torch.bfloat16), 1e-9)


def autocast(device: torch.device | str, precision: str):
    """Context for a forward pass in `precision` ("bf16" autocast, or a no-op for "fp32")."""
    device = torch.device(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"precision must be 'bf16' or 'fp32' here (resolve 'auto' first), got {precision!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16)

"""NVTX ranges for profiling (Nsight Systems). No-ops on the CPU and while torch.compile traces."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

__all__ = ["nvtx_range"]


@contextlib.contextmanager
def nvtx_range(name: str) -> Iterator[None]:
    """Mark ``name`` as an NVTX range when CUDA is available; free otherwise."""
    if torch.compiler.is_compiling() or not torch.cuda.is_available():
        yield
        return
    torch.cuda.nvtx.range_push(name)
    try:
        yield
    finally:
        torch.cuda.nvtx.range_pop()

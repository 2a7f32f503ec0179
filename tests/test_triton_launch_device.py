"""Every Triton launch happens with its tensors' CUDA device made current (``kernels.on_device``):
Triton launches on the current device, so without it a model on ``cuda:1`` (``--device cuda:1``,
one process) fails with "Pointer argument cannot be accessed from Triton". Checked here by
recording the guard around each launch of the six kernels (forward and backward of the three
ops) under the interpreter, and by the guard's own choices."""

from __future__ import annotations

import contextlib
import types

import pytest
import torch

from test_triton_compile import DEVICE, needs_kernels  # the interpreter's setup and the skip without kernels

import kernels  # noqa: E402  (after TRITON_INTERPRET is settled)
from kernels import film_layernorm, skeletal_attention, temporal_attention  # noqa: E402
from sald_fast import ops  # noqa: E402

pytestmark = pytest.mark.triton


def test_the_guard_makes_a_cuda_tensors_device_current_and_nothing_else():
    assert isinstance(kernels.on_device(torch.zeros(1)), contextlib.nullcontext)
    assert isinstance(kernels.on_device(torch.zeros(1, device="meta")), contextlib.nullcontext)
    guard = kernels.on_device(types.SimpleNamespace(device=torch.device("cuda", 1)))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1


@needs_kernels
def test_every_launch_runs_inside_the_device_guard(monkeypatch):
    entered = []
    inside = []

    @contextlib.contextmanager
    def recording(t):
        entered.append(t.device)
        inside.append(True)
        try:
            yield
        finally:
            inside.pop()

    for module in (film_layernorm, temporal_attention, skeletal_attention):
        monkeypatch.setattr(module, "on_device", recording)
    launched_outside = []
    original_wrap = kernels.identity_wrap

    def checking_wrap(kernel):
        if not inside:
            launched_outside.append(getattr(kernel, "__name__", repr(kernel)))
        return original_wrap(kernel)

    from sald_fast.ops import triton_backend

    monkeypatch.setattr(triton_backend, "_WRAP", checking_wrap)
    g = torch.Generator().manual_seed(0)
    B, N, J, H, d = 1, 5, 3, 2, 16
    q, k, v = (torch.randn(B, N, J, H, d, generator=g).to(DEVICE).requires_grad_() for _ in range(3))
    z, h = (torch.randn(B, N, J, H * d, generator=g).to(DEVICE).requires_grad_() for _ in range(2))
    gamma, beta = (torch.randn(B, H * d, generator=g).to(DEVICE).requires_grad_() for _ in range(2))
    out = ops.temporal_attention(q, k, v, torch.tensor([4], device=DEVICE), backend="triton")
    out = out + ops.skeletal_attention(q, k, v, backend="triton")
    z_new, y = ops.film_residual_layernorm(z, h, gamma, beta, backend="triton")
    (out.sum() + z_new.sum() + y.sum()).backward()
    assert not launched_outside, launched_outside
    assert len(entered) >= 6 and all(dev == torch.device(DEVICE) or dev.type == DEVICE for dev in entered)

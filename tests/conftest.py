"""Test-session settings (one place for the whole suite): one intra-op thread (the CI machine has 2 cores and many small ops run
faster unthreaded) and Triton's interpreter when there is no GPU, set before Triton is imported."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _aot_cache(tmp_path_factory):
    """Compiled denoiser libraries (sald_fast.aot) go to a directory of this session, not
    the user's cache: each session compiles what it uses, once."""
    old = os.environ.get("SALD_FAST_CACHE")
    os.environ["SALD_FAST_CACHE"] = str(tmp_path_factory.mktemp("sald_fast_cache"))
    yield
    if old is None:
        os.environ.pop("SALD_FAST_CACHE", None)
    else:
        os.environ["SALD_FAST_CACHE"] = old


@pytest.fixture(autouse=True)
def _fresh_auto_choices():
    """Tests patch the dispatcher's tables: each starts (and leaves) with no remembered auto choice."""
    from sald_fast.ops import dispatch

    dispatch.clear_auto_choices()
    yield
    dispatch.clear_auto_choices()


@pytest.fixture(autouse=True)
def _fp32_matmul_precision():
    """Training entry points set ``torch.set_float32_matmul_precision("high")`` (TF32 on a GPU) for
    their process; a test that runs one leaves the rest of the suite on full fp32 precision."""
    before = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(before)

"""Test-session settings (one place for the whole suite): one intra-op thread (the CI machine has 2 cores and many small ops run
faster unthreaded) and Triton's interpreter when there is no GPU, set before Triton is imported."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_auto_choices():
    """Tests patch the dispatcher's tables: each starts (and leaves) with no remembered auto choice."""
    from sald_fast.ops import dispatch

    dispatch.clear_auto_choices()
    yield
    dispatch.clear_auto_choices()

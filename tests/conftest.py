"""Test-session settings (one place for the whole suite): one intra-op thread (the CI machine has 2 cores and many small ops run
faster unthreaded) and Triton's interpreter when there is no GPU, set before Triton is imported."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(1)

"""Helpers shared by test modules: the C++ extension or a skip, the Triton device or a skip.

(``tests/conftest.py`` has already switched Triton's interpreter on when there is no GPU.)
"""

from __future__ import annotations

import importlib
import os
import shutil
from types import ModuleType

import pytest
import torch


def extension_or_skip() -> ModuleType:
    """``sald_fast.ops.extension_backend``, built. Skips the calling module only when the build is
    impossible (no C++ compiler or no ninja); any other build failure raises."""
    try:
        return importlib.import_module("sald_fast.ops.extension_backend")
    except ImportError as exc:
        from torch.utils import cpp_extension

        if shutil.which(os.environ.get("CXX", "c++")) is None or not cpp_extension.is_ninja_available():
            pytest.skip(f"the extension cannot be built here: {str(exc).splitlines()[0]}", allow_module_level=True)
        raise


def triton_device_or_skip(kernel) -> str:
    """``"cuda"`` with a GPU, else ``"cpu"`` when ``kernel`` (a ``@triton.jit`` function) runs in
    Triton's interpreter; skips the calling module when neither holds."""
    from kernels import is_interpreted

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not is_interpreted(kernel):
        pytest.skip("kernels were imported before TRITON_INTERPRET=1 was set and there is no GPU",
                    allow_module_level=True)
    return device


def assert_one_graph(fn, *args) -> None:
    """``torch._dynamo.explain(fn)(*args)`` finds one graph and no graph break (``fn`` is called
    once first, so backends load outside of tracing)."""
    fn(*args)
    explanation = torch._dynamo.explain(fn)(*args)
    reasons = [str(r.reason) for r in explanation.break_reasons]
    assert explanation.graph_break_count == 0, reasons
    assert explanation.graph_count == 1

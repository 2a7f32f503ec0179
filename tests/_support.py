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
    Triton's interpreter; skips the calling module when neither holds, or when this Triton's
    interpreter cannot run the kernels with this NumPy (:func:`kernels.interpreter_defect`, the
    reason given)."""
    from kernels import interpreter_defect, is_interpreted

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not is_interpreted(kernel):
        pytest.skip("kernels were imported before TRITON_INTERPRET=1 was set and there is no GPU",
                    allow_module_level=True)
    if device == "cpu" and interpreter_defect() is not None:
        pytest.skip(interpreter_defect(), allow_module_level=True)
    return device


def assert_one_graph(fn, *args) -> None:
    """``torch._dynamo.explain(fn)(*args)`` finds one graph and no graph break (``fn`` is called
    once first, so backends load outside of tracing)."""
    fn(*args)
    explanation = torch._dynamo.explain(fn)(*args)
    reasons = [str(r.reason) for r in explanation.break_reasons]
    assert explanation.graph_break_count == 0, reasons
    assert explanation.graph_count == 1


def graph_grabbing_backend() -> tuple[object, list[str]]:
    """A ``torch.compile`` backend that runs AOTAutograd and records the forward and backward
    graphs (as text) into the returned list."""
    from functorch.compile import make_boxed_func
    from torch._functorch.aot_autograd import aot_module_simplified

    graphs: list[str] = []

    def grab(gm, example_inputs):
        graphs.append(str(gm.graph))
        return make_boxed_func(gm.forward)

    def backend(gm, example_inputs):
        return aot_module_simplified(gm, example_inputs, fw_compiler=grab, bw_compiler=grab)

    return backend, graphs

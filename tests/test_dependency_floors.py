"""The dependency floors in pyproject.toml match what the code uses."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _floor(name: str) -> tuple[int, ...]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(d for d in deps if re.match(rf"{name}\s*>=", d))
    return tuple(int(x) for x in re.search(r">=\s*([\d.]+)", spec).group(1).split("."))


def test_torch_floor_covers_the_torch_library_apis_we_call():
    # torch.library.triton_op / wrap_triton (sald_fast/ops/triton_backend.py) are new in torch 2.6;
    # the floor is the oldest torch the whole suite was run on: 2.11 with triton 3.6 (the GPU
    # machine's). With torch 2.6 + triton 3.2, Dynamo broke the graph at the ops' NVTX ranges.
    assert _floor("torch") >= (2, 11)
    assert hasattr(torch.library, "wrap_triton") and hasattr(torch.library, "triton_op")
    assert hasattr(torch.library, "custom_op") and hasattr(torch.library, "register_fake")


def test_triton_floor_and_explicit_transpose_dims():
    assert _floor("triton") >= (3, 6)
    # every tl.trans names its permutation (3-D tiles need it on some Triton versions)
    for path in (REPO / "kernels").glob("*.py"):
        for line in path.read_text().splitlines():
            for call in re.findall(r"tl\.trans\((.*)", line):
                depth, args = 0, ""
                for ch in call:
                    if ch == "(":
                        depth += 1
                    elif ch == ")":
                        if depth == 0:
                            break
                        depth -= 1
                    args += ch
                assert re.search(r",\s*\d+\s*,\s*\d+", args), f"{path.name}: tl.trans({args}) without dims"

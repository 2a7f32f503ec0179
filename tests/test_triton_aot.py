"""Ahead-of-time compilation of every Triton kernel for sm_80 and sm_90 (no GPU needed).

The launchers are run on ``meta`` tensors of the paper configuration's shapes (B=64, N'=64,
J'=7, D=256, 8 heads of d=32; q/k/v as views of a fused (B, N', J', 3, H, d) projection) with a
``wrap`` that records each launch instead of running it. Every recorded launch (forward and
backward kernels, bf16/fp16/fp32) is compiled with ``triton.compile`` for
``GPUTarget("cuda", 80, 32)`` and ``GPUTarget("cuda", 90, 32)`` (32 = the CUDA warp size), and
ptxas' resource report (``ptxas -v`` on the generated PTX, the same ptxas Triton ships) gives
registers, spills and stack; shared memory comes from Triton's metadata. The test fails on any
spill and prints the table.

The compile runs in a subprocess without ``TRITON_INTERPRET`` (under the interpreter,
``triton.jit`` returns interpreter objects that cannot be compiled). Run this file directly
(``python tests/test_triton_aot.py``) to print the table.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAPER = dict(B=64, N=64, J=7, D=256, H=8)
ARCHS = (80, 90)
DTYPES = ("bfloat16", "float16", "float32")


def _record_launches(dtype_name: str) -> list[dict]:
    """Run every launcher on meta tensors at the paper shapes; return the recorded launches."""
    import torch

    from kernels import film_layernorm as film
    from kernels import skeletal_attention as skel
    from kernels import temporal_attention as temp

    launches: list[dict] = []

    def recorder(variant: str):
        def wrap(kernel):
            class _Grid:
                def __getitem__(self, grid):
                    def launch(*args, **kwargs):
                        launches.append({"kernel": kernel, "variant": variant, "grid": grid, "args": args,
                                         "kwargs": kwargs})
                    return launch
            return _Grid()
        return wrap

    dt = getattr(torch, dtype_name)
    meta = torch.device("meta")
    B, N, J, D, H = (PAPER[k] for k in ("B", "N", "J", "D", "H"))
    d = D // H
    z = torch.empty(B, N, J, D, dtype=dt, device=meta)
    gamma = torch.empty(B, D, dtype=dt, device=meta)
    w = torch.empty(D, dtype=dt, device=meta)
    film.film_layernorm_forward(z, z, gamma, gamma, w, w, 1e-5, wrap=recorder("affine"))
    film.film_layernorm_forward(z, z, gamma, gamma, None, None, 1e-5, wrap=recorder("no affine"))
    R = B * N * J
    stats = torch.empty(R, dtype=torch.float32, device=meta)
    film.film_layernorm_backward(z, z, z, z, gamma, w, stats, stats, True, wrap=recorder("affine"))
    film.film_layernorm_backward(z, z, z, z, gamma, None, stats, stats, False, wrap=recorder("no affine"))

    qkv = torch.empty(B, N, J, 3, H, d, dtype=dt, device=meta)
    q, k, v = qkv.unbind(3)
    lengths = torch.empty(B, dtype=torch.int64, device=meta)
    o = torch.empty(B, N, J, H, d, dtype=dt, device=meta)
    temp.temporal_attention_forward(q, k, v, lengths, None, wrap=recorder("N'=64, lengths"))
    temp.temporal_attention_backward(o, q, k, v, o, torch.empty(B, J, H, N, device=meta), lengths, None,
                                     wrap=recorder("N'=64, lengths"))
    # N' = 128 > BLOCK_N exercises the separate dq kernel (max_latent_frames = 128).
    q2 = torch.empty(B // 2, 2 * N, J, 3, H, d, dtype=dt, device=meta).unbind(3)[0]
    o2 = torch.empty(B // 2, 2 * N, J, H, d, dtype=dt, device=meta)
    temp.temporal_attention_backward(o2, q2, q2, q2, o2, torch.empty(B // 2, J, H, 2 * N, device=meta), None,
                                     None, wrap=recorder("N'=128"))
    skel.skeletal_attention_forward(q, k, v, None, wrap=recorder("J'=7"))
    skel.skeletal_attention_backward(o, q, k, v, o, torch.empty(B, N, H, J, device=meta), None,
                                     wrap=recorder("J'=7"))
    return launches


_TRITON_DTYPES = {"torch.float32": "fp32", "torch.float16": "fp16", "torch.bfloat16": "bf16",
                  "torch.int64": "i64", "torch.int32": "i32"}


def _signature(kernel, args: tuple, kwargs: dict):
    """Triton signature/constexprs/attrs as the JIT would specialize these arguments (all pointers
    16-byte aligned, ints equal to 1 become constexprs, ints divisible by 16 get divisibility)."""
    import torch

    names = kernel.arg_names
    values = dict(zip(names, args))
    values.update({k: v for k, v in kwargs.items() if k in names})
    signature, constexprs, attrs = {}, {}, {}
    for i, p in enumerate(kernel.params):
        val = values[p.name]
        if p.is_constexpr:
            signature[p.name] = "constexpr"
            constexprs[p.name] = val
        elif isinstance(val, torch.Tensor):
            signature[p.name] = "*" + _TRITON_DTYPES[str(val.dtype)]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(val, bool):
            signature[p.name] = "u1"
        elif isinstance(val, int):
            if val == 1:
                signature[p.name] = "constexpr"
                constexprs[p.name] = 1
            else:
                signature[p.name] = "i32" if -2**31 <= val < 2**31 else "i64"
                if val % 16 == 0:
                    attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(val, float):
            signature[p.name] = "fp32"
        else:
            raise TypeError(f"cannot specialize argument {p.name}={val!r}")
    return signature, constexprs, attrs


def _ptxas_usage(ptx: str, arch: int) -> dict:
    """Registers / spills / stack of the kernel in ``ptx`` from ``ptxas -v``."""
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(arch).path  # the ptxas Triton itself uses for this arch
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        res = subprocess.run([ptxas, "-v", f"--gpu-name=sm_{arch}{'a' if arch == 90 else ''}", str(src), "-o",
                              str(Path(tmp) / "k.o")], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"ptxas failed ({res.returncode}): {res.stderr[-2000:]}")
    log = res.stderr + res.stdout
    regs = re.search(r"Used (\d+) registers", log)
    spill = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if regs is None or spill is None:
        raise RuntimeError(f"cannot parse ptxas output:\n{log}")
    return {"regs": int(regs.group(1)), "stack": int(spill.group(1)), "spill_stores": int(spill.group(2)),
            "spill_loads": int(spill.group(3))}


def compile_all(dtypes=DTYPES, archs=ARCHS) -> list[dict]:
    """Compile every recorded launch for every arch; one result row per (kernel, variant, dtype, arch)."""
    import triton
    from triton.backends.compiler import GPUTarget

    rows = []
    for dtype_name in dtypes:
        for launch in _record_launches(dtype_name):
            kernel, kwargs = launch["kernel"], launch["kwargs"]
            signature, constexprs, attrs = _signature(kernel, launch["args"], kwargs)
            options = {k: kwargs[k] for k in ("num_warps", "num_stages") if k in kwargs}
            for arch in archs:
                src = triton.compiler.ASTSource(kernel, signature=signature, constexprs=constexprs, attrs=attrs)
                compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
                usage = _ptxas_usage(compiled.asm["ptx"], arch)
                rows.append({"kernel": kernel.__name__, "variant": launch["variant"], "dtype": dtype_name,
                             "arch": f"sm_{arch}", "num_warps": compiled.metadata.num_warps,
                             "shared": compiled.metadata.shared, "grid": list(launch["grid"]), **usage})
    return rows


def format_table(rows: list[dict]) -> str:
    """Markdown table of the AOT results."""
    head = "| kernel | variant | dtype | arch | warps | regs | spill st/ld (B) | stack (B) | shared (B) | grid |"
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['kernel']} | {r['variant']} | {r['dtype']} | {r['arch']} | {r['num_warps']} | "
                     f"{r['regs']} | {r['spill_stores']}/{r['spill_loads']} | {r['stack']} | {r['shared']} | "
                     f"{tuple(r['grid'])} |")
    return "\n".join(lines)


def _run_subprocess(dtypes) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, __file__, "--json", ",".join(dtypes)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        if "ptxas" in res.stderr and "not found" in res.stderr.lower():
            pytest.skip(f"this triton cannot target CUDA without a GPU: {res.stderr[-500:]}")
        raise AssertionError(f"AOT compile failed:\n{res.stderr[-6000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.triton
@pytest.mark.parametrize("dtype_name", DTYPES)
def test_aot_compile_no_spills(dtype_name: str) -> None:
    """Every kernel compiles for sm_80 and sm_90 at the paper shapes without register spills."""
    pytest.importorskip("triton")
    rows = _run_subprocess([dtype_name])
    print("\n" + format_table(rows))
    kernels = {r["kernel"] for r in rows}
    assert kernels == {"film_ln_fwd_kernel", "film_ln_bwd_kernel", "temporal_attn_fwd_kernel",
                       "temporal_attn_bwd_dkdv_kernel", "temporal_attn_bwd_dq_kernel",
                       "skeletal_attn_fwd_kernel", "skeletal_attn_bwd_kernel"}
    assert {r["arch"] for r in rows} == {"sm_80", "sm_90"}
    spilled = [r for r in rows if r["spill_stores"] or r["spill_loads"]]
    assert not spilled, "register spills:\n" + format_table(spilled)
    for r in rows:
        assert 0 < r["regs"] <= 255, r
        assert r["shared"] <= 100 * 1024, r  # fits the smallest opt-in limit of sm_80/sm_90 with room


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--json":
        print(json.dumps(compile_all(dtypes=sys.argv[2].split(",")), default=str))
    else:
        print(format_table(compile_all()))

"""``python -m bench.auto_cpu_ab``: the extension's CPU kernels against the reference inside a model run.

``auto``'s CPU choices (``_AUTO_ORDER`` in ``sald_fast/ops/dispatch.py``) at sampling sizes, in
calls without gradients: an op can be faster alone and slower inside a run. (Since these A/Bs,
``auto`` runs the extension on the CPU only in calls with gradients; the "extension" arm here
forces it.) Each workload runs with backend "auto" twice per repetition, once with the extension
for the op and once without it (the reference), alternating which goes first; medians are
printed::

    python -m bench.auto_cpu_ab                 # both workloads below, 2 threads (the default)
    python -m bench.auto_cpu_ab --reps 30

- ``skeletal_graph_conv``: ``decode_latents`` of one tiny-preset sentence (1, 28, 7, 16)
  (graph convolutions of 1232-4928 rows B*N*J);
- ``film_residual_layernorm``: ``generate`` of one tiny-preset sentence, 64 frames, DDIM-50
  (FiLM + LayerNorm on 112 and 224 rows).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.test_bench_model import _config
from sald_fast.ops import dispatch
from sald_fast.pipeline import SignSALD


def _arms(op: str) -> dict[str, dict]:
    """``_AUTO_ORDER`` for "extension" (the extension for ``op`` in every CPU call, with or without
    gradients) and "reference" (the extension removed from ``op``'s CPU candidates)."""
    cpu = tuple(b for b in dispatch._AUTO_ORDER[op]["cpu_device"] if b != "cuda")
    with_ext = {**dispatch._AUTO_ORDER[op], "cpu_device_no_grad": ("cuda",)}
    without = {**dispatch._AUTO_ORDER[op], "cpu_device": cpu, "cpu_device_no_grad": cpu}
    return {"extension": {**dispatch._AUTO_ORDER, op: with_ext}, "reference": {**dispatch._AUTO_ORDER, op: without}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.auto_cpu_ab", description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=15)
    args = p.parse_args(argv)
    if not dispatch._try_load("cuda"):
        print("the C++ extension does not load here: nothing to compare")
        return 2
    model = SignSALD.from_config(_config("tiny", False), seed=0, backend="auto").eval()
    z = torch.randn(1, 28, 7, 16, generator=torch.Generator().manual_seed(0))
    text = ["where is the library?"]
    workloads = {
        "skeletal_graph_conv": ("decode one sentence", lambda: model.decode_latents(z)),
        "film_residual_layernorm": ("generate one sentence, DDIM-50",
                                    lambda: model.generate(text, num_frames=64, steps=50, seed=0)),
    }
    original = dispatch._AUTO_ORDER
    print(f"{torch.get_num_threads()} thread(s), {args.reps} interleaved reps, medians")
    try:
        with torch.no_grad():
            for op, (label, run) in workloads.items():
                arms = _arms(op)
                times = {name: [] for name in arms}
                for rep in range(args.reps):
                    for name in (("extension", "reference") if rep % 2 else ("reference", "extension")):
                        dispatch._AUTO_ORDER = arms[name]
                        dispatch.clear_auto_choices()
                        model.text_encoder.clear_cache()
                        run()  # warm (and the choices made, so the timed call is steady)
                        start = time.perf_counter()
                        run()
                        times[name].append(time.perf_counter() - start)
                med = {n: statistics.median(v) * 1e3 for n, v in times.items()}
                print(f"{op} ({label}): auto with the extension {med['extension']:.2f} ms, "
                      f"with the reference {med['reference']:.2f} ms (reference / extension = "
                      f"{med['reference'] / med['extension']:.2f}x)")
    finally:
        dispatch._AUTO_ORDER = original
        dispatch.clear_auto_choices()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

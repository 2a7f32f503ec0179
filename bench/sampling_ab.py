"""``python -m bench.sampling_ab``: ``SignSALD.generate`` per implementation, interleaved.

The issue's CPU target is a ratio (tiny preset, one sentence, DDIM-50: the fast path against the
eager reference); on a shared machine the load moves between pytest-benchmark's groups, so this
script runs the implementations round-robin in one process (each rep starts with a different one)
and prints their medians and ratios::

    python -m bench.sampling_ab                     # tiny, 1 sentence, 64 frames, DDIM-50
    python -m bench.sampling_ab --compiled          # + torch.compile: of the reference, and generate(compile=True)
    python -m bench.sampling_ab --diffusers-loop    # + the reference through diffusers' step
    OMP_NUM_THREADS=1 python -m bench.sampling_ab   # one thread
    python -m bench.sampling_ab --compiled --preset paper --frames 256 --reps 5 --roofline
    python -m bench.sampling_ab --compiled --reps 9 --results bench/RESULTS.md   # + a section of the results file

``reference``: backend "reference", eager; ``fast``: backend "auto" (the same weights), eager.
Both sample from the precomputed plan (no diffusers call per step). ``--compiled`` adds
``compiled_reference`` (``torch.compile`` of the reference denoiser, default options: the
"vs torch.compile" baseline) and ``fast_compiled`` (``generate(..., compile=True)`` with backend
"auto": the fast path, on the CPU the AOTInductor libraries of :mod:`sald_fast.aot`, compiled on
the first call or loaded from their disk cache). ``--diffusers-loop`` adds the
reference stepping through the diffusers scheduler with neither the plan nor the per-run FiLM
table and shared CFG halves (the sampling loop before them). A call is the whole ``generate``:
text encoding (prompt cache cleared), sampling, VAE decoding and the pose outputs.

``--roofline`` adds the matrix rate of the benchmark suite (2048^3 fp32 matmuls, as
:func:`bench._common.measure_roofline` times them) measured around every call: for
``--rate-seconds`` (default 1 s) before the round's first call and after every call, so each call
sits between two windows. Each implementation's share is the reference run's FLOPs (counted from
shapes, as the suite's sampling benchmark counts them) / the call's time / the mean rate of the
windows on either side of it; the median over rounds. On a machine whose speed drifts from minute
to minute, a rate measured next to the call it divides, over a comparable time, is the fair
ceiling (one 0.3 s measurement per round, the first version, moved the shares by +-30%).
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch

from bench._common import count_flops, environment
from bench.report import merge_sections, write_atomic
from bench.test_bench_model import _config
from sald_fast.diffusion import make_scheduler
from sald_fast.ops import backend_line
from sald_fast.pipeline import SignSALD


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sampling_ab", description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--compiled", action="store_true", help="also torch.compile (inductor) of each denoiser")
    p.add_argument("--diffusers-loop", action="store_true", help="also the reference through diffusers' step")
    p.add_argument("--roofline", action="store_true",
                   help="also measure the matrix rate around every call and print each implementation's share of it")
    p.add_argument("--rate-seconds", type=float, default=1.0,
                   help="length of each matrix-rate window of --roofline (default 1 s)")
    p.add_argument("--results", type=Path,
                   help="also write the figures as a section of this results file (e.g. bench/RESULTS.md), "
                        "replacing the section of the same preset, frames and device")
    args = p.parse_args(argv)
    command = "python -m bench.sampling_ab " + " ".join(argv if argv is not None else sys.argv[1:])

    cfg = _config(args.preset, False)
    models = {}
    for name, backend in (("reference", "reference"), ("fast", "auto")):
        models[name] = SignSALD.from_config(cfg, seed=0, backend=backend).eval()
        print(backend_line("cpu", backend, grad=False))
    compile_flag = {}
    if args.compiled:
        base = models["reference"]
        models["compiled_reference"] = SignSALD(cfg, base.vae, torch.compile(base.denoiser, dynamic=None),
                                                base.text_encoder).eval()
        models["fast_compiled"] = models["fast"]
        compile_flag["fast_compiled"] = True
    scheduler = {"reference_diffusers_loop": lambda: make_scheduler(cfg.diffusion, "ddim")} if args.diffusers_loop \
        else {}
    if args.diffusers_loop:
        models["reference_diffusers_loop"] = models["reference"]
    text = ["where is the library?"]

    def call(name: str) -> float:
        model = models[name]
        model.text_encoder.clear_cache()
        sched = scheduler[name]() if name in scheduler else None
        start = time.perf_counter()
        with torch.no_grad():
            if sched is None:
                model.generate(text, num_frames=args.frames, steps=args.steps, seed=0,
                               compile=compile_flag.get(name, False))
            else:  # generate's steps with a scheduler instance (the diffusers loop)
                t, m = model.encode_text(text)
                z = model.diffusion.sample(model.denoiser, (1, -(-args.frames // 4), cfg.denoiser.num_atoms,
                                                            cfg.denoiser.latent_dim), t, m, None, steps=args.steps,
                                           scheduler=sched, generator=torch.Generator().manual_seed(0))
                model.poses_from_features(model.decode_latents(z)[:, :args.frames].float(), text)
        return time.perf_counter() - start

    names = list(models)
    for name in names:  # warm-up (and compilation)
        call(name)
        call(name)
    flops = rates = None
    if args.roofline:
        flops = _sampling_flops(models["reference"], text, args.frames, args.steps)
        rates = []  # every window, in order
    times, ceilings = interleave(names, call, args.reps, rates,
                                 (lambda: matmul_rate(args.rate_seconds)) if rates is not None else None)
    med = {n: statistics.median(v) for n, v in times.items()}
    lines: list[str] = []

    def emit(line: str) -> None:
        print(line)
        lines.append(line)

    emit(f"{args.preset}, 1 sentence, {args.frames} frames, DDIM-{args.steps}, {torch.get_num_threads()} thread(s), "
         f"{args.reps} interleaved reps")
    for n in names:
        emit(f"  {n:26s} median {med[n] * 1e3:8.1f} ms  (min {min(times[n]) * 1e3:.1f}, max {max(times[n]) * 1e3:.1f})"
             f"  reference / this = {med['reference'] / med[n]:.2f}x"
             + (f", compiled_reference / this = {med['compiled_reference'] / med[n]:.2f}x"
                if "compiled_reference" in med else ""))
    if rates is not None:
        emit(f"matrix rate (2048^3 fp32 matmuls for {args.rate_seconds:g} s before and after every call): median "
             f"{statistics.median(rates):.3f} TFLOP/s (min {min(rates):.3f}, max {max(rates):.3f}) over "
             f"{len(rates)} windows; the reference run's FLOPs: {flops / 1e12:.3f} TFLOP")
        for n in names:
            shares = [flops / t / rate / 1e12 for t, rate in zip(times[n], ceilings[n])]
            emit(f"  {n:26s} {100 * statistics.median(shares):5.1f}% of the matrix rate (median over calls of "
                 f"FLOPs / time / the rate around the call; min {100 * min(shares):.1f}%, max {100 * max(shares):.1f}%)")
    if args.results is not None:
        heading = (f"Sampling, interleaved: {args.preset}, 1 sentence, {args.frames} frames, DDIM-{args.steps} "
                   f"({environment()['heading']})")
        write_results(args.results, heading, command, lines)
        print(f"bench.sampling_ab: wrote the section '{heading}' of {args.results}")
    return 0


def write_results(path: Path, heading: str, command: str, lines: list[str]) -> None:
    """Write ``lines`` (the printed figures) as the section ``## heading`` of the results file at
    ``path``, replacing a section of that heading (other sections are kept; the file is created
    if missing). The README's generated figures skip such sections (they have no benchmark groups)."""
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (f"## {heading}\n\nMeasured {date} by `{command}` (implementations round-robin in one "
               f"process; the target figures of the sampling issue).\n\n```text\n" + "\n".join(lines) + "\n```\n")
    existing = path.read_text() if path.exists() else ""
    write_atomic(path, merge_sections(existing, section))


def interleave(names: list[str], call, reps: int, rates: list[float] | None = None,
               rate=None) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """``reps`` rounds of ``call(name)`` (returns seconds) over ``names``, round ``r`` starting at
    ``names[r % len(names)]``. With ``rate`` (returns the matrix rate now), a window is measured
    before each round's first call and after every call, appended to ``rates``, and each call's
    ceiling is the mean of the windows on either side of it. Returns (times, ceilings) by name."""
    times: dict[str, list[float]] = {n: [] for n in names}
    ceilings: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(reps):
        if rate is not None:
            rates.append(rate())
        for i in range(len(names)):
            name = names[(rep + i) % len(names)]
            times[name].append(call(name))
            if rate is not None:
                rates.append(rate())
                ceilings[name].append((rates[-2] + rates[-1]) / 2)
    return times, ceilings


def matmul_rate(seconds: float = 1.0, n: int = 2048) -> float:
    """TFLOP/s of ``n``^3 fp32 matmuls on the CPU, run back to back for at least ``seconds`` (and at
    least two) after a warm-up call: the suite's matrix rate (:func:`bench._common.measure_roofline`'s
    matmul), over a window as long as asked."""
    if not seconds > 0:
        raise ValueError(f"matmul_rate needs seconds > 0, got {seconds}")
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    count, start = 0, time.perf_counter()
    while count < 2 or time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * n ** 3 * count / (time.perf_counter() - start) / 1e12


def _sampling_flops(model: SignSALD, text: list[str], frames: int, steps: int) -> int:
    """FLOPs of the reference ``generate`` of ``steps`` steps, counted from shapes: a one-step and a
    two-step run give the per-step count and the rest (text encoding, decoding), as the suite's
    sampling benchmark counts them."""
    def run(n: int) -> None:
        model.text_encoder.clear_cache()
        with torch.no_grad():
            model.generate(text, num_frames=frames, steps=n, seed=0)

    one, two = count_flops(lambda: run(1)), count_flops(lambda: run(2))
    return one + (steps - 1) * (two - one)


if __name__ == "__main__":
    raise SystemExit(main())
